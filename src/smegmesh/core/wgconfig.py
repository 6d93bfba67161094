"""Desired/live WireGuard interface configuration: plain data types.

These are the vocabulary shared by the pure core (which computes what an
interface *should* look like from mesh state), the reconciler (which diffs
desired against live) and the backends (which read and apply live state).
Keys are raw 32-byte values everywhere in the code; base64 only at the edges.
"""

from __future__ import annotations

import ipaddress
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
    up: bool = True


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
    private_key: bytes | None = None  # known when the backend can read it (UAPI, netlink)


@dataclass(frozen=True, slots=True)
class HostStatus:
    """Live host state of one overlay interface, as far as smegmesh manages it.

    ``routes`` holds only routes smegmesh installed (tagged with its route
    protocol number); ``addresses`` excludes link-local addresses.
    """

    interface: str
    exists: bool = True
    up: bool = False
    mtu: int | None = None
    addresses: frozenset[str] = frozenset()
    routes: frozenset[Route] = frozenset()
    forwarding: bool = False


def normalize_cidr(cidr: str) -> str:
    """Canonical text of a prefix: ``fd00:0::1/128`` -> ``fd00::1/128``; host bits cleared."""
    return str(ipaddress.ip_network(cidr, strict=False))


def normalize_interface_address(addr: str) -> str:
    """Canonical text of an interface address with prefix length, host bits kept."""
    return str(ipaddress.ip_interface(addr))


def normalize_endpoint(endpoint: str | None) -> str | None:
    """Canonical ``host:port`` / ``[v6]:port``; hostnames are returned unchanged."""
    if endpoint is None:
        return None
    host, sep, port = endpoint.rpartition(":")
    if not sep:
        return endpoint
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return endpoint
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"{ip.ipv4_mapped}:{int(port)}"
        return f"[{ip}]:{int(port)}"
    return f"{ip}:{int(port)}"


def peer_config_of(status: PeerStatus) -> PeerConfig:
    """The configuration part of a live peer."""
    return PeerConfig(
        public_key=status.public_key,
        endpoint=status.endpoint,
        allowed_ips=status.allowed_ips,
        keepalive=status.keepalive,
    )


def empty_status(name: str) -> InterfaceStatus:
    """Live state of a freshly created device: no key, no port, no peers."""
    return InterfaceStatus(name=name, public_key=None, listen_port=None, peers={})
