"""Inter-mesh routing: a path-vector protocol over node records (SPEC §2). Pure.

Every node in several meshes can bridge them. What a node advertises in a mesh
is the ``routes`` field of its own record there; what it learns is the
``routes`` of the other live members. :func:`compute_routes` turns the live
records of every mesh the node is in into (1) the adverts to publish in each
mesh, (2) the routes to install on each mesh interface and (3) a display
table. Running it again on the new records is one round of the protocol;
withdrawal is implicit (a dead bridge's record, hence its adverts, vanish).

Meaning of a path. A :class:`RouteAdv` ``(prefix, path)`` in a record that
gateway ``G`` publishes in mesh ``M`` says: "send traffic for ``prefix`` to me;
after leaving ``M`` it will cross the meshes ``path`` in that order". So
``path[0]`` is a mesh ``G`` is in (not ``M``), ``path[-1]`` is the mesh owning
the prefix (or, for ``::/0``, the mesh of the exit), and ``len(path)`` — the
*path length* — is the number of meshes beyond ``M``. A mesh prefix advertised
by a direct bridge has path ``(N,)`` (length 1); a default route offered by an
exit has the empty path ``()`` (length 0: the traffic leaves the overlay at
``G``). A bridge that learned ``(prefix, L)`` in mesh ``N`` re-advertises it
into its other meshes as ``(prefix, (N, *L))``.

Rules (see docs/ROUTING.md):

* only **peers** are gateways: adverts in records of clients are ignored, and a
  node advertises nothing into a mesh where it is a client, nor the prefix of
  (or routes learned through) such a mesh — the assigned peer's WireGuard would
  drop forwarded packets whose source is not the client's own /128;
* a node accepts an advert whose path starts with a mesh that has an
  authority (a self-certifying id) only from a gateway whose record proves
  membership of that mesh (``NodeRecord.proofs``: the mesh's founding record
  and the gateway's admission chain there, verified when the record was
  accepted): a member cannot take another mesh's prefix away from the real
  bridge by advertising it with a shorter path;
* a node accepts an advert only if its path contains none of its own meshes
  (loop prevention), has no repeated mesh, its prefix is not one of its own
  meshes' prefixes, and its prefix is either ``::/0`` or exactly the /64 of the
  path's last mesh (nothing else can be routed; per-node routes never are);
* ``::/0`` is accepted only with ``accept_defaults`` and never by a node that
  offers defaults itself (two exits would otherwise point at each other);
* per destination the shortest path wins; at equal length a path whose first
  mesh has an old-style id (no authority, so nothing proves the gateway is in
  it) ranks below one whose first mesh is proven (or that is empty): a member
  proving nothing gets no more than with a mesh it founds itself as first hop;
  the tie among the gateways at that rank,
  *in all the node's peer meshes together*, is broken by rendezvous
  hashing of the node's secret rank key (``NodeIdentity.rank_key``) over
  ``gateway key + mesh id`` — traffic spreads, only the nodes using a gateway
  move when it dies, and nobody can make a key that wins a given node's choice
  (its ranking is unknown to others);
* on a mesh where the node is a client, all gateways are one candidate: the
  assigned peer (a client's only WireGuard peer), which forwards by its own
  choice. Client meshes are used only when no peer mesh offers the shortest
  length: the hop to the assigned peer does not shorten the path, and this
  rule is what prevents two nodes that are each other's assigned peers in two
  meshes from bouncing packets between them;
* with ``advertise_routes``, into each mesh ``M`` where it is a peer a node
  advertises the /64 of each of its other peer meshes (path ``(N,)``) and each
  route it selected through another peer mesh ``N`` (path ``(N, *learned)``);
  never a route whose path contains ``M`` (split horizon) nor one longer than
  :data:`~smegmesh.core.record.MAX_ROUTE_PATH`; through its first
  :data:`~smegmesh.core.record.MAX_PROOFS` self-certifying meshes (by id)
  only, a record proving no more (the rest: ``RoutingResult.unprovable``); at most
  :data:`~smegmesh.core.record.MAX_ROUTES` adverts: its own (the prefixes of
  its meshes, its ``::/0``) first, then the learned routes in max-min fair
  shares of the slots left, then of the bytes left (``route_bytes``;
  ``core.advert_share``), first per mesh they were selected through, then
  per gateway within it, each share with its gateway's shortest routes (ties
  by prefix, path) — a member inventing destinations (free: proven first hop
  a mesh it founds) fills only its own gateway's share, not the bridge's
  record;
* with ``advertise_defaults``, ``::/0`` with path ``()`` into each peer mesh.

Cost: one pass over every advert of every live record, then one rendezvous
choice per destination — linear in records x routes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from smegmesh.core.advert_share import advert_bytes, advert_order, fair_fill
from smegmesh.core.cert import founding_name
from smegmesh.core.desired import GatewayRoute, assigned_peer
from smegmesh.core.hashing import choose, score
from smegmesh.core.record import (
    MAX_PROOFS,
    MAX_ROUTE_PATH,
    MAX_ROUTES,
    NodeRecord,
    Role,
    RouteAdv,
)

__all__ = [
    "DEFAULT_ROUTE",
    "RouteEntry",
    "RoutingResult",
    "compute_routes",
]

DEFAULT_ROUTE = "::/0"


def prefix_text(mesh_id: str) -> str:
    """``str(core.addressing.mesh_prefix(mesh_id))`` in 2 µs instead of 13 µs.

    It was about half of a routing pass (one per destination learned).
    """
    return hextets_text(hashlib.sha256(mesh_id.encode("utf-8")).digest())


def hextets_text(h: bytes) -> str:
    """The /64 ``fd`` + ``h[:6]`` + ``01`` in ``ipaddress``'s text form.

    Its first and fourth hextets are never zero, so the only run of zeros
    ``::`` can stand for is the last four hextets (a run of two zero hextets
    in the middle is shorter, and one zero hextet stays ``0``).
    """
    return f"fd{h[0]:02x}:{h[1] << 8 | h[2]:x}:{h[3] << 8 | h[4]:x}:{h[5] << 8 | 1:x}::/64"


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One selected route, for display (``smegctl routes``) and tests."""

    destination: str
    mesh_id: str  # the mesh (interface) the traffic leaves this node through
    gateway: bytes  # the next hop in ``mesh_id`` (a client's: its assigned peer)
    path: tuple[str, ...]  # meshes crossed after leaving ``mesh_id``
    alternatives: int  # other gateways offering the same rank (length, proof; any mesh)

    @property
    def length(self) -> int:
        """Path length: number of meshes beyond ``mesh_id``."""
        return len(self.path)


