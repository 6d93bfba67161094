"""Node-to-node messages of sponsored devices (issue 18). Pure.

Request -> reply pairs, over the authenticated transport (the receiver knows
the caller's key before it reads the body):

* ``SponsorRequest`` -> ``DeviceSettings``: an admin asks a peer to sponsor a
  device key (``smegctl add-device --via PEER``). The peer refuses unless the
  caller is an admin of the mesh *now* (its own view of the mesh authority),
  then runs the same checks as a local ``add-device`` (its invite policy,
  evictions, the device limit) and publishes the device in its own record.
* ``DeviceQuery`` -> ``DeviceSettings``: a member asks the sponsor for the
  current settings of one of its devices (``smegctl device-config``).

``DeviceSettings`` carries what only the sponsor knows: the DNS server it
offers on its overlay address, and the destinations it routes for the device
(``AllowedIPs`` besides the mesh prefix); or an ``error`` for the caller.
Every field is bounded.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Any

from smegmesh.core.addressing import has_mesh_prefix_form
from smegmesh.core.codec import Codec, WireError
from smegmesh.core.endpoint import no_scope
from smegmesh.core.record import ALIAS_RE

__all__ = [
    "MAX_DEVICE_ROUTES",
    "MAX_ERROR_LEN",
    "DeviceQuery",
    "DeviceSettings",
    "SponsorRequest",
    "from_remote_sponsor",
]

#: destinations a sponsor may return for one device (AllowedIPs besides the prefix)
MAX_DEVICE_ROUTES = 64
#: length of an error text in a reply
MAX_ERROR_LEN = 300


@dataclass(frozen=True, slots=True)
class SponsorRequest:
    """An admin asks the receiving peer to sponsor ``device_key`` as ``alias``."""

    mesh_id: str
    device_key: bytes
    alias: str


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """A member asks the sponsor of ``device_key`` for its current settings."""

    mesh_id: str
    device_key: bytes


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    """The sponsor's answer: ``error`` empty on success."""

    mesh_id: str
    error: str
    dns: str | None
    allowed_ips: tuple[str, ...]


def _arr(v: object, n: int) -> list[Any]:
    if type(v) is not list or len(v) != n:
        raise WireError(f"expected an array of {n}")
    return v


def _mesh(v: object) -> str:
    if type(v) is not str or not 0 < len(v) <= 63:
        raise WireError("expected a mesh id string")
    return v


def _key(v: object) -> bytes:
    if type(v) is not bytes or len(v) != 32:
        raise WireError("expected a 32-byte key")
    return v


def _alias(v: object) -> str:
    if type(v) is not str or ALIAS_RE.fullmatch(v) is None:
        raise WireError("expected a device alias (a DNS label)")
    return v


def _network(v: object) -> str:
    if type(v) is not str or not 0 < len(v) <= 64:
        raise WireError("expected a network")
    try:
        return str(ipaddress.ip_network(no_scope(v), strict=True))
    except ValueError:
        raise WireError("expected a network") from None


def _dec_sponsor(b: Any) -> SponsorRequest:
    m, k, a = _arr(b, 3)
    return SponsorRequest(_mesh(m), _key(k), _alias(a))


def _dec_query(b: Any) -> DeviceQuery:
    m, k = _arr(b, 2)
    return DeviceQuery(_mesh(m), _key(k))


def _dec_settings(b: Any) -> DeviceSettings:
    m, err, dns, allowed = _arr(b, 4)
    if type(err) is not str or len(err) > MAX_ERROR_LEN or not err.isprintable():
        raise WireError("expected an error text (one printable line)")
    if dns is not None:
        if type(dns) is not str or len(dns) > 64:
            raise WireError("expected a DNS address")
        try:
            dns = str(ipaddress.ip_address(no_scope(dns)))
        except ValueError:
            raise WireError("expected a DNS address") from None
    if type(allowed) is not list or len(allowed) > MAX_DEVICE_ROUTES:
        raise WireError(f"expected at most {MAX_DEVICE_ROUTES} networks")
    return DeviceSettings(_mesh(m), err, dns, tuple(_network(n) for n in allowed))


def from_remote_sponsor(reply: DeviceSettings, sponsor_address: str) -> DeviceSettings:
    """What a device takes of a remote sponsor's ``reply`` (sponsor at ``sponsor_address``).

    Default routes are the device owner's to add (docs/DEVICES.md), whatever the
    sponsor says, and so is anything else but mesh /64s: the halves of a default
    route, IPv4 or LAN ranges took the device's traffic. Its DNS server is the
    sponsor's own overlay address or none (another was asked outside the tunnel).
    """
    routes = tuple(n for n in reply.allowed_ips if has_mesh_prefix_form(n))
    dns = reply.dns if reply.dns is not None and _same_ip(reply.dns, sponsor_address) else None
    return replace(reply, dns=dns, allowed_ips=routes)


def _same_ip(a: str, b: str) -> bool:
    try:
        return _ip6(a) == _ip6(b)
    except ValueError:
        return False


def _ip6(text: str) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(text.strip().removeprefix("[").removesuffix("]"))


#: The device messages' codecs (in :data:`smegmesh.core.wire.PROTOCOL`).
CODECS = (
    Codec(50, SponsorRequest, lambda m: [m.mesh_id, m.device_key, m.alias], _dec_sponsor),
    Codec(51, DeviceQuery, lambda m: [m.mesh_id, m.device_key], _dec_query),
    Codec(
        52,
        DeviceSettings,
        lambda m: [m.mesh_id, m.error[:MAX_ERROR_LEN], m.dns, list(m.allowed_ips)],
        _dec_settings,
    ),
)
