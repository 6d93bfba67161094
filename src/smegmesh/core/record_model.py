"""The signed record classes: :class:`NodeRecord` and :class:`Prune`, and their checks.

Only a node writes its own :class:`NodeRecord`; it is signed with the node's
Ed25519 key and the WireGuard key (node id) must be the Montgomery form of that
signing key, so nobody can publish a record for another node. A
:class:`Prune` is a signed statement by any member that every record of
``target`` with ``version <= target_version`` is dead (failure detection).
Field limits and value types live in :mod:`smegmesh.core.record_fields`; the
public import path is :mod:`smegmesh.core.record`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

from smegmesh.core.addressing import overlay_address
from smegmesh.core.cert import Cert
from smegmesh.core.certwire import auth_to_obj
from smegmesh.core.identity import NodeIdentity, verify_signature, x25519_matches_ed25519
from smegmesh.core.memo import ItemMemo
from smegmesh.core.record_fields import (
    ALIAS_RE,
    EXT_DEVICES,
    EXT_NAT,
    MAX_DESCRIPTION_BYTES,
    MAX_RECORD_BYTES,
    PRUNE_TAG,
    RECORD_TAG,
    Admission,
    InviteGrant,
    MembershipProof,
    RecordError,
    Role,
    RouteAdv,
    SponsoredDevice,
    _check_admitted,
    _check_bytes,
    _check_chain_shape,
    _check_devices,
    _check_endpoint_field,
    _check_invites,
    _check_local_endpoints,
    _check_mesh_id,
    _check_proofs,
    _check_routes,
    _check_services,
    _check_uint,
    _fail,
    _services_tuple,
)
from smegmesh.core.signed import Signed

__all__ = [
    "NodeRecord",
    "Prune",
    "check_prune_fields",
    "check_record_fields",
    "validate_prune",
    "validate_record",
]


#: Indexes of fields in a record's wire form (:meth:`NodeRecord.to_obj`), for
#: the forms that leave some out or send only some (``core.elide``, ``core.delta``).
WIRE_MESH, WIRE_KEY, WIRE_SIGN_KEY, WIRE_VERSION, WIRE_TIME = 0, 1, 2, 3, 4
WIRE_ADDRESS, WIRE_CHAIN, WIRE_SIGNATURE = 9, 18, 20


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
        """Build, check and sign a prune of ``target`` (or of ``target_record``'s owner)."""
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
        """The msgpack-able list of all fields but the signature (canonical order)."""
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


def check_record_fields(
    rec: NodeRecord,
    mesh_id: str,
    *,
    check_signature_len: bool = True,
    memo: ItemMemo | None = None,
) -> None:
    """Every check of :func:`validate_record` except the signature itself.

    With ``memo``, an object that already passed for ``mesh_id`` is not checked
    again, and one that passes is noted there.
    """
    if type(rec) is not NodeRecord:
        raise _fail("record", "not a NodeRecord")
    if check_signature_len and memo is not None and memo.checked_for(rec) == mesh_id:
        return  # this (immutable) object already passed for this mesh
    _check_content(rec, mesh_id)
    if check_signature_len:
        _check_bytes("signature", rec.signature, 64)
        if memo is not None:
            memo.note_checked(rec, mesh_id)


def _check_content(rec: NodeRecord, mesh_id: str) -> None:
    """The field checks of a record, but for its signature's length."""
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
    _check_services(rec.services)
    _check_routes(rec.routes)
    _check_bytes("assigned_peer", rec.assigned_peer, 32, optional=True)
    _check_chain_shape("chain", rec.chain, mesh_id)
    _check_endpoint_field("nat_endpoint", rec.nat_endpoint)
    _check_local_endpoints(rec.local_endpoints)
    _check_proofs(rec.proofs)
    _check_invites(rec.invites)
    _check_admitted(rec.admitted)
    if type(rec.left) is not bool:
        raise _fail("left", "must be a boolean")
    _check_devices(rec, mesh_id)
    if type(rec.address) is not str or rec.address != str(overlay_address(mesh_id, rec.wg_key)):
        raise _fail("address", "does not match the mesh prefix and the node's key")
    if not x25519_matches_ed25519(rec.wg_key, rec.sign_key):
        raise _fail("wg_key", "is not the X25519 form of sign_key")
    if len(rec.signed_payload()) > MAX_RECORD_BYTES:
        raise _fail("record", f"larger than {MAX_RECORD_BYTES} bytes")


def validate_record(rec: NodeRecord, mesh_id: str) -> None:
    """Raise :class:`RecordError` unless ``rec`` is a valid, authentic record of ``mesh_id``."""
    check_record_fields(rec, mesh_id)
    if not verify_signature(rec.sign_key, rec.signed_payload(), rec.signature):
        raise _fail("signature", "invalid signature")


def check_prune_fields(
    p: Prune,
    mesh_id: str,
    *,
    check_signature_len: bool = True,
    memo: ItemMemo | None = None,
) -> None:
    """Every check of :func:`validate_prune` except the signature itself.

    ``memo``: as for :func:`check_record_fields` (for the target's record).
    """
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
        check_record_fields(
            p.target_record, mesh_id, check_signature_len=check_signature_len, memo=memo
        )
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
