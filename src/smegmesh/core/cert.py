"""Signed authority statements of a mesh: founding, admissions, admins, evictions. Pure.

Every statement is a small frozen dataclass signed with Ed25519 like a node
record (``TAG + msgpack(fields)``); each has a 32-byte :attr:`key` (a hash of
its signed form) under which :class:`~smegmesh.core.state.MeshState` keeps it,
so statements are replicated by the same gossip and anti-entropy as records.

* :class:`Founding`: the mesh's birth certificate, signed by its creator (the
  first admin). The mesh id is *self-certifying*: ``NAME-SUFFIX`` where SUFFIX
  is 13 base32 characters (65 bits) of SHA-256 over the founding fields, so
  anyone holding a mesh id can check a founding record presented for it,
  without trusting whoever presented it (:func:`mesh_id_for`).
* :class:`Cert`: "``issuer`` admitted ``subject``" (with the token used, if
  any). A node's record carries the chain of certs from the founder down to
  itself (see :mod:`smegmesh.core.authority` for the rules).
* :class:`AdminChange`: an admin makes a node an admin, or drops one.
* :class:`Revocation`: an admin evicts a node (``cascade``: with every node
  it admitted; otherwise ``keep`` lists the nodes it admitted that stay).
* :class:`InviteRevoke`: a token revoked (by its issuer or an admin).
* :class:`AliasReserve`: an admin reserves an alias for a node (or releases
  it: ``holder`` all zeros).
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from functools import cached_property
from typing import Any, ClassVar, Self

import msgpack

from smegmesh.core.addressing import InvalidMeshId, validate_mesh_id
from smegmesh.core.identity import NodeIdentity, verify_signature, x25519_matches_ed25519
from smegmesh.core.signed import Signed

__all__ = [
    "AUTH_TYPES",
    "MAX_CHAIN",
    "MAX_KEEP",
    "MAX_TOKEN_TTL_MS",
    "SUFFIX_LEN",
    "AdminChange",
    "AliasReserve",
    "AuthItem",
    "Cert",
    "CertError",
    "Founding",
    "InviteRevoke",
    "Policy",
    "PolicyChange",
    "Revocation",
    "Signed",
    "check_auth_fields",
    "founding_name",
    "mesh_id_for",
    "token_expiry_ok",
    "verify_auth",
]

SUFFIX_LEN = 13  # base32 characters of the founding hash in the mesh id (65 bits)
MAX_CHAIN = 32  # admission depth (founder -> ... -> node)
MAX_KEEP = 4096  # nodes admitted by an evicted node that a revocation keeps
#: An invitation lives at most a year (``smegctl invite --ttl``): a token
#: ledger entry (a cert with a token) says when its token expires, no later
#: than this after it was issued, so every entry is collected in time
MAX_TOKEN_TTL_MS = 365 * 86_400_000
_TOKEN_SLACK_MS = 10 * 60 * 1000  # the clocks of issuer and admitter may differ
_MAX_U63 = 2**63
_ZERO_KEY = bytes(32)
_NAME_MAX = 63 - 1 - SUFFIX_LEN


class Policy(enum.StrEnum):
    """Who may admit new nodes (``new-mesh --invite-policy``)."""

    ADMINS = "admins"
    PEERS = "peers"
    MEMBERS = "members"


class CertError(ValueError):
    """A malformed or forged authority statement."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class _Auth(Signed):
    _KIND: ClassVar[int]

    @cached_property
    def key(self) -> bytes:
        """The statement's id in the mesh state (never a node key: tagged hash)."""
        return hashlib.sha256(b"smegmesh/auth-key/v1\0" + self._payload + self.signature).digest()

    @property
    def signer(self) -> bytes:
        raise NotImplementedError

    @property
    def timestamp_ms(self) -> int:
        raise NotImplementedError


