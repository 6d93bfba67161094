"""Desired/live WireGuard interface configuration: plain data types.

These are the vocabulary shared by the pure core (which computes what an
interface *should* look like from mesh state), the reconciler (which diffs
desired against live) and the backends (which read and apply live state).
Keys are raw 32-byte values everywhere in the code; base64 only at the edges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One WireGuard peer as it should be configured."""

    public_key: bytes
    endpoint: str | None = None  # "host:port" / "[v6]:port", None = learn from handshakes
    allowed_ips: frozenset[str] = frozenset()  # normalised CIDR strings, e.g. "fd12::1/128"
    keepalive: int = 0  # persistent keepalive seconds, 0 = off


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    """A WireGuard device as it should be configured."""

    name: str
    private_key: bytes
    listen_port: int | None = None  # None = let WireGuard choose
    peers: Mapping[bytes, PeerConfig] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    """A kernel route on the overlay interface; via=None means on-link (dev only)."""

    destination: str  # CIDR, e.g. "fd12:3456::/64" or "::/0"
    via: str | None = None


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Host side of one mesh interface: MTU, overlay addresses, routes, forwarding."""

    interface: str
    addresses: frozenset[str] = frozenset()  # "fdxx::1/64"
    routes: frozenset[Route] = frozenset()
    mtu: int = 1420
    forwarding: bool = False


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """Live state of one peer as read back from WireGuard."""

    public_key: bytes
    endpoint: str | None
    allowed_ips: frozenset[str]
    keepalive: int
    last_handshake: float | None  # unix seconds, None = never
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True, slots=True)
class InterfaceStatus:
    """Live state of a WireGuard device."""

    name: str
    public_key: bytes | None
    listen_port: int | None
    peers: Mapping[bytes, PeerStatus]
