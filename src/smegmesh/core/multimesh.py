"""One node in several meshes: routing across them. Pure.

The per-mesh engines (``core.meshnode``) know nothing of each other; this
module joins them for a node that is in several meshes: it runs the
path-vector computation (``core.routing``) over all of the node's meshes and
publishes the resulting adverts into the node's own record in each mesh. The
daemon and the simulator both call :func:`route_meshes` after a state change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from smegmesh.core.cert import founding_name
from smegmesh.core.meshnode import MeshNode, Out
from smegmesh.core.record import MAX_PROOFS, MAX_RECORD_BYTES, MembershipProof, RouteAdv
from smegmesh.core.routing import DEFAULT_ROUTE, RoutingResult, compute_routes

#: what a record may grow by between the route budget and its publication:
#: the headers of the routes and proofs lists (msgpack: up to 3 bytes each)
_SLACK_BYTES = 64


@dataclass(frozen=True, slots=True)
class MeshRouting:
    """Per-mesh routing options (``advertiseRoute``/``advertiseDefaults``).

    They say what this node publishes *into that mesh*: ``advertise_defaults``
    its own ``::/0`` (it is an exit for the mesh), ``advertise_routes`` the
    prefixes of its other meshes and the routes it learned (a learned default
    included). A flag set on one mesh never makes the node advertise into
    another.
    """

    advertise_routes: bool = False
    advertise_defaults: bool = False

    def allows(self, advert: RouteAdv) -> bool:
        if advert.prefix == DEFAULT_ROUTE and not advert.path:
            return self.advertise_defaults
        return self.advertise_routes


def route_meshes(
    nodes: Mapping[str, MeshNode],
    options: Mapping[str, MeshRouting],
    *,
    accept_defaults: bool,
    now_ms: int,
) -> tuple[RoutingResult | None, dict[str, list[Out]]]:
    """Recompute routes over ``nodes`` (mesh id -> engine of this node in it).

    Returns the routing result and, per mesh, the engine outputs of publishing
    changed adverts (to be handled like any other engine output). The three
    steps, for a caller that runs the computation elsewhere (smegd: off its
    event loop): :func:`routing_job`, call it, :func:`publish_adverts`.
    """
    job = routing_job(nodes, options, accept_defaults=accept_defaults)
    if job is None:
        return None, {}
    result = job()
    return result, publish_adverts(nodes, options, result, now_ms=now_ms)


def routing_job(
    nodes: Mapping[str, MeshNode],
    options: Mapping[str, MeshRouting],
    *,
    accept_defaults: bool,
) -> Callable[[], RoutingResult] | None:
    """The route computation over what ``nodes`` hold now, as a call (None: no mesh).

    The call touches nothing of theirs (records are immutable): it may run in
    another thread.
    """
    if not nodes:
        return None
    first = next(iter(nodes.values()))
    self_key = first.key
    opts = [options.get(m, MeshRouting()) for m in nodes]
    records = {m: n.live_records() for m, n in nodes.items()}
    route_bytes = _route_bytes(nodes)
    return functools.partial(
        compute_routes,
        self_key,
        records,
        advertise_routes=any(o.advertise_routes for o in opts),
        advertise_defaults=any(o.advertise_defaults for o in opts),
        accept_defaults=accept_defaults,
        route_bytes=route_bytes,
        rank_key=first.identity.rank_key,
    )


def publish_adverts(
    nodes: Mapping[str, MeshNode],
    options: Mapping[str, MeshRouting],
    result: RoutingResult,
    *,
    now_ms: int,
) -> dict[str, list[Out]]:
    """Per mesh of ``nodes``: the outputs of publishing ``result``'s adverts.

    Only where they changed, with the membership proofs they need.
    """
    outs: dict[str, list[Out]] = {}
    for mesh_id, node in nodes.items():
        o = options.get(mesh_id, MeshRouting())
        adverts = tuple(a for a in result.adverts.get(mesh_id, ()) if o.allows(a))
        proofs = _proofs(nodes, {a.path[0] for a in adverts if a.path})
        # nothing a receiver would drop (compute_routes already keeps the
        # first meshes that need a proof to MAX_PROOFS; this is the founding
        # record missing here)
        proven = {p.founding.mesh_id for p in proofs}
        adverts = tuple(
            a
            for a in adverts
            if not a.path or a.path[0] in proven or founding_name(a.path[0]) is None
        )
        rec = node.record
        if (
            rec is not None
            and not rec.left
            and (tuple(rec.routes) != tuple(adverts) or rec.proofs != proofs)
        ):
            outs[mesh_id] = node.update_self(now_ms, routes=tuple(adverts), proofs=proofs)
    return outs


def _proof(node: MeshNode | None) -> MembershipProof | None:
    """Our membership proof of ``node``'s mesh (None: an old-style mesh)."""
    if node is None or not node.mesh.admission:
        return None
    founding = node.mesh.authority.founding
    return MembershipProof(founding, node.chain) if founding is not None else None


def _proofs(nodes: Mapping[str, MeshNode], meshes: set[str]) -> tuple[MembershipProof, ...]:
    """Our membership proofs of the meshes our adverts cross first (sorted, bounded)."""
    out = [p for m in sorted(meshes) if (p := _proof(nodes.get(m))) is not None]
    return tuple(out[:MAX_PROOFS])


def _route_bytes(nodes: Mapping[str, MeshNode]) -> dict[str, int]:
    """Per mesh, the bytes our record there leaves for routes under MAX_RECORD_BYTES.

    What the record holds but routes and proofs, and the MAX_PROOFS largest
    proofs it may carry, are taken out, and a little slack (list headers):
    adverts a member made as long as its own record allows, re-advertised one
    mesh longer, made a bridge's record too large to publish (route_meshes
    raised, and with it smegd's reconcile loop).
    """
    proofs = {m: p for m, n in nodes.items() if (p := _proof(n)) is not None}
    out: dict[str, int] = {}
    size: dict[str, int] | None = None
    for m, node in nodes.items():
        rec = node.record
        if rec is None or rec.left:
            continue
        bare = replace(rec, routes=(), proofs=())
        base = len(bare.signed_payload())
        if size is None:  # a proof's size does not depend on the record it is in
            size = {
                k: len(replace(bare, proofs=(p,)).signed_payload()) - base
                for k, p in proofs.items()
            }
        largest = sorted((v for k, v in size.items() if k != m), reverse=True)[:MAX_PROOFS]
        out[m] = MAX_RECORD_BYTES - base - sum(largest) - _SLACK_BYTES
    return out