@dataclass(frozen=True)
class RoutingResult:
    """Output of :func:`compute_routes`; every mapping has a key per mesh."""

    #: the ``routes`` to put in this node's own record in each mesh
    adverts: Mapping[str, tuple[RouteAdv, ...]]
    #: per mesh, the routes to install (``desired_config(gateway_routes=...)``);
    #: on a client mesh the gateway is the client's assigned peer
    gateway_routes: Mapping[str, tuple[GatewayRoute, ...]]
    #: per mesh where this node is a client, the routed destinations (AllowedIPs
    #: of its one peer and kernel routes on the interface); empty on peer meshes
    client_destinations: Mapping[str, tuple[str, ...]]
    #: every selected route, sorted by destination
    table: tuple[RouteEntry, ...]
    #: per mesh where the node's adverts would need more than ``MAX_PROOFS``
    #: membership proofs: the first meshes (self-certifying, last by id) whose
    #: adverts were left out (receivers would drop them); absent elsewhere
    unprovable: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(slots=True)
class _Best:
    rank: tuple[int, bool]  # (path length, first hop unprovable): smallest wins
    # (candidate id, mesh, gateway, path); candidate id = gateway key + mesh id
    cands: list[tuple[bytes, str, bytes, tuple[str, ...]]]
    advertisers: set[tuple[str, bytes]]
    client_slot: dict[str, int]  # client mesh -> its one index in cands


