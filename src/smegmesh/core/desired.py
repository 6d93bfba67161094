"""The desired WireGuard and host configuration of one mesh interface. Pure.

Input: the mesh's live records, this node's identity/role and chosen routes.
Output: an ``InterfaceConfig`` and a ``HostConfig`` for the reconciler.

Rules (SPEC §2):

* a peer gets one WireGuard peer entry per other live peer, with that peer's
  overlay /128 plus the /128 of every client assigned to it (clients are
  reached through their peer), and one entry per client assigned to itself;
* a client gets exactly one entry, its assigned peer, with the whole mesh
  prefix (and every routed prefix) as AllowedIPs and a persistent keepalive;
* client assignment is rendezvous hashing of the client's key over the live
  peers; a client publishes the peer it uses (``assigned_peer``) and everyone
  honours that while the peer is live, falling back to the same hash otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from smegmesh.core.addressing import mesh_prefix
from smegmesh.core.direct import DIRECT_KEEPALIVE_S, DirectPeer
from smegmesh.core.hashing import choose
from smegmesh.core.record import NodeRecord, Role
from smegmesh.core.wgconfig import HostConfig, InterfaceConfig, PeerConfig, Route

DEFAULT_CLIENT_KEEPALIVE = 25


def interface_name(mesh_id: str, prefix: str = "smeg") -> str:
    """Stable interface name for a mesh: ``prefix`` + hash digits, at most 15 chars."""
    digits = hashlib.sha256(mesh_id.encode()).hexdigest()
    return (prefix + digits)[:15] if len(prefix) < 15 else prefix[:15]


def assigned_peer(client: NodeRecord, live_peers: Mapping[bytes, NodeRecord]) -> bytes | None:
    """The peer a client is reached through, as every node computes it."""
    if client.assigned_peer is not None and client.assigned_peer in live_peers:
        return client.assigned_peer
    return choose(client.wg_key, live_peers.keys())


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    """A routed destination reached through the member ``gateway`` (issue 8)."""

    destination: str
    gateway: bytes


def desired_config(
    *,
    mesh_id: str,
    self_key: bytes,
    private_key: bytes,
    role: Role,
    listen_port: int | None,
    records: Iterable[NodeRecord],
    ifname: str,
    keepalive: int | None = None,
    gateway_routes: Iterable[GatewayRoute] = (),
    mtu: int = 1420,
    devices: Iterable[tuple[bytes, str, bytes]] = (),
    direct: Mapping[bytes, DirectPeer] | None = None,
) -> tuple[InterfaceConfig, HostConfig]:
    """Compute the interface and host configuration for one mesh.

    ``devices``: sponsored devices (issue 18) as ``(key, address, sponsor)``:
    reached through their sponsor like clients through their peer.
    ``keepalive`` is the persistent keepalive in seconds, 0 = off; ``None``
    (unset) means :data:`DEFAULT_CLIENT_KEEPALIVE` for a client, off for a peer.
    """
    live = {r.wg_key: r for r in records if not r.left}
    me = live.get(self_key)
    peers = {k: r for k, r in live.items() if r.role == Role.PEER}
    clients = {k: r for k, r in live.items() if r.role == Role.CLIENT}
    prefix = str(mesh_prefix(mesh_id))
    addr = me.address if me is not None else None
    routes = list(gateway_routes)

    if role == Role.CLIENT:
        wg_peers, host_routes = _client_peers(
            self_key, me, peers, clients, prefix, routes, keepalive, direct
        )
    else:
        wg_peers, host_routes = _peer_peers(
            self_key, live, peers, clients, routes, keepalive, devices
        )

    iface = InterfaceConfig(
        name=ifname, private_key=private_key, listen_port=listen_port, peers=wg_peers
    )
    host = HostConfig(
        interface=ifname,
        addresses=frozenset({f"{addr}/64"}) if addr else frozenset(),
        routes=frozenset(host_routes),
        mtu=mtu,
        forwarding=role == Role.PEER,
    )
    return iface, host


def _client_peers(
    self_key: bytes,
    me: NodeRecord | None,
    peers: Mapping[bytes, NodeRecord],
    clients: Mapping[bytes, NodeRecord],
    prefix: str,
    routes: list[GatewayRoute],
    keepalive: int | None,
    direct: Mapping[bytes, DirectPeer] | None,
) -> tuple[dict[bytes, PeerConfig], set[Route]]:
    """A client's WireGuard peers: its assigned peer, plus its direct sessions."""
    wg_peers: dict[bytes, PeerConfig] = {}
    host_routes: set[Route] = set()
    mine = None
    if me is not None:
        mine = assigned_peer(me, {k: r for k, r in peers.items() if k != self_key})
    if mine is not None:
        gw = peers[mine]
        allowed = {prefix} | {r.destination for r in routes}
        wg_peers[mine] = PeerConfig(
            public_key=mine,
            endpoint=gw.wg_endpoint,
            allowed_ips=frozenset(allowed),
            keepalive=DEFAULT_CLIENT_KEEPALIVE if keepalive is None else keepalive,
        )
        for r in routes:
            host_routes.add(Route(r.destination, None))
    # direct sessions with other clients (core.direct, docs/NAT.md): the
    # other's /128 (longest match) only once the session is up
    for dk, d in (direct or {}).items():
        other = clients.get(dk)
        if other is None or dk in (self_key, mine):
            continue
        wg_peers[dk] = PeerConfig(
            public_key=dk,
            endpoint=d.endpoint,
            allowed_ips=frozenset({f"{other.address}/128"}) if d.routed else frozenset(),
            keepalive=DIRECT_KEEPALIVE_S,
        )
    return wg_peers, host_routes