class _Issued(_Auth):
    """A statement signed by ``issuer_sign`` at ``issued_ms``."""

    issuer_sign: bytes
    issued_ms: int

    @classmethod
    def create(cls, identity: NodeIdentity, mesh_id: str, *, now_ms: int, **fields: Any) -> Self:
        """Sign a new statement of this class by ``identity`` at ``now_ms``.

        ``fields``: the statement's own fields (between ``mesh_id`` and
        ``issuer``), normalised by :meth:`_normalise`; checked before signing.
        """
        unsigned = cls(  # type: ignore[call-arg]
            mesh_id=mesh_id,
            **cls._normalise(fields),
            issuer=identity.wg_public_key,
            issuer_sign=identity.sign_public_key,
            issued_ms=now_ms,
            signature=b"",
        )
        cls._check(unsigned, mesh_id)
        return _sign(identity, unsigned)  # type: ignore[no-any-return]

    @classmethod
    def _normalise(cls, fields: dict[str, Any]) -> dict[str, Any]:
        return fields

    def fields_obj(self) -> list[Any]:
        """Every field but the signature, in declaration order (= wire order)."""
        return [_plain(getattr(self, n)) for n in _unsigned_names(type(self))]  # type: ignore[arg-type]

    @classmethod
    def _check(cls, unsigned: Any, mesh_id: str) -> None:
        _check_common(unsigned, mesh_id, sig=False)

    @property
    def signer(self) -> bytes:
        return self.issuer_sign

    @property
    def timestamp_ms(self) -> int:
        return self.issued_ms


@functools.cache
def _unsigned_names(cls: type) -> tuple[str, ...]:
    """A statement class's field names but the last (the signature), cached.

    A pure function of the class: ``dataclasses.fields`` was 4 % of a busy
    daemon's CPU, called for every certificate of every record encoded.
    """
    return tuple(f.name for f in dataclass_fields(cls))[:-1]


def _sign(identity: NodeIdentity, unsigned: Any) -> Any:
    return replace(unsigned, signature=identity.sign(unsigned.signed_payload()))


def _plain(v: object) -> object:
    """A field value as msgpack-able data (tuples as lists, a policy as its name)."""
    if isinstance(v, Policy):
        return str(v)
    return list(v) if isinstance(v, tuple) else v


def _b32(b: bytes) -> str:
    return base64.b32encode(b).decode("ascii").lower()


def mesh_id_for(name: str, founder_sign: bytes, created_ms: int, policy: str) -> str:
    """The self-certifying mesh id of a founding record with these fields."""
    body = msgpack.packb([name, founder_sign, created_ms, str(policy)], use_bin_type=True)
    digest = hashlib.sha256(b"smegmesh/mesh-id/v1\0" + body).digest()
    return f"{name}-{_b32(digest)[:SUFFIX_LEN]}"


def founding_name(mesh_id: str) -> str | None:
    """The name part of a self-certifying mesh id, or None for another id."""
    name, sep, suffix = mesh_id.rpartition("-")
    if not sep or not name or len(suffix) != SUFFIX_LEN:
        return None
    return name


@dataclass(frozen=True)
class Founding(_Auth):
    _TAG: ClassVar[bytes] = b"smegmesh/founding/v1\0"
    _KIND: ClassVar[int] = 1

    name: str
    founder_sign: bytes
    founder: bytes  # the founder's WireGuard key (X25519 form of founder_sign)
    created_ms: int
    policy: Policy
    signature: bytes = field(repr=False)

    @classmethod
    def create(
        cls, identity: NodeIdentity, name: str, *, now_ms: int, policy: Policy = Policy.PEERS
    ) -> Founding:
        unsigned = cls(
            name,
            identity.sign_public_key,
            identity.wg_public_key,
            now_ms,
            Policy(policy),
            b"",
        )
        _check_founding(unsigned, None, sig=False)
        return _sign(identity, unsigned)  # type: ignore[no-any-return]

    @cached_property
    def mesh_id(self) -> str:
        return mesh_id_for(self.name, self.founder_sign, self.created_ms, self.policy)

    @property
    def signer(self) -> bytes:
        return self.founder_sign

    @property
    def timestamp_ms(self) -> int:
        return self.created_ms

    def fields_obj(self) -> list[Any]:
        return [self.name, self.founder_sign, self.founder, self.created_ms, str(self.policy)]


@dataclass(frozen=True)
class Cert(_Issued):
    """``issuer`` admitted ``subject`` into ``mesh_id`` (optionally with a token)."""

    _TAG: ClassVar[bytes] = b"smegmesh/cert/v1\0"
    _KIND: ClassVar[int] = 2

    mesh_id: str
    subject: bytes  # WireGuard key of the admitted node
    issuer: bytes  # WireGuard key of the admitting node
    issuer_sign: bytes
    token_hash: bytes  # 16 bytes, or b"" when admitted without a token
    token_expiry_ms: int  # 0 without a token
    token_uses: int  # the token's use limit (0 without a token)
    may_admit: bool  # the subject may admit others (policy at admission)
    issued_ms: int
    signature: bytes = field(repr=False)

    @classmethod
    def _normalise(cls, fields: dict[str, Any]) -> dict[str, Any]:
        return {"token_hash": b"", "token_expiry_ms": 0, "token_uses": 0, **fields}

    @classmethod
    def _check(cls, unsigned: Any, mesh_id: str) -> None:
        _check_cert(unsigned, mesh_id, sig=False)


