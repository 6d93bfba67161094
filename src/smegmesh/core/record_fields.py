"""Record fields: the limits, value types and field checks of node records.

The constants and small value types a :class:`~smegmesh.core.record.NodeRecord`
is made of, :class:`RecordError`, and the per-field checks that
:func:`~smegmesh.core.record_model.check_record_fields` runs.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smegmesh.core.addressing import InvalidMeshId, validate_mesh_id
from smegmesh.core.cert import MAX_CHAIN, Cert, CertError, Founding, check_auth_fields
from smegmesh.core.endpoint import no_scope

if TYPE_CHECKING:
    from smegmesh.core.record_model import NodeRecord

__all__ = [
    "ALIAS_RE",
    "ALIAS_RULE",
    "EXT_DEVICES",
    "EXT_NAT",
    "MAX_ADMITTED",
    "MAX_DESCRIPTION_BYTES",
    "MAX_DEVICES",
    "MAX_ENDPOINT_LEN",
    "MAX_INVITES",
    "MAX_LOCAL_ENDPOINTS",
    "MAX_PROOFS",
    "MAX_RECORD_BYTES",
    "MAX_ROUTES",
    "MAX_ROUTE_PATH",
    "MAX_SERVICES",
    "MAX_SERVICE_VALUE_BYTES",
    "MAX_U63",
    "PRUNE_TAG",
    "RECORD_TAG",
    "SERVICE_KEY_RE",
    "Admission",
    "InviteGrant",
    "MembershipProof",
    "RecordError",
    "Role",
    "RouteAdv",
    "SponsoredDevice",
    "check_endpoint",
]

RECORD_TAG = b"smegmesh/record/v1\0"
PRUNE_TAG = b"smegmesh/prune/v1\0"

MAX_U63 = 2**63  # exclusive bound of versions and timestamps
MAX_SERVICES = 16
MAX_ROUTES = 512  # path-vector: a bridge may advertise every other mesh (see docs/ROUTE-SCALE.md)
MAX_ROUTE_PATH = 16
MAX_INVITES = 16
MAX_ADMITTED = 64
MAX_DESCRIPTION_BYTES = 256
MAX_SERVICE_VALUE_BYTES = 256
MAX_ENDPOINT_LEN = 261  # "[" + 45 + "]:" + 5 or 253 + ":" + 5
MAX_PROOFS = 16  # meshes a bridge proves membership of
#: Tags of the optional record extensions (after the signature on the wire).
EXT_DEVICES = 1
EXT_NAT = 2
MAX_DEVICES = 32  # sponsored devices (phones, routers without smegd) per record (issue 18)
MAX_LOCAL_ENDPOINTS = 4  # local WireGuard endpoints a client publishes (docs/NAT.md)
#: Upper bound of a record's signed form: a member cannot publish more (512
#: short routes, a long admission chain and a few proofs fit).
MAX_RECORD_BYTES = 96 * 1024

#: An alias: one lower-case DNS label (served as ALIAS.MESHID.smeg.).
ALIAS_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: :data:`ALIAS_RE` in words, for error messages.
ALIAS_RULE = "must be a DNS label: 1-63 letters, digits or '-', not starting or ending with '-'"
#: A service key.
SERVICE_KEY_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT_RE = re.compile(r"[1-9][0-9]{0,4}")


class Role(enum.StrEnum):
    """A node's role in a mesh: a full peer or a client behind an assigned peer."""

    PEER = "peer"
    CLIENT = "client"


class RecordError(ValueError):
    """A record or prune is malformed, forged or for another mesh."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class RouteAdv:
    """An advertised route: destination prefix and the mesh ids it crossed."""

    prefix: str  # canonical CIDR IPv6 network, e.g. "fd12:3456:789a:bc01::/64", "::/0"
    path: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InviteGrant:
    """An invitation issued by the record's owner (hash of the secret token)."""

    token_hash: bytes  # 16 bytes
    expiry_ms: int
    uses: int
    strict: bool = False  # only the issuer may admit with it (exact use count)


@dataclass(frozen=True, slots=True)
class Admission:
    """The record's owner admitted ``joiner`` (a WG key) with a token."""

    token_hash: bytes  # 16 bytes
    joiner: bytes  # 32 bytes


@dataclass(frozen=True, slots=True)
class MembershipProof:
    """Proof that the record's owner is a member of another mesh (for bridge routes).

    That mesh's founding record (self-certifying: it hashes to the mesh id) and
    the owner's admission chain there.
    """

    founding: Founding
    chain: tuple[Cert, ...]

    @property
    def mesh_id(self) -> str:
        """The id of the mesh this proves membership of."""
        return self.founding.mesh_id