def compute_routes(
    self_key: bytes,
    my_meshes: Mapping[str, Sequence[NodeRecord]],
    *,
    advertise_routes: bool,
    advertise_defaults: bool,
    accept_defaults: bool,
    roles: Mapping[str, Role] | None = None,
    route_bytes: Mapping[str, int] | None = None,
    rank_key: bytes | None = None,
) -> RoutingResult:
    """One routing computation for the node ``self_key``.

    ``my_meshes`` maps every mesh the node is in to that mesh's live records
    (records with ``left`` set are ignored; this node's own record may be
    included and is skipped as a gateway). ``roles`` gives this node's role
    per mesh; a mesh missing there takes the role of the node's own record in
    it, else :attr:`Role.PEER`. ``route_bytes`` bounds, per mesh, the size of
    the adverts in the record's signed form (what the rest of the node's record
    leaves of ``MAX_RECORD_BYTES``; see ``core.multimesh``); none if missing.
    ``rank_key`` ranks gateways (``NodeIdentity.rank_key``, a secret: what the
    daemon passes); None ranks with ``self_key``, which anyone can predict
    (tests and the simulator's offline routing only).
    """
    mesh_ids = sorted(my_meshes)
    mine = set(mesh_ids)
    prefix_cache: dict[str, str] = {}

    def pfx(mesh_id: str) -> str:
        p = prefix_cache.get(mesh_id)
        if p is None:
            p = prefix_cache[mesh_id] = prefix_text(mesh_id)
        return p

    own_prefixes = {pfx(m) for m in mesh_ids}
    rank = self_key if rank_key is None else rank_key
    role, via_peer = _my_roles(self_key, rank, my_meshes, mesh_ids, roles)
    peer_meshes = [m for m in mesh_ids if role[m] == Role.PEER]

    # 1. Candidate routes, keeping only the shortest per destination.
    best: dict[str, _Best] = {}
    for m in mesh_ids:
        client_mesh = role[m] == Role.CLIENT
        if client_mesh and via_peer[m] is None:
            continue  # no peer to send anything through
        for rec in my_meshes[m]:
            if rec.left or rec.role != Role.PEER or rec.wg_key == self_key:
                continue
            for adv in rec.routes:
                if not _acceptable(
                    adv, rec, mine, own_prefixes, pfx, accept_defaults, advertise_defaults
                ):
                    continue
                _add_candidate(best, adv, m, rec.wg_key, via_peer[m] if client_mesh else None)

    # 2. One rendezvous choice per destination.
    table, gw_routes, client_dests = _choose(rank, best, mesh_ids, role)

    # 3. What to advertise into each mesh.
    adverts, unprovable = _adverts(
        mesh_ids, peer_meshes, table, pfx, advertise_routes, advertise_defaults, route_bytes
    )

    return RoutingResult(
        adverts=adverts,
        gateway_routes={m: tuple(v) for m, v in gw_routes.items()},
        client_destinations={m: tuple(v) for m, v in client_dests.items()},
        table=tuple(table),
        unprovable=unprovable,
    )


def _my_roles(
    self_key: bytes,
    rank_key: bytes,
    my_meshes: Mapping[str, Sequence[NodeRecord]],
    mesh_ids: list[str],
    roles: Mapping[str, Role] | None,
) -> tuple[dict[str, Role], dict[str, bytes | None]]:
    """This node's role per mesh and, on client meshes, its assigned peer."""
    role: dict[str, Role] = {}
    via_peer: dict[str, bytes | None] = {}
    for m in mesh_ids:
        live = [r for r in my_meshes[m] if not r.left]
        me = next((r for r in live if r.wg_key == self_key), None)
        given = roles.get(m) if roles is not None else None
        role[m] = given if given is not None else (me.role if me is not None else Role.PEER)
        if role[m] == Role.CLIENT:
            peers = {r.wg_key: r for r in live if r.role == Role.PEER and r.wg_key != self_key}
            via_peer[m] = (
                assigned_peer(me, peers) if me is not None else choose(rank_key, peers.keys())
            )
    return role, via_peer


def _acceptable(
    adv: RouteAdv,
    rec: NodeRecord,
    mine: set[str],
    own_prefixes: set[str],
    pfx: Callable[[str], str],
    accept_defaults: bool,
    advertise_defaults: bool,
) -> bool:
    """Whether the advert ``adv`` in the record ``rec`` passes the acceptance rules."""
    dest, path = adv.prefix, adv.path
    if dest in own_prefixes:
        return False
    if dest == DEFAULT_ROUTE:
        if not accept_defaults or advertise_defaults:
            return False
    elif not path or pfx(path[-1]) != dest:
        return False
    if len(set(path)) != len(path) or not mine.isdisjoint(path):
        return False
    # no proof of membership in the mesh it claims to bridge
    return not (
        path
        and founding_name(path[0]) is not None
        and path[0] not in {p.founding.mesh_id for p in rec.proofs}
    )