@dataclass(frozen=True)
class AdminChange(_Issued):
    _TAG: ClassVar[bytes] = b"smegmesh/admin/v1\0"
    _KIND: ClassVar[int] = 3

    mesh_id: str
    subject: bytes
    admin: bool
    issuer: bytes
    issuer_sign: bytes
    issued_ms: int
    signature: bytes = field(repr=False)


@dataclass(frozen=True)
class Revocation(_Issued):
    _TAG: ClassVar[bytes] = b"smegmesh/revoke/v1\0"
    _KIND: ClassVar[int] = 4

    mesh_id: str
    target: bytes
    cascade: bool
    keep: tuple[bytes, ...]  # nodes admitted by target that stay (ignored with cascade)
    issuer: bytes
    issuer_sign: bytes
    issued_ms: int
    signature: bytes = field(repr=False)

    @classmethod
    def _normalise(cls, fields: dict[str, Any]) -> dict[str, Any]:
        keep = () if fields["cascade"] else tuple(sorted(set(fields.get("keep", ()))))[:MAX_KEEP]
        return {**fields, "keep": keep}

    @property
    def subject(self) -> bytes:
        return self.target


@dataclass(frozen=True)
class InviteRevoke(_Issued):
    _TAG: ClassVar[bytes] = b"smegmesh/invite-revoke/v1\0"
    _KIND: ClassVar[int] = 5

    mesh_id: str
    token_hash: bytes
    issuer: bytes
    issuer_sign: bytes
    issued_ms: int
    signature: bytes = field(repr=False)

    @property
    def subject(self) -> bytes:
        return _ZERO_KEY


@dataclass(frozen=True)
class AliasReserve(_Issued):
    _TAG: ClassVar[bytes] = b"smegmesh/alias-reserve/v1\0"
    _KIND: ClassVar[int] = 6

    mesh_id: str
    alias: str
    holder: bytes  # all zeros: release the reservation
    issuer: bytes
    issuer_sign: bytes
    issued_ms: int
    signature: bytes = field(repr=False)

    @property
    def subject(self) -> bytes:
        return self.holder


@dataclass(frozen=True)
class PolicyChange(_Issued):
    """An admin changes who may admit new nodes (affects admissions from then on)."""

    _TAG: ClassVar[bytes] = b"smegmesh/policy/v1\0"
    _KIND: ClassVar[int] = 7

    mesh_id: str
    policy: Policy
    issuer: bytes
    issuer_sign: bytes
    issued_ms: int
    signature: bytes = field(repr=False)

    @classmethod
    def _normalise(cls, fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, "policy": Policy(fields["policy"])}

    @property
    def subject(self) -> bytes:
        return _ZERO_KEY


AuthItem = Founding | Cert | AdminChange | Revocation | InviteRevoke | AliasReserve | PolicyChange
AUTH_TYPES: tuple[type, ...] = (
    Founding,
    Cert,
    AdminChange,
    Revocation,
    InviteRevoke,
    AliasReserve,
    PolicyChange,
)


def token_expiry_ok(expiry_ms: int, at_ms: int) -> bool:
    """Does a token expiring at ``expiry_ms`` live at most a year after ``at_ms``?"""
    return expiry_ms <= at_ms + MAX_TOKEN_TTL_MS + _TOKEN_SLACK_MS


# --------------------------------------------------------------------------- checks


def _bytes(name: str, v: object, n: int) -> None:
    if type(v) is not bytes or len(v) != n:
        raise CertError(name, f"must be {n} bytes")


def _uint(name: str, v: object, bound: int = _MAX_U63) -> None:
    if type(v) is not int or not 0 <= v < bound:
        raise CertError(name, f"must be an integer in [0, {bound})")


def _bool(name: str, v: object) -> None:
    if type(v) is not bool:
        raise CertError(name, "must be a boolean")


def _mesh(v: object, expected: str | None) -> None:
    if type(v) is not str:
        raise CertError("mesh_id", "must be a string")
    try:
        validate_mesh_id(v)
    except InvalidMeshId as e:
        raise CertError("mesh_id", str(e)) from None
    if expected is not None and v != expected:
        raise CertError("mesh_id", f"statement is for mesh {v!r}, not {expected!r}")


