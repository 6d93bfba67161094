"""Signed node records and prunes: the items of the mesh state CRDT.

Only a node writes its own :class:`NodeRecord`; it is signed with the node's
Ed25519 key and the WireGuard key (node id) must be the Montgomery form of that
signing key, so nobody can publish a record for another node. A
:class:`Prune` is a signed statement by any member that every record of
``target`` with ``version <= target_version`` is dead (failure detection).

The signature covers ``TAG + msgpack(fields without signature)``; msgpack of
ints, strings, bytes, bools, nil and arrays is canonical (shortest encoding),
so the payload is a pure function of the field values.

Versions are *hybrid*: :meth:`NodeRecord.evolve` uses
``max(old.version + 1, now_ms)`` so a node that lost its counter (restored
from an old backup) still publishes a version above what the mesh holds.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

from smegmesh.core.addressing import InvalidMeshId, overlay_address, validate_mesh_id
from smegmesh.core.cert import (
    MAX_CHAIN,
    Cert,
    CertError,
    Founding,
    check_auth_fields,
)
from smegmesh.core.certwire import auth_from_obj, auth_to_obj
from smegmesh.core.identity import NodeIdentity, verify_signature, x25519_matches_ed25519
from smegmesh.core.signed import Signed

__all__ = [
    "ALIAS_RE",
    "MAX_ADMITTED",
    "MAX_DEVICES",
    "MAX_INVITES",
    "MAX_PROOFS",
    "MAX_RECORD_BYTES",
    "MAX_ROUTES",
    "MAX_ROUTE_PATH",
    "MAX_SERVICES",
    "PRUNE_TAG",
    "RECORD_TAG",
    "SERVICE_KEY_RE",
    "Admission",
    "InviteGrant",
    "MembershipProof",
    "NodeRecord",
    "Prune",
    "RecordError",
    "Role",
    "RouteAdv",
    "SponsoredDevice",
    "check_prune_fields",
    "check_record_fields",
    "prune_from_obj",
    "record_from_obj",
    "validate_prune",
    "validate_record",
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
#: A service key.
SERVICE_KEY_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT_RE = re.compile(r"[1-9][0-9]{0,4}")
_CHECKED = "_smegmesh_checked"  # memo on the frozen object: mesh id it passed checks for


class Role(enum.StrEnum):
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


@dataclass(frozen=True)
class NodeRecord(Signed):
    """What a node publishes about itself in one mesh. Build with :meth:`create`."""

    _TAG: ClassVar[bytes] = RECORD_TAG

    mesh_id: str
    wg_key: bytes
    sign_key: bytes
    version: int
    timestamp_ms: int
    role: Role
    wg_endpoint: str | None
    control_endpoint: str | None
    tls_fp: bytes | None
    address: str
    alias: str
    description: str
    services: tuple[tuple[str, str], ...]
    routes: tuple[RouteAdv, ...]
    assigned_peer: bytes | None
    invites: tuple[InviteGrant, ...]
    admitted: tuple[Admission, ...]
    left: bool
    chain: tuple[Cert, ...]  # admission proof: founder -> ... -> this node (founder: empty)
    proofs: tuple[MembershipProof, ...]  # membership of other meshes (bridges)
    signature: bytes = field(repr=False)
    #: sponsored devices (issue 18); on the wire only when non-empty, so records
    #: without devices keep the 21-field form older versions sign and read
    devices: tuple[SponsoredDevice, ...] = ()
    #: NAT traversal (issue 17, docs/NAT.md): the public ``host:port`` the
    #: assigned peer sees this client's WireGuard packets come from, and its
    #: local ``host:port`` endpoints (for two clients behind the same NAT). On
    #: the wire only when set, so records without them keep their old form.
    nat_endpoint: str | None = None
    local_endpoints: tuple[str, ...] = ()

    @property
    def key(self) -> bytes:
        """The node id (WireGuard public key)."""
        return self.wg_key

    @classmethod
    def create(
        cls,
        identity: NodeIdentity,
        mesh_id: str,
        *,
        version: int,
        now_ms: int,
        role: Role = Role.PEER,
        wg_endpoint: str | None = None,
        control_endpoint: str | None = None,
        tls_fp: bytes | None = None,
        alias: str = "",
        description: str = "",
        services: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        routes: Iterable[RouteAdv] = (),
        assigned_peer: bytes | None = None,
        invites: Iterable[InviteGrant] = (),
        admitted: Iterable[Admission] = (),
        left: bool = False,
        chain: Iterable[Cert] = (),
        proofs: Iterable[MembershipProof] = (),
        devices: Iterable[SponsoredDevice] = (),
        nat_endpoint: str | None = None,
        local_endpoints: Iterable[str] = (),
    ) -> NodeRecord:
        """Build, check and sign a record (raises :class:`RecordError`)."""
        unsigned = cls(
            mesh_id=mesh_id,
            wg_key=identity.wg_public_key,
            sign_key=identity.sign_public_key,
            version=version,
            timestamp_ms=now_ms,
            role=Role(role),
            wg_endpoint=wg_endpoint,
            control_endpoint=control_endpoint,
            tls_fp=tls_fp,
            address=str(overlay_address(mesh_id, identity.wg_public_key))
            if isinstance(mesh_id, str)
            else "",
            alias=alias,
            description=description,
            services=_services_tuple(services),
            routes=tuple(routes),
            assigned_peer=assigned_peer,
            invites=tuple(invites),
            admitted=tuple(admitted),
            left=left,
            chain=tuple(chain),
            proofs=tuple(proofs),
            signature=b"",
            devices=tuple(devices),
            nat_endpoint=nat_endpoint,
            local_endpoints=tuple(local_endpoints),
        )
        check_record_fields(unsigned, mesh_id, check_signature_len=False)
        return replace(unsigned, signature=identity.sign(unsigned.signed_payload()))

    def evolve(self, identity: NodeIdentity, now_ms: int, **changes: Any) -> NodeRecord:
        """A re-signed successor with ``version = max(version + 1, now_ms)``.

        ``changes`` may set any content field (role, endpoints, alias, services,
        routes, ...), not the keys, mesh id, address, version or signature.
        """
        if identity.wg_public_key != self.wg_key:
            raise RecordError("wg_key", "evolve() needs the record owner's identity")
        frozen = {"mesh_id", "wg_key", "sign_key", "address", "version", "timestamp_ms"}
        bad = set(changes) & (frozen | {"signature"})
        if bad:
            raise RecordError(sorted(bad)[0], "cannot be changed by evolve()")
        kwargs: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in frozen and f.name != "signature"
        }
        kwargs.update(changes)
        return NodeRecord.create(
            identity,
            self.mesh_id,
            version=max(self.version + 1, now_ms),
            now_ms=now_ms,
            **kwargs,
        )

    def fields_obj(self) -> list[Any]:
        """The msgpack-able list of all fields but the signature (canonical order)."""
        base = [
            self.mesh_id,
            self.wg_key,
            self.sign_key,
            self.version,
            self.timestamp_ms,
            str(self.role),
            self.wg_endpoint,
            self.control_endpoint,
            self.tls_fp,
            self.address,
            self.alias,
            self.description,
            [[k, v] for k, v in self.services],
            [[r.prefix, list(r.path)] for r in self.routes],
            self.assigned_peer,
            [[g.token_hash, g.expiry_ms, g.uses, g.strict] for g in self.invites],
            [[a.token_hash, a.joiner] for a in self.admitted],
            self.left,
            [auth_to_obj(c) for c in self.chain],
            [[auth_to_obj(p.founding), [auth_to_obj(c) for c in p.chain]] for p in self.proofs],
        ]
        ext: list[Any] = []  # optional extensions, each [tag, value], tags in order
        if self.devices:
            ext.append(
                [EXT_DEVICES, [[d.wg_key, d.alias, auth_to_obj(d.cert)] for d in self.devices]]
            )
        if self.nat_endpoint is not None or self.local_endpoints:
            ext.append([EXT_NAT, [self.nat_endpoint, list(self.local_endpoints)]])
        if ext:  # only when set, so records without them keep their older (signed) form
            base.append(ext)
        return base

    def to_obj(self) -> list[Any]:
        """Wire form: the 20 base fields, the signature, then the extensions if any."""
        obj = self.fields_obj()
        return [*obj[:20], self.signature, *obj[20:]]


@dataclass(frozen=True)
class Prune(Signed):
    """Signed by ``by_*``: every record of ``target`` with version <= target_version is dead."""

    _TAG: ClassVar[bytes] = PRUNE_TAG

    mesh_id: str
    target: bytes
    target_version: int
    by_wg_key: bytes
    by_sign_key: bytes
    timestamp_ms: int
    #: the target's own signed record at ``target_version``: proof that the
    #: pruner saw that version (a prune can never be ahead of the target)
    target_record: NodeRecord | None
    by_chain: tuple[Cert, ...]  # the pruner's admission proof
    signature: bytes = field(repr=False)

    @property
    def key(self) -> bytes:
        """The node this prune is about."""
        return self.target

    @classmethod
    def create(
        cls,
        identity: NodeIdentity,
        mesh_id: str,
        *,
        target: bytes | None = None,
        target_version: int | None = None,
        now_ms: int,
        target_record: NodeRecord | None = None,
        by_chain: Iterable[Cert] = (),
    ) -> Prune:
        if target_record is not None:
            target, target_version = target_record.wg_key, target_record.version
        if target is None or target_version is None:
            raise RecordError("target", "a prune names its target (or carries its record)")
        unsigned = cls(
            mesh_id=mesh_id,
            target=target,
            target_version=target_version,
            by_wg_key=identity.wg_public_key,
            by_sign_key=identity.sign_public_key,
            timestamp_ms=now_ms,
            target_record=target_record,
            by_chain=tuple(by_chain),
            signature=b"",
        )
        check_prune_fields(unsigned, mesh_id, check_signature_len=False)
        return replace(unsigned, signature=identity.sign(unsigned.signed_payload()))

    def fields_obj(self) -> list[Any]:
        return [
            self.mesh_id,
            self.target,
            self.target_version,
            self.by_wg_key,
            self.by_sign_key,
            self.timestamp_ms,
            None if self.target_record is None else self.target_record.to_obj(),
            [auth_to_obj(c) for c in self.by_chain],
        ]


# --------------------------------------------------------------------------- checks


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
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r}") from None
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
        net = ipaddress.IPv6Network(r.prefix, strict=True)
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


def check_record_fields(rec: NodeRecord, mesh_id: str, *, check_signature_len: bool = True) -> None:
    """Every check of :func:`validate_record` except the signature itself."""
    if type(rec) is not NodeRecord:
        raise _fail("record", "not a NodeRecord")
    if check_signature_len and rec.__dict__.get(_CHECKED) == mesh_id:
        return  # this (immutable) object already passed for this mesh
    _check_mesh_id(rec.mesh_id, mesh_id)
    _check_bytes("wg_key", rec.wg_key, 32)
    _check_bytes("sign_key", rec.sign_key, 32)
    _check_uint("version", rec.version)
    _check_uint("timestamp_ms", rec.timestamp_ms)
    if not isinstance(rec.role, Role):
        raise _fail("role", "must be 'peer' or 'client'")
    _check_endpoint_field("wg_endpoint", rec.wg_endpoint)
    _check_endpoint_field("control_endpoint", rec.control_endpoint)
    _check_bytes("tls_fp", rec.tls_fp, 32, optional=True)
    if type(rec.alias) is not str or (rec.alias and ALIAS_RE.fullmatch(rec.alias) is None):
        raise _fail("alias", "must be empty or a DNS label (1-63 of [a-z0-9-])")
    if type(rec.description) is not str:
        raise _fail("description", "must be a string")
    if len(rec.description.encode("utf-8", "surrogatepass")) > MAX_DESCRIPTION_BYTES:
        raise _fail("description", f"must be at most {MAX_DESCRIPTION_BYTES} UTF-8 bytes")
    svc = rec.services
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
    if type(rec.routes) is not tuple or len(rec.routes) > MAX_ROUTES:
        raise _fail("routes", f"at most {MAX_ROUTES} routes")
    for i, r in enumerate(rec.routes):
        _check_route(i, r)
    _check_bytes("assigned_peer", rec.assigned_peer, 32, optional=True)
    _check_chain_shape("chain", rec.chain, mesh_id)
    _check_endpoint_field("nat_endpoint", rec.nat_endpoint)
    if type(rec.local_endpoints) is not tuple or len(rec.local_endpoints) > MAX_LOCAL_ENDPOINTS:
        raise _fail("local_endpoints", f"at most {MAX_LOCAL_ENDPOINTS} endpoints")
    for ep in rec.local_endpoints:
        if ep is None:
            raise _fail("local_endpoints", "entries must be endpoints")
        _check_endpoint_field("local_endpoints", ep)
    if type(rec.proofs) is not tuple or len(rec.proofs) > MAX_PROOFS:
        raise _fail("proofs", f"at most {MAX_PROOFS} membership proofs")
    for pr in rec.proofs:
        if type(pr) is not MembershipProof:
            raise _fail("proofs", "entries must be MembershipProof")
        try:
            check_auth_fields(pr.founding, None)
        except CertError as e:
            raise _fail("proofs", str(e)) from None
        _check_chain_shape("proofs.chain", pr.chain, pr.founding.mesh_id)
    if type(rec.invites) is not tuple or len(rec.invites) > MAX_INVITES:
        raise _fail("invites", f"at most {MAX_INVITES} invites")
    for g in rec.invites:
        if type(g) is not InviteGrant:
            raise _fail("invites", "entries must be InviteGrant")
        _check_bytes("invites.token_hash", g.token_hash, 16)
        _check_uint("invites.expiry_ms", g.expiry_ms)
        _check_uint("invites.uses", g.uses, 2**32)
        if type(g.strict) is not bool:
            raise _fail("invites.strict", "must be a boolean")
    if type(rec.admitted) is not tuple or len(rec.admitted) > MAX_ADMITTED:
        raise _fail("admitted", f"at most {MAX_ADMITTED} admissions")
    for a in rec.admitted:
        if type(a) is not Admission:
            raise _fail("admitted", "entries must be Admission")
        _check_bytes("admitted.token_hash", a.token_hash, 16)
        _check_bytes("admitted.joiner", a.joiner, 32)
    if type(rec.left) is not bool:
        raise _fail("left", "must be a boolean")
    _check_devices(rec, mesh_id)
    if type(rec.address) is not str or rec.address != str(overlay_address(mesh_id, rec.wg_key)):
        raise _fail("address", "does not match the mesh prefix and the node's key")
    if not x25519_matches_ed25519(rec.wg_key, rec.sign_key):
        raise _fail("wg_key", "is not the X25519 form of sign_key")
    if len(rec.signed_payload()) > MAX_RECORD_BYTES:
        raise _fail("record", f"larger than {MAX_RECORD_BYTES} bytes")
    if check_signature_len:
        _check_bytes("signature", rec.signature, 64)
        rec.__dict__[_CHECKED] = mesh_id


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


def validate_record(rec: NodeRecord, mesh_id: str) -> None:
    """Raise :class:`RecordError` unless ``rec`` is a valid, authentic record of ``mesh_id``."""
    check_record_fields(rec, mesh_id)
    if not verify_signature(rec.sign_key, rec.signed_payload(), rec.signature):
        raise _fail("signature", "invalid signature")


def check_prune_fields(p: Prune, mesh_id: str, *, check_signature_len: bool = True) -> None:
    """Every check of :func:`validate_prune` except the signature itself."""
    if type(p) is not Prune:
        raise _fail("prune", "not a Prune")
    _check_mesh_id(p.mesh_id, mesh_id)
    _check_bytes("target", p.target, 32)
    _check_uint("target_version", p.target_version)
    _check_bytes("by_wg_key", p.by_wg_key, 32)
    _check_bytes("by_sign_key", p.by_sign_key, 32)
    _check_uint("timestamp_ms", p.timestamp_ms)
    if not x25519_matches_ed25519(p.by_wg_key, p.by_sign_key):
        raise _fail("by_wg_key", "is not the X25519 form of by_sign_key")
    if p.target_record is not None:
        check_record_fields(p.target_record, mesh_id, check_signature_len=check_signature_len)
        if (p.target_record.wg_key, p.target_record.version) != (p.target, p.target_version):
            raise _fail("target_record", "is not the target's record at target_version")
    _check_chain_shape("by_chain", p.by_chain, mesh_id)
    if check_signature_len:
        _check_bytes("signature", p.signature, 64)


def validate_prune(p: Prune, mesh_id: str) -> None:
    """Raise :class:`RecordError` unless ``p`` is a well-formed, authentic prune of ``mesh_id``."""
    check_prune_fields(p, mesh_id)
    if not verify_signature(p.by_sign_key, p.signed_payload(), p.signature):
        raise _fail("signature", "invalid signature")


# --------------------------------------------------------------------------- decoding


def _list(v: object, name: str) -> list[Any]:
    if type(v) is not list:
        raise _fail(name, "must be an array")
    return v


def record_from_obj(obj: object) -> NodeRecord:
    """Build a record from its wire form (:meth:`NodeRecord.to_obj`).

    Checks shapes and types only (raises :class:`RecordError`); call
    :func:`validate_record` (or let :class:`~smegmesh.core.state.MeshState` do
    it) before trusting the content.
    """
    o = _list(obj, "record")
    if len(o) not in (21, 22):
        raise _fail("record", "must have 21 fields (22 with extensions)")
    devices: tuple[SponsoredDevice, ...] = ()
    nat_endpoint: Any = None
    local: tuple[Any, ...] = ()
    if len(o) == 22:
        ext = _list(o[21], "extensions")
        if not ext or len(ext) > 2:
            raise _fail("extensions", "must hold 1 or 2 [tag, value] entries")
        last = 0
        for entry in ext:
            entry = _list(entry, "extensions")
            if len(entry) != 2 or type(entry[0]) is not int or not last < entry[0] <= EXT_NAT:
                raise _fail("extensions", "entries must be [tag, value] with known tags in order")
            last = entry[0]
            if entry[0] == EXT_DEVICES:
                devices = _devices_from_obj(entry[1])
                if not devices:
                    raise _fail("devices", "an empty list is left out of the record")
            else:
                nat = _list(entry[1], "nat")
                if len(nat) != 2:
                    raise _fail("nat", "must be [nat_endpoint, local_endpoints]")
                nat_endpoint = nat[0]
                local = tuple(_list(nat[1], "local_endpoints")[: MAX_LOCAL_ENDPOINTS + 1])
    try:
        role = Role(o[5])
    except (ValueError, TypeError):
        raise _fail("role", "must be 'peer' or 'client'") from None
    services = []
    for s in _list(o[12], "services"):
        s = _list(s, "services")
        if len(s) != 2:
            raise _fail("services", "entries must be [key, value]")
        services.append((s[0], s[1]))
    routes = []
    for r in _list(o[13], "routes"):
        r = _list(r, "routes")
        if len(r) != 2:
            raise _fail("routes", "entries must be [prefix, path]")
        routes.append(RouteAdv(r[0], tuple(_list(r[1], "routes.path"))))
    invites = []
    for g in _list(o[15], "invites"):
        g = _list(g, "invites")
        if len(g) != 4:
            raise _fail("invites", "entries must be [hash, expiry, uses, strict]")
        invites.append(InviteGrant(g[0], g[1], g[2], g[3]))
    admitted = []
    for a in _list(o[16], "admitted"):
        a = _list(a, "admitted")
        if len(a) != 2:
            raise _fail("admitted", "entries must be [hash, joiner]")
        admitted.append(Admission(a[0], a[1]))
    rec = NodeRecord(
        mesh_id=o[0],
        wg_key=o[1],
        sign_key=o[2],
        version=o[3],
        timestamp_ms=o[4],
        role=role,
        wg_endpoint=o[6],
        control_endpoint=o[7],
        tls_fp=o[8],
        address=o[9],
        alias=o[10],
        description=o[11],
        services=tuple(services),
        routes=tuple(routes),
        assigned_peer=o[14],
        invites=tuple(invites),
        admitted=tuple(admitted),
        left=o[17],
        chain=_chain_from_obj(o[18], "chain"),
        proofs=tuple(_proof_from_obj(p) for p in _list(o[19], "proofs")[: MAX_PROOFS + 1]),
        signature=o[20],
        devices=devices,
        nat_endpoint=nat_endpoint,
        local_endpoints=local,
    )
    mesh_id = rec.mesh_id
    if type(mesh_id) is not str:
        raise _fail("mesh_id", "must be a string")
    check_record_fields(rec, mesh_id)
    return rec


def _cert_from_obj(obj: object, name: str) -> Cert:
    try:
        c = auth_from_obj(obj)
    except CertError as e:
        raise _fail(name, str(e)) from None
    if type(c) is not Cert:
        raise _fail(name, "entries must be admission certificates")
    return c


def _chain_from_obj(obj: object, name: str) -> tuple[Cert, ...]:
    raw = _list(obj, name)
    if len(raw) > MAX_CHAIN:
        raise _fail(name, f"at most {MAX_CHAIN} admission certificates")
    return tuple(_cert_from_obj(c, name) for c in raw)


def _devices_from_obj(obj: object) -> tuple[SponsoredDevice, ...]:
    raw = _list(obj, "devices")
    if len(raw) > MAX_DEVICES:
        raise _fail("devices", f"at most {MAX_DEVICES} sponsored devices")
    out = []
    for d in raw:
        d = _list(d, "devices")
        if len(d) != 3:
            raise _fail("devices", "entries must be [key, alias, cert]")
        out.append(SponsoredDevice(d[0], d[1], _cert_from_obj(d[2], "devices.cert")))
    return tuple(out)


def _proof_from_obj(obj: object) -> MembershipProof:
    o = _list(obj, "proofs")
    if len(o) != 2:
        raise _fail("proofs", "entries must be [founding, chain]")
    try:
        f = auth_from_obj(o[0])
    except CertError as e:
        raise _fail("proofs", str(e)) from None
    if type(f) is not Founding:
        raise _fail("proofs", "must start with a founding record")
    return MembershipProof(f, _chain_from_obj(o[1], "proofs.chain"))


def prune_from_obj(obj: object) -> Prune:
    """Build a prune from its wire form (shapes and types checked, not the signature)."""
    o = _list(obj, "prune")
    if len(o) != 9:
        raise _fail("prune", "must have 9 fields")
    o = list(o)
    o[6] = None if o[6] is None else record_from_obj(o[6])
    o[7] = _chain_from_obj(o[7], "by_chain")
    p = Prune(*o)
    if type(p.mesh_id) is not str:
        raise _fail("mesh_id", "must be a string")
    check_prune_fields(p, p.mesh_id)
    return p
