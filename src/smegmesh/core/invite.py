"""Invitation tokens (SPEC §4). Pure.

A token is what ``smegctl invite`` prints and ``join-mesh --token`` takes::

    smeg1.<base64url(msgpack([mesh_id, secret, expiry_ms, uses, bootstrap]))>

``secret`` is 16 random bytes. Only its hash (``token_hash``) is published, in
the issuing member's signed record as an ``InviteGrant`` (hash, expiry, uses),
so *every* member can check a token presented to it, and no member's state
leaks a usable token. In a founded mesh the hash is bound to its issuer
(``token_hash(secret, issuer)``): a grant counts only in the record of the
member whose key the hash was made with, so another member copying a public
hash into its own record, with laxer terms, matches no secret. Grants of nodes
of earlier versions (hash of the secret alone) are still honoured, unless two
members list the same one (see :func:`check_admission`). An issuer revokes
its token in its own record (the grant's uses become 0). A member that admits
a joiner signs a certificate naming the token (the token ledger; meshes
without an authority: an ``Admission`` in its own record); a token is spent
when the admissions for it reach ``uses``. Admissions are gossiped like any
other change, so two members admitting concurrently with the last use of a
token can over-admit by the number of racing members: bounded, logged, and
the price of having no central server.

``bootstrap`` lists members to contact: (control endpoint "host:port", their
TLS certificate SHA-256, their WireGuard public key). The fingerprint pins the
TLS connection, so the joiner cannot be sent to an impostor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass

import msgpack

from smegmesh.core.addressing import validate_mesh_id
from smegmesh.core.cert import MAX_TOKEN_TTL_MS, token_expiry_ok
from smegmesh.core.record import InviteGrant, NodeRecord, check_endpoint

PREFIX = "smeg1."
MAX_TOKEN_CHARS = 2048


class TokenError(ValueError):
    """A token that cannot be parsed or is not acceptable."""


@dataclass(frozen=True, slots=True)
class Bootstrap:
    control_endpoint: str
    tls_fp: bytes
    wg_key: bytes


@dataclass(frozen=True, slots=True)
class Token:
    mesh_id: str
    secret: bytes
    expiry_ms: int
    uses: int
    bootstrap: tuple[Bootstrap, ...]
    #: the issuing member's key when the hash is bound to it (not encoded: only
    #: the issuer publishes the hash; a joiner needs the secret alone)
    issuer: bytes | None = None

    @property
    def token_hash(self) -> bytes:
        return token_hash(self.secret, self.issuer)

    def grant(self) -> InviteGrant:
        return InviteGrant(token_hash=self.token_hash, expiry_ms=self.expiry_ms, uses=self.uses)

    def encode(self) -> str:
        body = msgpack.packb(
            [
                self.mesh_id,
                self.secret,
                self.expiry_ms,
                self.uses,
                [[b.control_endpoint, b.tls_fp, b.wg_key] for b in self.bootstrap],
            ],
            use_bin_type=True,
        )
        return PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")


def token_hash(secret: bytes, issuer: bytes | None = None) -> bytes:
    """The published hash of a token's ``secret``: bound to ``issuer``'s key if given.

    Without an issuer: the hash of earlier versions (and of meshes without
    an authority), the same in every member's record that lists it.
    """
    if issuer is None:
        return hashlib.sha256(b"smegmesh/invite/v1\0" + secret).digest()[:16]
    return hashlib.sha256(b"smegmesh/invite/v2\0" + issuer + secret).digest()[:16]


def new_token(
    mesh_id: str,
    *,
    now_ms: int,
    ttl_ms: int,
    uses: int,
    bootstrap: Iterable[Bootstrap],
    secret: bytes,
    issuer: bytes | None = None,
) -> Token:
    """A token for ``mesh_id``.

    ``secret``: 16 random bytes from the caller's cryptographic source (the
    daemon's ``secrets``; a simulation derives them from its seed).
    ``issuer``: the issuing member's key, to bind the hash to (founded meshes).
    """
    if not 0 < ttl_ms <= MAX_TOKEN_TTL_MS:
        raise TokenError("ttl must be positive and at most 365 days")
    if not 1 <= uses <= 1_000_000:
        raise TokenError("uses must be between 1 and 1000000")
    boots = tuple(bootstrap)
    if not boots:
        raise TokenError("a token needs at least one bootstrap endpoint")
    return Token(
        mesh_id=mesh_id,
        secret=secret,
        expiry_ms=now_ms + ttl_ms,
        uses=uses,
        bootstrap=boots[:4],
        issuer=issuer,
    )


def parse_token(text: str) -> Token:
    """Parse a token string; every malformed input raises ``TokenError``."""
    text = text.strip()
    if len(text) > MAX_TOKEN_CHARS or not text.startswith(PREFIX):
        raise TokenError("not a smegmesh invitation token (expected 'smeg1.…')")
    raw = text[len(PREFIX) :]
    try:
        body = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (binascii.Error, ValueError, msgpack.ExtraData, msgpack.FormatError) as e:
        raise TokenError("token is corrupted (bad encoding)") from e
    except Exception as e:  # msgpack raises assorted types on hostile input
        raise TokenError("token is corrupted") from e
    if not (isinstance(obj, list) and len(obj) == 5):
        raise TokenError("token is corrupted (bad structure)")
    mesh_id, secret, expiry, uses, boots = obj
    if not isinstance(mesh_id, str):
        raise TokenError("token is corrupted (mesh id)")
    try:
        validate_mesh_id(mesh_id)
    except ValueError as e:
        raise TokenError(f"token names an invalid mesh id: {e}") from e
    if not (isinstance(secret, bytes) and len(secret) == 16):
        raise TokenError("token is corrupted (secret)")
    if not (isinstance(expiry, int) and isinstance(uses, int) and expiry > 0 and uses > 0):
        raise TokenError("token is corrupted (expiry/uses)")
    if not (isinstance(boots, list) and 1 <= len(boots) <= 4):
        raise TokenError("token is corrupted (bootstrap list)")
    out: list[Bootstrap] = []
    for b in boots:
        if not (isinstance(b, list) and len(b) == 3):
            raise TokenError("token is corrupted (bootstrap entry)")
        ep, fp, key = b
        if not (isinstance(ep, str) and 0 < len(ep) <= 300):
            raise TokenError("token is corrupted (bootstrap endpoint)")
        try:
            check_endpoint(ep)
        except ValueError as e:
            raise TokenError(
                f"token names an invalid bootstrap endpoint {ep[:64]!r}: {e}"
            ) from None
        if not (
            isinstance(fp, bytes) and len(fp) == 32 and isinstance(key, bytes) and len(key) == 32
        ):
            raise TokenError("token is corrupted (bootstrap key)")
        out.append(Bootstrap(ep, fp, key))
    return Token(mesh_id, secret, expiry, uses, tuple(out))


def check_admission(
    records: Iterable[NodeRecord],
    secret: bytes,
    joiner: bytes,
    now_ms: int,
    *,
    ledger: Mapping[bytes, Set[bytes]] | None = None,
    self_key: bytes | None = None,
    revoked: Callable[[bytes, bytes | None], bool] | None = None,
    may_issue: Callable[[NodeRecord], bool] | None = None,
) -> tuple[InviteGrant | None, str]:
    """May a joiner presenting ``secret`` be admitted? Returns (grant, reason).

    The grant is looked up in the records of members that may invite
    (``may_issue``; None: all): the hash bound to the record's owner, or the
    hash of earlier versions. A member's record speaks for that member alone:
    a hash bound to another key in it matches nothing, and an earlier
    version's hash listed by two members is refused (one copied the other's,
    perhaps with laxer terms). Uses are counted over every admission ever
    recorded for the token: the mesh's token ledger (``ledger``: token hash ->
    admitted keys, from the admission certificates every admitter publishes,
    kept until the token expires) plus the admissions listed in records. A
    ``strict`` token is honoured only by its issuer (``self_key``), whose own
    count is exact. ``grant`` is None when refused; ``reason`` says why (for
    our logs only: the joiner is told nothing beyond "refused").
    """
    recs = list(records)
    found = _grants_for(recs, secret, may_issue)
    if not found:
        return None, "unknown token (or issued by a member that may not invite)"
    if len({k for _, k in found}) > 1:
        return None, "token listed by several members"
    issuer = found[0][1]
    grant = _strictest([g for g, _ in found])
    h = grant.token_hash
    if grant.uses == 0 or (revoked is not None and revoked(h, issuer)):
        return None, "token revoked"
    if now_ms >= grant.expiry_ms:
        return None, "token expired"
    if not token_expiry_ok(grant.expiry_ms, now_ms):
        return None, "token lives longer than an invitation may"
    if grant.strict and self_key is not None and issuer != self_key:
        return None, "strict token: only its issuer admits"
    joiners = tokens_used(recs, ledger or {}, (h,))[h]  # a pass over the records: last
    if joiner in joiners:
        return grant, "ok (already admitted: a retry)"
    if len(joiners) >= grant.uses:
        return None, "token used up"
    return grant, "ok"


def tokens_used(
    records: Iterable[NodeRecord], ledger: Mapping[bytes, Set[bytes]], hashes: Iterable[bytes]
) -> dict[bytes, set[bytes]]:
    """Whom each token of ``hashes`` ever admitted.

    The token ledger (hash -> subjects of the admission certificates) and the
    admissions listed in ``records`` (by members of earlier versions). One
    pass over the records.
    """
    used = {h: set(ledger.get(h, ())) for h in hashes}
    for r in records:
        for a in r.admitted:
            if a.token_hash in used:
                used[a.token_hash].add(a.joiner)
    return used


def _grants_for(
    records: Iterable[NodeRecord],
    secret: bytes,
    may_issue: Callable[[NodeRecord], bool] | None,
) -> list[tuple[InviteGrant, bytes]]:
    """(grant, issuer) of each grant of ``secret`` in a record of a member that may invite."""
    legacy = token_hash(secret)
    out: list[tuple[InviteGrant, bytes]] = []
    for r in records:
        if not r.invites:
            continue
        hashes = (token_hash(secret, r.wg_key), legacy)
        mine = [g for g in r.invites if g.token_hash in hashes]
        if mine and (may_issue is None or may_issue(r)):
            out.extend((g, r.wg_key) for g in mine)
    return out


def _strictest(grants: list[InviteGrant]) -> InviteGrant:
    """One grant of the terms of all (a record listing a hash twice gets the strictest)."""
    if len(grants) == 1:
        return grants[0]
    return InviteGrant(
        token_hash=grants[0].token_hash,
        expiry_ms=min(g.expiry_ms for g in grants),
        uses=min(g.uses for g in grants),
        strict=any(g.strict for g in grants),
    )
