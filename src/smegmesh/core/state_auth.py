"""Which authority statements a mesh state keeps, and the authority they make. Pure.

A statement is signed, but a signature says only who made it: anyone can sign
a certificate or an eviction with a key of its own. A state keeps a statement
only if its issuer may make it (review of the authority: until then any
member, a client included, pushed certificates by throwaway keys that spent a
real invitation's uses or filled the cap of certificates, so no node could be
admitted again, and void admin statements, each kept for ever):

* the founding record of the mesh (its id certifies it);
* an admin change, eviction, alias reservation or policy change: its issuer
  is *named* (:attr:`Authority.named`: the founder, or made an admin by an
  admin change of a named node). Named only grows as statements are added,
  so every replica keeps the same statements whatever their order; the
  replay of :class:`~smegmesh.core.authority.Authority` decides what each does;
* a certificate (a token ledger entry): it names a token, its token lives at
  most a year (so the entry is collected), and its issuer is named, or is a
  member whose record (held) lets it admit when the certificate was issued,
  or the certificate is the last link of its subject's held chain;
* an invitation revocation: its issuer is named, or lists the token's hash
  in its own held record (a node of an earlier version revoking its own
  token; this version does that in its record).

A member's ledger entries and revocations are dropped when no held record
vouches for them any more (its record and its subject's purged or
collected), so a replica that comes later, which would not take them, holds
the same. A statement whose issuer is not (yet) known to qualify is *held
back* (not the sender's fault: an admin's statement may come before the
statement that names it, a certificate before its admitter's record) in a
bounded buffer and taken as soon as it qualifies; the rest comes again by
anti-entropy.
Every statement counts toward :data:`MAX_AUTH_ITEMS`, and an issuer that is
not named holds at most a sixteenth of them (a named one has no share: an
admin that evicted many nodes and was dropped later must not find its
evictions refused by a replica that comes later).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from smegmesh.core.authority import Authority, note_token_cert
from smegmesh.core.cert import AdminChange, AuthItem, Cert, Founding, InviteRevoke, token_expiry_ok
from smegmesh.core.record import RecordError
from smegmesh.core.state_store import StateStore

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "MAX_AUTH_ITEMS",
    "PENDING_AUTH",
    "HeldBack",
    "StatementGate",
    "issuer_of",
    "revoke_moot",
    "statements_in_order",
]

#: Authority statements one replica keeps at most (token ledgers are collected
#: when their token has expired; evictions and admin changes are few).
MAX_AUTH_ITEMS = 65_536
#: Statements an issuer that is not an admin holds at most: this share of the cap.
ISSUER_SHARE_DIVISOR = 16
#: Statements held back until their issuer qualifies (the oldest dropped first).
PENDING_AUTH = 256


class HeldBack(RecordError):
    """A statement whose issuer is not known to qualify (yet): no fault of its sender."""

    def __init__(self) -> None:
        super().__init__("issuer", "not known to be allowed to make this statement (held back)")


def issuer_of(item: AuthItem) -> bytes:
    """The key of whoever made ``item`` (the founder for a founding record)."""
    return item.founder if isinstance(item, Founding) else item.issuer


class StatementGate(StateStore):
    """The statements half of the admission gate (see the module docstring)."""

    admission: bool
    _auth_count: int
    #: statements held per issuer key (for the share of an issuer not named)
    _issuer_counts: dict[bytes, int]
    #: statements held back until their issuer qualifies (bounded, oldest first out)
    _pending_auth: dict[bytes, AuthItem]
    #: the authority is rebuilt once at the end of a batch, not once per statement
    _defer_rebuild: bool
    _rebuild_due: bool
    _purged: set[bytes]

    if TYPE_CHECKING:

        def _verify_statement(self, item: AuthItem) -> bool: ...

    # -- the gate -------------------------------------------------------------------

    def _gate_statement(self, item: AuthItem) -> None:
        """Raise :class:`RecordError` unless ``item`` may enter (:class:`HeldBack`: not yet)."""
        if isinstance(item, Founding):
            return  # the mesh id certifies it (checked with the fields)
        if self._auth_count >= MAX_AUTH_ITEMS:
            raise RecordError("auth", "too many authority statements")
        a = self._authority
        if isinstance(item, Cert):
            if not item.token_hash:
                raise RecordError("token_hash", "a certificate without a token is no ledger entry")
            if not token_expiry_ok(item.token_expiry_ms, item.issued_ms):
                raise RecordError("token_expiry_ms", "an invitation lives at most a year")
        if item.issuer in a.named:
            return  # no share: named only grows, so every replica takes the same
        if not self._vouched(item):
            self._hold_back(item)
            raise HeldBack()
        if self._issuer_counts.get(item.issuer, 0) >= MAX_AUTH_ITEMS // ISSUER_SHARE_DIVISOR:
            raise RecordError("issuer", "holds its share of the mesh's authority statements")

    def _vouched(self, item: AuthItem) -> bool:
        """A statement of an issuer not named: a member's certificate or own revocation."""
        if isinstance(item, Cert):
            rec = self.get(item.issuer)
            if rec is not None and self._authority.member_may_admit(
                item.issuer, rec.chain, item.issued_ms
            ):
                return True
            sub = self.get(item.subject)
            return sub is not None and bool(sub.chain) and sub.chain[-1].key == item.key
        if isinstance(item, InviteRevoke):
            rec = self.get(item.issuer)
            return rec is not None and any(g.token_hash == item.token_hash for g in rec.invites)
        return False

    def _hold_back(self, item: AuthItem) -> None:
        pending = self._pending_auth
        pending.pop(item.key, None)
        pending[item.key] = item
        while len(pending) > PENDING_AUTH:
            del pending[next(iter(pending))]

    def _take_held_back(self) -> set[bytes]:
        """Take the held-back statements that now qualify; returns their keys.

        Again while one is taken (it may name the issuer of another).
        """
        taken: set[bytes] = set()
        progress = True
        while progress and self._pending_auth:
            progress = False
            with self._rebuild_once():  # each pass judges by the authority the last one left
                for key, item in list(self._pending_auth.items()):
                    if key in self._entries:
                        self._pending_auth.pop(key, None)
                        continue
                    try:
                        self._gate_statement(item)
                    except HeldBack:
                        continue
                    except RecordError:
                        self._pending_auth.pop(key, None)
                        continue
                    self._pending_auth.pop(key, None)
                    if self._verify_statement(item):
                        self._put_statement(item)
                        taken.add(key)
                        progress = True
        return taken

    @contextmanager
    def _rebuild_once(self) -> Iterator[None]:
        """Statements put inside rebuild the authority once, at the end (a founding at once).

        Nested, the outermost rebuilds.
        """
        outer = self._defer_rebuild
        self._defer_rebuild = True
        try:
            yield
        finally:
            self._defer_rebuild = outer
            if not outer and self._rebuild_due:
                self._rebuild_authority()

    # -- holding and the authority ---------------------------------------------------

    def _put_statement(self, item: AuthItem) -> None:
        self._install(item.key, None, None, item)
        self._auth_count += 1
        k = issuer_of(item)
        self._issuer_counts[k] = self._issuer_counts.get(k, 0) + 1
        self._on_statement(item)

    def _drop_statement(self, key: bytes, item: AuthItem) -> None:
        """Forget a held statement (garbage collection)."""
        self._install(key, None, None, None)
        self._auth_count -= 1
        k = issuer_of(item)
        n = self._issuer_counts.get(k, 0) - 1
        if n > 0:
            self._issuer_counts[k] = n
        else:
            self._issuer_counts.pop(k, None)

    def _on_statement(self, item: AuthItem) -> None:
        a = self._authority
        if isinstance(item, Cert):
            note_token_cert(a, item)
            return
        if isinstance(item, InviteRevoke):
            a.invite_revokes.setdefault(item.token_hash, []).append(item)
            return
        if isinstance(item, AdminChange) and item.admin and item.issuer in a.named:
            a.named.add(item.subject)  # at once: later statements of the batch may need it
        if self._defer_rebuild and not isinstance(item, Founding):
            self._rebuild_due = True
            return
        self._rebuild_authority()

    def _rebuild_authority(self) -> None:
        """The authority from every statement held; purge what it no longer admits.

        Whenever anything a chain's verdict depends on changed (review of the
        authority: only a new founding record or a new evicted key purged, so
        after a policy change, a second eviction with ``cascade`` or a voided
        promotion, replicas that held the records kept them and replicas that
        got the statement first refused them, for good).
        """
        self._rebuild_due = False
        before = self._authority.chain_facts()
        self._authority = Authority.build(self.mesh_id, self._iter_auth())
        if self._authority.chain_facts() != before:
            self._purge()
            self._drop_unvouched()

    def _iter_auth(self) -> Iterator[AuthItem]:
        for e in self._entries.values():
            if e.auth is not None:
                yield e.auth

    def _purge(self) -> None:
        """Drop records and prunes the authority no longer admits (evictions, policy, admins)."""
        if not self.admission:
            return
        a = self._authority
        for key, e in list(self._entries.items()):
            rec, pr = e.record, e.prune
            if rec is not None and a.check_chain(rec.wg_key, rec.chain) is not None:
                rec = None
            if pr is not None and (
                a.check_chain(pr.by_wg_key, pr.by_chain) is not None or a.is_revoked(pr.target)
            ):
                pr = None
            if rec is not e.record or pr is not e.prune:
                self._install(key, rec, pr)
                self._purged.add(key)

    def _drop_unvouched(self) -> int:
        """Drop the ledger entries and revocations of members no held record vouches for.

        Their issuer's record was purged (an eviction, a policy change) or
        collected, and so was their subject's: a replica that comes later
        would not take them, so none keeps them (the states stay equal).
        Returns how many were dropped; the authority is rebuilt if any was.
        """
        if not self.admission:
            return 0
        named = self._authority.named
        gone = [
            (key, e.auth)
            for key, e in self._entries.items()
            if isinstance(e.auth, (Cert, InviteRevoke))
            and e.auth.issuer not in named
            and not self._vouched(e.auth)
        ]
        for key, item in gone:
            self._drop_statement(key, item)
        if gone:
            self._authority = Authority.build(self.mesh_id, self._iter_auth())
        return len(gone)

    def pop_purged(self) -> set[bytes]:
        """Keys whose items the authority stopped admitting (an eviction...) since the last call."""
        out, self._purged = self._purged, set()
        return out


def revoke_moot(r: InviteRevoke, cutoff_ms: int) -> bool:
    """Has every token ``r`` can revoke expired by ``cutoff_ms``?

    Then it is collected: a token lives at most a year, and is issued before
    it is revoked.
    """
    return not token_expiry_ok(cutoff_ms, r.issued_ms)


def statements_in_order(items: Sequence[AuthItem]) -> list[AuthItem]:
    """Founding first, then admin statements in time order, certificates last.

    Certificates are judged by the authority the other statements make and by
    the records, which the caller applies before them when it can.
    """
    return sorted(
        items,
        key=lambda a: (not isinstance(a, Founding), isinstance(a, Cert), a.timestamp_ms),
    )
