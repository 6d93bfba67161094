"""Pure diff between desired and live WireGuard/host state.

``diff_interface`` and ``diff_host`` compute the minimal list of typed
operations that turn the live state into the desired one; ``apply_ops`` and
``apply_host_ops`` apply such a list to a *status value* (no I/O) and are used
by the in-memory backend, by the reconciler's cache of live state and by tests.

Semantics of "desired":

- ``InterfaceConfig.listen_port is None`` means "whatever WireGuard chose":
  never a diff.
- ``PeerConfig.endpoint is None`` means "learn from handshakes": the live
  endpoint (roamed or learned) is never overwritten.
- Allowed IPs, keepalive and a set endpoint are compared after normalisation,
  so ``fd00:0::1/128`` equals ``fd00::1/128``.

Cost is one equality check per peer in the common unchanged case; parsing
(normalisation) only happens for peers whose raw values differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from smegmesh.core.wgconfig import (
    HostConfig,
    HostStatus,
    InterfaceConfig,
    InterfaceStatus,
    PeerConfig,
    PeerStatus,
    Route,
    normalize_cidr,
    normalize_endpoint,
    normalize_interface_address,
)

# --------------------------------------------------------------------------
# WireGuard device operations


@dataclass(frozen=True, slots=True)
class SetPrivateKey:
    private_key: bytes


@dataclass(frozen=True, slots=True)
class SetListenPort:
    listen_port: int


@dataclass(frozen=True, slots=True)
class AddPeer:
    peer: PeerConfig


@dataclass(frozen=True, slots=True)
class UpdatePeer:
    """Change only the given attributes of an existing peer (``None`` = unchanged).

    ``allowed_ips`` replaces the peer's whole set.
    """

    public_key: bytes
    endpoint: str | None = None
    allowed_ips: frozenset[str] | None = None
    keepalive: int | None = None


@dataclass(frozen=True, slots=True)
class RemovePeer:
    public_key: bytes


WgOp = SetPrivateKey | SetListenPort | AddPeer | UpdatePeer | RemovePeer


def public_key_of(private_key: bytes) -> bytes:
    """X25519 public key of a raw 32-byte private key."""
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def _norm_ips(ips: Iterable[str]) -> frozenset[str]:
    return frozenset(normalize_cidr(ip) for ip in ips)


def diff_peer(desired: PeerConfig, live: PeerStatus) -> UpdatePeer | None:
    """Attributes of ``live`` that must change to match ``desired``; None if none."""
    endpoint: str | None = None
    if desired.endpoint is not None and desired.endpoint != live.endpoint:
        want = normalize_endpoint(desired.endpoint)
        if want != normalize_endpoint(live.endpoint):
            endpoint = want
    allowed: frozenset[str] | None = None
    if desired.allowed_ips != live.allowed_ips:
        want_ips = _norm_ips(desired.allowed_ips)
        if want_ips != _norm_ips(live.allowed_ips):
            allowed = want_ips
    keepalive = desired.keepalive if desired.keepalive != live.keepalive else None
    if endpoint is None and allowed is None and keepalive is None:
        return None
    return UpdatePeer(live.public_key, endpoint, allowed, keepalive)


def _normalized_peer(peer: PeerConfig) -> PeerConfig:
    return PeerConfig(
        public_key=peer.public_key,
        endpoint=normalize_endpoint(peer.endpoint),
        allowed_ips=_norm_ips(peer.allowed_ips),
        keepalive=peer.keepalive,
    )


def diff_interface(desired: InterfaceConfig, live: InterfaceStatus) -> list[WgOp]:
    """Minimal operations turning ``live`` into ``desired``.

    Order: interface settings, peer removals (freeing allowed IPs), then
    additions and updates.
    """
    ops: list[WgOp] = []
    if live.private_key is not None:
        if live.private_key != desired.private_key:
            ops.append(SetPrivateKey(desired.private_key))
    elif live.public_key != public_key_of(desired.private_key):
        ops.append(SetPrivateKey(desired.private_key))
    if desired.listen_port is not None and desired.listen_port != live.listen_port:
        ops.append(SetListenPort(desired.listen_port))

    want = desired.peers
    have = live.peers
    ops.extend(RemovePeer(key) for key in have if key not in want)
    for key, peer in want.items():
        cur = have.get(key)
        if cur is None:
            ops.append(AddPeer(_normalized_peer(peer)))
            continue
        upd = diff_peer(peer, cur)
        if upd is not None:
            ops.append(upd)
    return ops


def apply_ops(status: InterfaceStatus, ops: Sequence[WgOp]) -> InterfaceStatus:
    """The status that results from applying ``ops`` to ``status`` (pure).

    Mirrors WireGuard semantics: an allowed IP given to one peer is taken away
    from whichever peer had it before.
    """
    if not ops:
        return status
    peers = dict(status.peers)
    private_key = status.private_key
    public_key = status.public_key
    port = status.listen_port
    owner: dict[str, bytes] | None = None  # allowed IP -> peer, built on first need

    def take_ips(key: bytes, ips: frozenset[str]) -> None:
        nonlocal owner
        if owner is None:
            owner = {ip: k for k, p in peers.items() for ip in p.allowed_ips}
        for ip in ips:
            prev = owner.get(ip)
            if prev is not None and prev != key and prev in peers:
                other = peers[prev]
                peers[prev] = replace(other, allowed_ips=other.allowed_ips - {ip})
            owner[ip] = key

    for op in ops:
        if isinstance(op, SetPrivateKey):
            private_key = op.private_key
            public_key = public_key_of(op.private_key)
            # WireGuard drops a peer whose key equals our own public key.
            peers.pop(public_key, None)
        elif isinstance(op, SetListenPort):
            port = op.listen_port
        elif isinstance(op, RemovePeer):
            peers.pop(op.public_key, None)
        elif isinstance(op, AddPeer):
            p = op.peer
            old = peers.get(p.public_key)
            if p.allowed_ips:
                take_ips(p.public_key, p.allowed_ips)
            endpoint = p.endpoint
            if endpoint is None and old is not None:
                endpoint = old.endpoint
            peers[p.public_key] = PeerStatus(
                public_key=p.public_key,
                endpoint=endpoint,
                allowed_ips=p.allowed_ips,
                keepalive=p.keepalive,
                last_handshake=old.last_handshake if old else None,
                rx_bytes=old.rx_bytes if old else 0,
                tx_bytes=old.tx_bytes if old else 0,
            )
        else:
            cur = peers.get(op.public_key)
            if cur is None:
                cur = PeerStatus(op.public_key, None, frozenset(), 0, None, 0, 0)
            if op.allowed_ips:
                take_ips(op.public_key, op.allowed_ips)
            peers[op.public_key] = replace(
                cur,
                endpoint=op.endpoint if op.endpoint is not None else cur.endpoint,
                allowed_ips=op.allowed_ips if op.allowed_ips is not None else cur.allowed_ips,
                keepalive=op.keepalive if op.keepalive is not None else cur.keepalive,
            )
    return InterfaceStatus(
        name=status.name,
        public_key=public_key,
        listen_port=port,
        peers=peers,
        private_key=private_key,
    )


# --------------------------------------------------------------------------
# Host operations


@dataclass(frozen=True, slots=True)
class SetLinkUp:
    up: bool


@dataclass(frozen=True, slots=True)
class SetMtu:
    mtu: int


@dataclass(frozen=True, slots=True)
class AddAddress:
    address: str  # "fd00::1/64"


@dataclass(frozen=True, slots=True)
class RemoveAddress:
    address: str


@dataclass(frozen=True, slots=True)
class AddRoute:
    route: Route


@dataclass(frozen=True, slots=True)
class RemoveRoute:
    route: Route


@dataclass(frozen=True, slots=True)
class SetForwarding:
    enabled: bool


HostOp = SetLinkUp | SetMtu | AddAddress | RemoveAddress | AddRoute | RemoveRoute | SetForwarding


def normalize_route(route: Route) -> Route:
    via = route.via
    if via is not None:
        via = normalize_interface_address(via).split("/")[0]
    return Route(normalize_cidr(route.destination), via)


def diff_host(desired: HostConfig, live: HostStatus) -> list[HostOp]:
    """Minimal host operations turning ``live`` into ``desired``.

    Order: MTU, address removals, additions, link up, route removals, route
    additions, forwarding, link down.
    """
    ops: list[HostOp] = []
    if live.mtu != desired.mtu:
        ops.append(SetMtu(desired.mtu))
    want_addrs = {normalize_interface_address(a) for a in desired.addresses}
    have_addrs = {normalize_interface_address(a) for a in live.addresses}
    ops.extend(RemoveAddress(a) for a in sorted(have_addrs - want_addrs))
    ops.extend(AddAddress(a) for a in sorted(want_addrs - have_addrs))
    if desired.up and not live.up:
        ops.append(SetLinkUp(True))
    want_routes = {normalize_route(r) for r in desired.routes}
    have_routes = {normalize_route(r) for r in live.routes}
    # A link that goes (or is) down loses its routes; do not add them before it is up.
    if desired.up:
        ops.extend(RemoveRoute(r) for r in sorted(have_routes - want_routes, key=_route_key))
        ops.extend(AddRoute(r) for r in sorted(want_routes - have_routes, key=_route_key))
    else:
        ops.extend(RemoveRoute(r) for r in sorted(have_routes, key=_route_key))
    if desired.forwarding != live.forwarding:
        ops.append(SetForwarding(desired.forwarding))
    if not desired.up and live.up:
        ops.append(SetLinkUp(False))
    return ops


def _route_key(route: Route) -> tuple[str, str]:
    return (route.destination, route.via or "")


def apply_host_ops(status: HostStatus, ops: Sequence[HostOp]) -> HostStatus:
    """The host status that results from applying ``ops`` (pure)."""
    addrs = {normalize_interface_address(a) for a in status.addresses}
    routes = {normalize_route(r) for r in status.routes}
    up, mtu, fwd = status.up, status.mtu, status.forwarding
    for op in ops:
        if isinstance(op, SetLinkUp):
            up = op.up
            if not up:
                routes.clear()
        elif isinstance(op, SetMtu):
            mtu = op.mtu
        elif isinstance(op, AddAddress):
            addrs.add(normalize_interface_address(op.address))
        elif isinstance(op, RemoveAddress):
            addrs.discard(normalize_interface_address(op.address))
        elif isinstance(op, AddRoute):
            routes.add(normalize_route(op.route))
        elif isinstance(op, RemoveRoute):
            routes.discard(normalize_route(op.route))
        else:
            fwd = op.enabled
    return HostStatus(
        interface=status.interface,
        exists=status.exists,
        up=up,
        mtu=mtu,
        addresses=frozenset(addrs),
        routes=frozenset(routes),
        forwarding=fwd,
    )