def _peer_peers(
    self_key: bytes,
    live: Mapping[bytes, NodeRecord],
    peers: Mapping[bytes, NodeRecord],
    clients: Mapping[bytes, NodeRecord],
    routes: list[GatewayRoute],
    keepalive: int | None,
    devices: Iterable[tuple[bytes, str, bytes]],
) -> tuple[dict[bytes, PeerConfig], set[Route]]:
    """A peer's WireGuard peers: every other live peer, its clients and devices."""
    wg_peers: dict[bytes, PeerConfig] = {}
    host_routes: set[Route] = set()
    allowed_by_peer: dict[bytes, set[str]] = {
        k: {f"{r.address}/128"} for k, r in peers.items() if k != self_key
    }
    other_peers = {k: r for k, r in peers.items() if k != self_key}
    _assign_clients(self_key, peers, clients, wg_peers, allowed_by_peer)
    for dk, daddr, sponsor in devices:
        if dk in live:
            continue
        if sponsor == self_key:
            wg_peers[dk] = PeerConfig(
                public_key=dk, endpoint=None, allowed_ips=frozenset({f"{daddr}/128"})
            )
        elif sponsor in allowed_by_peer:
            allowed_by_peer[sponsor].add(f"{daddr}/128")
    for r in routes:
        if r.gateway in allowed_by_peer:
            allowed_by_peer[r.gateway].add(r.destination)
            gw_addr = other_peers[r.gateway].address
            host_routes.add(Route(r.destination, gw_addr))
    for k, allowed in allowed_by_peer.items():
        rec = other_peers[k]
        wg_peers[k] = PeerConfig(
            public_key=k,
            endpoint=rec.wg_endpoint,
            allowed_ips=frozenset(allowed),
            keepalive=keepalive or 0,
        )
    return wg_peers, host_routes


def _assign_clients(
    self_key: bytes,
    peers: Mapping[bytes, NodeRecord],
    clients: Mapping[bytes, NodeRecord],
    wg_peers: dict[bytes, PeerConfig],
    allowed_by_peer: dict[bytes, set[str]],
) -> None:
    """Place the clients: this peer's own become its WireGuard peers.

    A client assigned to another peer adds its /128 to that peer's AllowedIPs.
    """
    for ck, c in clients.items():
        if ck == self_key:
            continue
        via = assigned_peer(c, peers)
        if via == self_key:
            wg_peers[ck] = PeerConfig(
                public_key=ck, endpoint=None, allowed_ips=frozenset({f"{c.address}/128"})
            )
        elif via is not None and via in allowed_by_peer:
            allowed_by_peer[via].add(f"{c.address}/128")


@dataclass(frozen=True, slots=True)
class GuardedMesh:
    """One mesh interface of this node, as its forwarding guard sees it."""

    interface: str
    #: the mesh /64: a packet arriving on another mesh's interface with a
    #: source in it is dropped (only this interface's peers may use it)
    prefix: str
    #: this node is an exit of the mesh (a peer there with advertiseDefaults):
    #: what arrives on the interface may leave the overlay
    exit: bool


@dataclass(frozen=True, slots=True)
class ForwardGuard:
    """What this node forwards from its mesh interfaces (docs/ROUTING.md, Forwarding guard).

    * Traffic that arrives on a mesh interface leaves by a mesh interface (the
      mesh routes this node carries as a peer or bridge, and a default it
      accepts, which goes on to its exit) or, only where this node is an exit,
      by any interface. A peer that is no exit forwarded a client's default
      traffic out of its own uplink (a client sends ``::/0`` to its assigned
      peer whenever any member offers one).
    * A packet arriving on a mesh interface whose source is in the prefix of
      another of this node's meshes is dropped: an exit's ``::/0`` AllowedIPs
      accept any source, and Linux does no IPv6 reverse-path check.
    """

    meshes: frozenset[GuardedMesh] = frozenset()
    #: IPv6 forwarding is on (this node is a peer in some mesh)
    forwarding: bool = False

    @property
    def interfaces(self) -> frozenset[str]:
        """Every mesh interface of this node."""
        return frozenset(m.interface for m in self.meshes)

    def non_exits(self) -> frozenset[str]:
        """Interfaces whose traffic may not leave the overlay (empty: no forward rule)."""
        if not self.forwarding:
            return frozenset()
        return frozenset(m.interface for m in self.meshes if not m.exit)

    def foreign_sources(self) -> dict[str, frozenset[str]]:
        """Per interface, the prefixes of this node's other meshes (no entry: nothing to drop)."""
        out: dict[str, frozenset[str]] = {}
        for m in self.meshes:
            others = frozenset(o.prefix for o in self.meshes if o.prefix != m.prefix)
            if others:
                out[m.interface] = others
        return out


def forward_guard(meshes: Iterable[tuple[str, str, Role, bool]]) -> ForwardGuard:
    """The guard of a node in ``meshes``: ``(interface, mesh id, role, advertise defaults)``.

    A node is an exit of a mesh where it is a peer with ``advertiseDefaults``
    (it advertises ``::/0`` there: core.routing); a client advertises nothing.
    """
    given = list(meshes)
    guarded = frozenset(
        GuardedMesh(ifname, str(mesh_prefix(mesh_id)), role == Role.PEER and defaults)
        for ifname, mesh_id, role, defaults in given
    )
    return ForwardGuard(guarded, any(role == Role.PEER for _, _, role, _ in given))