def _add_candidate(
    best: dict[str, _Best], adv: RouteAdv, m: str, gw_key: bytes, client_gw: bytes | None
) -> None:
    """Record an accepted advert of ``gw_key`` in mesh ``m`` if it is among the shortest.

    ``client_gw``: on a client mesh, the assigned peer (else ``None``).
    """
    dest, path = adv.prefix, adv.path
    # a first hop with an old-style id (no authority) proves nothing: at equal
    # length such a route ranks below one whose first hop is proven (or empty)
    rank = (len(path), bool(path) and founding_name(path[0]) is None)
    b = best.get(dest)
    if b is not None and rank > b.rank:
        return
    if b is None or rank < b.rank:
        b = best[dest] = _Best(rank, [], set(), {})
    if (m, gw_key) in b.advertisers:
        return  # duplicate advert of the same route by one gateway
    b.advertisers.add((m, gw_key))
    if client_gw is not None:
        gw = client_gw
        # all gateways of a client mesh are one candidate (keep the
        # smallest path so the display does not depend on record order)
        i = b.client_slot.get(m)
        if i is None:
            b.client_slot[m] = len(b.cands)
            b.cands.append((gw + m.encode(), m, gw, path))
        elif path < b.cands[i][3]:
            b.cands[i] = (gw + m.encode(), m, gw, path)
    else:
        b.cands.append((gw_key + m.encode(), m, gw_key, path))


def _choose(
    rank_key: bytes, best: Mapping[str, _Best], mesh_ids: list[str], role: Mapping[str, Role]
) -> tuple[list[RouteEntry], dict[str, list[GatewayRoute]], dict[str, list[str]]]:
    """One rendezvous choice per destination: the table, routes and client destinations."""
    table: list[RouteEntry] = []
    gw_routes: dict[str, list[GatewayRoute]] = {m: [] for m in mesh_ids}
    client_dests: dict[str, list[str]] = {m: [] for m in mesh_ids}
    for dest in sorted(best):
        b = best[dest]
        # peer meshes first (see module doc: no forwarding loops through clients),
        # then the highest score; ties (impossible in practice) by id, then path
        _, m, gw, path = max(
            b.cands,
            key=lambda c: (role[c[1]] == Role.PEER, score(rank_key, c[0]), c[0], c[3]),
        )
        table.append(RouteEntry(dest, m, gw, path, len(b.advertisers) - 1))
        gw_routes[m].append(GatewayRoute(dest, gw))
        if role[m] == Role.CLIENT:
            client_dests[m].append(dest)
    return table, gw_routes, client_dests


def _adverts(
    mesh_ids: list[str],
    peer_meshes: list[str],
    table: list[RouteEntry],
    pfx: Callable[[str], str],
    advertise_routes: bool,
    advertise_defaults: bool,
    route_bytes: Mapping[str, int] | None,
) -> tuple[dict[str, tuple[RouteAdv, ...]], dict[str, tuple[str, ...]]]:
    """What to advertise into each mesh (nothing into client meshes).

    Also, per mesh, the first meshes left out for want of room for their proof.
    """
    adverts: dict[str, tuple[RouteAdv, ...]] = {m: () for m in mesh_ids}
    unprovable: dict[str, tuple[str, ...]] = {}
    for m in peer_meshes:
        own: list[RouteAdv] = []
        # learned routes by the mesh and the gateway they were selected through
        learned: dict[str, dict[bytes, list[RouteAdv]]] = {}
        if advertise_defaults:
            own.append(RouteAdv(DEFAULT_ROUTE, ()))
        if advertise_routes:
            # a receiver drops an advert whose self-certifying first mesh the
            # record does not prove: the first MAX_PROOFS of those by id only
            needs = [n for n in peer_meshes if n != m and founding_name(n) is not None]
            if len(needs) > MAX_PROOFS:
                unprovable[m] = tuple(needs[MAX_PROOFS:])
            firsts = [n for n in peer_meshes if n != m and n not in unprovable.get(m, ())]
            own += (RouteAdv(pfx(n), (n,)) for n in firsts)
            firsts_set = set(firsts)
            for e in table:
                if e.mesh_id not in firsts_set:  # m itself (split horizon), client meshes
                    continue
                path = (e.mesh_id, *e.path)
                if m in path or len(path) > MAX_ROUTE_PATH:
                    continue
                by_gw = learned.setdefault(e.mesh_id, {})
                by_gw.setdefault(e.gateway, []).append(RouteAdv(e.destination, path))
        budget = route_bytes.get(m) if route_bytes is not None else None
        out = _own_fit(sorted(own, key=advert_order), budget)
        room_bytes = None if budget is None else budget - sum(map(advert_bytes, out))
        out += fair_fill(learned, MAX_ROUTES - len(out), room_bytes)
        adverts[m] = tuple(sorted(out, key=advert_order))
    return adverts, unprovable


def _own_fit(own: list[RouteAdv], budget: int | None) -> list[RouteAdv]:
    """The node's own adverts (shortest first) within the slots and ``budget`` bytes."""
    out = own[:MAX_ROUTES]
    if budget is not None:
        while out and sum(map(advert_bytes, out)) > budget:
            out.pop()
    return out