@dataclass(frozen=True, slots=True)
class SponsoredDevice:
    """A device without smegd (a phone, a router) that the record's owner sponsors.

    Its WireGuard key, its alias, and the owner's certificate admitting it
    (issuer: the owner; the device reaches the mesh only through the owner).
    """

    wg_key: bytes  # 32 bytes
    alias: str
    cert: Cert


def _services_tuple(
    services: Mapping[str, str] | Iterable[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    items = services.items() if isinstance(services, Mapping) else services
    return tuple(sorted((str(k), str(v)) for k, v in items))


# --------------------------------------------------------------------------- field checks


def _fail(fieldname: str, msg: str) -> RecordError:
    return RecordError(fieldname, msg)


def _check_bytes(name: str, v: object, n: int, optional: bool = False) -> None:
    if v is None and optional:
        return
    if type(v) is not bytes or len(v) != n:
        raise _fail(name, f"must be {n} bytes")


def _check_uint(name: str, v: object, bound: int = MAX_U63) -> None:
    if type(v) is not int or not 0 <= v < bound:
        raise _fail(name, f"must be an integer in [0, {bound})")


def _check_mesh_id(v: object, expected: str) -> None:
    if type(v) is not str:
        raise _fail("mesh_id", "must be a string")
    try:
        validate_mesh_id(v)
    except InvalidMeshId as e:
        raise _fail("mesh_id", str(e)) from None
    if v != expected:
        raise _fail("mesh_id", f"record is for mesh {v!r}, not {expected!r}")


def check_endpoint(s: object) -> str:
    """Validate ``host:port`` / ``[v6]:port`` (host: IPv4 or DNS name)."""
    if type(s) is not str or not s.isascii() or not 3 <= len(s) <= MAX_ENDPOINT_LEN:
        raise ValueError("endpoint must be an ASCII 'host:port' or '[v6]:port'")
    if s.startswith("["):
        host, sep, port = s[1:].partition("]:")
        if not sep:
            raise ValueError("IPv6 endpoint must look like '[addr]:port'")
        try:
            ipaddress.IPv6Address(no_scope(host))
        except ValueError as e:
            why = f": {e}" if "%" in host else ""
            raise ValueError(f"invalid IPv6 address {host!r}{why}") from None
    else:
        host, sep, port = s.rpartition(":")
        if not sep or not host:
            raise ValueError("endpoint must be 'host:port'")
        if ":" in host:
            raise ValueError("IPv6 endpoint must be bracketed: '[addr]:port'")
        if len(host) > 253 or not all(_HOST_LABEL_RE.fullmatch(lab) for lab in host.split(".")):
            raise ValueError(f"invalid host {host!r}")
    if _PORT_RE.fullmatch(port) is None or not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid port {port!r}")
    return s


def _check_endpoint_field(name: str, v: object) -> None:
    if v is None:
        return
    try:
        check_endpoint(v)
    except ValueError as e:
        raise _fail(name, str(e)) from None


def _check_route(i: int, r: object) -> None:
    name = f"routes[{i}]"
    if type(r) is not RouteAdv:
        raise _fail(name, "must be a RouteAdv")
    if type(r.prefix) is not str:
        raise _fail(name, "prefix must be a string")
    try:
        net = ipaddress.IPv6Network(no_scope(r.prefix), strict=True)
    except ValueError as e:
        raise _fail(name, f"invalid IPv6 prefix: {e}") from None
    if str(net) != r.prefix:
        raise _fail(name, f"prefix must be canonical ({net})")
    if type(r.path) is not tuple or len(r.path) > MAX_ROUTE_PATH:
        raise _fail(name, f"path must be a tuple of at most {MAX_ROUTE_PATH} mesh ids")
    for m in r.path:
        if type(m) is not str:
            raise _fail(name, "path entries must be mesh ids")
        try:
            validate_mesh_id(m)
        except InvalidMeshId as e:
            raise _fail(name, str(e)) from None


def _check_devices(rec: NodeRecord, mesh_id: str) -> None:
    devs = rec.devices
    if type(devs) is not tuple or len(devs) > MAX_DEVICES:
        raise _fail("devices", f"at most {MAX_DEVICES} sponsored devices")
    seen: set[bytes] = set()
    for d in devs:
        if type(d) is not SponsoredDevice:
            raise _fail("devices", "entries must be SponsoredDevice")
        _check_bytes("devices.wg_key", d.wg_key, 32)
        if d.wg_key == rec.wg_key or d.wg_key in seen:
            raise _fail("devices.wg_key", "must be unique and not the sponsor's own key")
        seen.add(d.wg_key)
        if type(d.alias) is not str or (d.alias and ALIAS_RE.fullmatch(d.alias) is None):
            raise _fail("devices.alias", "must be empty or a DNS label (1-63 of [a-z0-9-])")
        c = d.cert
        if type(c) is not Cert:
            raise _fail("devices.cert", "must be an admission certificate")
        try:
            check_auth_fields(c, mesh_id)
        except CertError as e:
            raise _fail("devices.cert", str(e)) from None
        if c.subject != d.wg_key or c.issuer != rec.wg_key or c.issuer_sign != rec.sign_key:
            raise _fail("devices.cert", "must be the sponsor's certificate for this device")
        if c.may_admit:
            raise _fail("devices.cert", "a sponsored device may not admit others")


def _check_chain_shape(name: str, chain: object, mesh_id: str) -> None:
    if type(chain) is not tuple or len(chain) > MAX_CHAIN:
        raise _fail(name, f"at most {MAX_CHAIN} admission certificates")
    for c in chain:
        if type(c) is not Cert:
            raise _fail(name, "entries must be Cert")
        try:
            check_auth_fields(c, mesh_id)
        except CertError as e:
            raise _fail(name, str(e)) from None


def _check_services(svc: object) -> None:
    if type(svc) is not tuple or len(svc) > MAX_SERVICES:
        raise _fail("services", f"at most {MAX_SERVICES} entries")
    prev: str | None = None
    for item in svc:
        if type(item) is not tuple or len(item) != 2:
            raise _fail("services", "entries must be (key, value) pairs")
        k, v = item
        if type(k) is not str or SERVICE_KEY_RE.fullmatch(k) is None:
            raise _fail("services", f"invalid key {k!r}: 1-64 of [A-Za-z0-9._-]")
        if type(v) is not str or len(v.encode("utf-8", "surrogatepass")) > 256:
            raise _fail("services", f"value of {k!r} must be a string of at most 256 bytes")
        if prev is not None and k <= prev:
            raise _fail("services", "keys must be unique and sorted")
        prev = k


def _check_routes(routes: object) -> None:
    if type(routes) is not tuple or len(routes) > MAX_ROUTES:
        raise _fail("routes", f"at most {MAX_ROUTES} routes")
    for i, r in enumerate(routes):
        _check_route(i, r)


def _check_local_endpoints(local: object) -> None:
    if type(local) is not tuple or len(local) > MAX_LOCAL_ENDPOINTS:
        raise _fail("local_endpoints", f"at most {MAX_LOCAL_ENDPOINTS} endpoints")
    for ep in local:
        if ep is None:
            raise _fail("local_endpoints", "entries must be endpoints")
        _check_endpoint_field("local_endpoints", ep)


def _check_proofs(proofs: object) -> None:
    if type(proofs) is not tuple or len(proofs) > MAX_PROOFS:
        raise _fail("proofs", f"at most {MAX_PROOFS} membership proofs")
    for pr in proofs:
        if type(pr) is not MembershipProof:
            raise _fail("proofs", "entries must be MembershipProof")
        try:
            check_auth_fields(pr.founding, None)
        except CertError as e:
            raise _fail("proofs", str(e)) from None
        _check_chain_shape("proofs.chain", pr.chain, pr.founding.mesh_id)


def _check_invites(invites: object) -> None:
    if type(invites) is not tuple or len(invites) > MAX_INVITES:
        raise _fail("invites", f"at most {MAX_INVITES} invites")
    for g in invites:
        if type(g) is not InviteGrant:
            raise _fail("invites", "entries must be InviteGrant")
        _check_bytes("invites.token_hash", g.token_hash, 16)
        _check_uint("invites.expiry_ms", g.expiry_ms)
        _check_uint("invites.uses", g.uses, 2**32)
        if type(g.strict) is not bool:
            raise _fail("invites.strict", "must be a boolean")


def _check_admitted(admitted: object) -> None:
    if type(admitted) is not tuple or len(admitted) > MAX_ADMITTED:
        raise _fail("admitted", f"at most {MAX_ADMITTED} admissions")
    for a in admitted:
        if type(a) is not Admission:
            raise _fail("admitted", "entries must be Admission")
        _check_bytes("admitted.token_hash", a.token_hash, 16)
        _check_bytes("admitted.joiner", a.joiner, 32)