def _check_founding(f: Founding, mesh_id: str | None, *, sig: bool) -> None:
    if type(f.name) is not str or not 1 <= len(f.name) <= _NAME_MAX:
        raise CertError("name", f"must be 1-{_NAME_MAX} characters")
    try:
        validate_mesh_id(f.name)
    except InvalidMeshId:
        raise CertError("name", "must be a DNS label of [a-z0-9-]") from None
    _bytes("founder_sign", f.founder_sign, 32)
    _bytes("founder", f.founder, 32)
    _uint("created_ms", f.created_ms)
    if not isinstance(f.policy, Policy):
        raise CertError("policy", "must be admins, peers or members")
    if not x25519_matches_ed25519(f.founder, f.founder_sign):
        raise CertError("founder", "is not the X25519 form of founder_sign")
    if mesh_id is not None and f.mesh_id != mesh_id:
        raise CertError("founding", f"does not certify mesh id {mesh_id!r}")
    if sig:
        _bytes("signature", f.signature, 64)


def _check_common(a: Any, mesh_id: str | None, *, sig: bool) -> None:
    _mesh(a.mesh_id, mesh_id)
    _bytes("issuer", a.issuer, 32)
    _bytes("issuer_sign", a.issuer_sign, 32)
    _uint("issued_ms", a.issued_ms)
    if not x25519_matches_ed25519(a.issuer, a.issuer_sign):
        raise CertError("issuer", "is not the X25519 form of issuer_sign")
    if isinstance(a, AdminChange):
        _bytes("subject", a.subject, 32)
        _bool("admin", a.admin)
    elif isinstance(a, Revocation):
        _bytes("target", a.target, 32)
        _bool("cascade", a.cascade)
        if type(a.keep) is not tuple or len(a.keep) > MAX_KEEP:
            raise CertError("keep", f"at most {MAX_KEEP} keys")
        for k in a.keep:
            _bytes("keep", k, 32)
    elif isinstance(a, InviteRevoke):
        _bytes("token_hash", a.token_hash, 16)
    elif isinstance(a, PolicyChange):
        if not isinstance(a.policy, Policy):
            raise CertError("policy", "must be admins, peers or members")
    elif isinstance(a, AliasReserve):
        if type(a.alias) is not str:
            raise CertError("alias", "must be a string")
        from smegmesh.core.record import ALIAS_RE  # local: record imports this module

        if ALIAS_RE.fullmatch(a.alias) is None:
            raise CertError("alias", "must be a DNS label (1-63 of [a-z0-9-])")
        _bytes("holder", a.holder, 32)
    if sig:
        _bytes("signature", a.signature, 64)


def _check_cert(c: Cert, mesh_id: str | None, *, sig: bool) -> None:
    _mesh(c.mesh_id, mesh_id)
    _bytes("subject", c.subject, 32)
    _bytes("issuer", c.issuer, 32)
    _bytes("issuer_sign", c.issuer_sign, 32)
    if type(c.token_hash) is not bytes or len(c.token_hash) not in (0, 16):
        raise CertError("token_hash", "must be empty or 16 bytes")
    _uint("token_expiry_ms", c.token_expiry_ms)
    _uint("token_uses", c.token_uses, 2**32)
    _bool("may_admit", c.may_admit)
    _uint("issued_ms", c.issued_ms)
    if c.subject == c.issuer:
        raise CertError("subject", "a node cannot admit itself")
    if not x25519_matches_ed25519(c.issuer, c.issuer_sign):
        raise CertError("issuer", "is not the X25519 form of issuer_sign")
    if sig:
        _bytes("signature", c.signature, 64)


def check_auth_fields(a: object, mesh_id: str | None) -> None:
    """Shape checks of any authority statement (no signature check)."""
    if type(a) is Founding:
        _check_founding(a, mesh_id, sig=True)
    elif type(a) is Cert:
        _check_cert(a, mesh_id, sig=True)
    elif type(a) in (AdminChange, Revocation, InviteRevoke, AliasReserve, PolicyChange):
        _check_common(a, mesh_id, sig=True)
    else:
        raise CertError("auth", f"not an authority statement: {type(a).__name__}")


def verify_auth(a: AuthItem, mesh_id: str | None) -> None:
    """Shape and signature checks; raises :class:`CertError`."""
    check_auth_fields(a, mesh_id)
    if not verify_signature(a.signer, a.signed_payload(), a.signature):
        raise CertError("signature", "invalid signature")
