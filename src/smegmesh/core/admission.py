"""Admission and authority commands of the engine (a mixin of ``MeshNode``). Pure.

Invitations, admitting a joiner (``JoinRequest`` -> ``JoinReply`` with an
admission certificate), a joiner's side (``join_request``, ``absorb``), and
the admin statements (evict, admins, alias reservations, policy, token
revocation).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from smegmesh.core.cert import (
    AdminChange,
    AliasReserve,
    AuthItem,
    Cert,
    InviteRevoke,
    Policy,
    PolicyChange,
    Revocation,
)
from smegmesh.core.engine import (
    Call,
    Changed,
    MeshSettings,
    Message,
    NotAllowed,
    OnChanged,
    Out,
    SyncCtx,
    TooManyInvites,
)
from smegmesh.core.gossip import GossipParams
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.invite import Bootstrap, Token, check_admission, new_token, tokens_used
from smegmesh.core.liveness import FailureDetector
from smegmesh.core.messages import JoinReply, JoinRequest, Refusal
from smegmesh.core.paging import page
from smegmesh.core.record import (
    MAX_INVITES,
    Admission,
    InviteGrant,
    NodeRecord,
    Prune,
    RecordError,
    Role,
    check_record_fields,
)
from smegmesh.core.state import MeshState
from smegmesh.core.sync import SyncSession

Item = NodeRecord | Prune | AuthItem

__all__ = ["AdmissionMixin"]


class AdmissionMixin:
    """See the module docstring; ``MeshNode`` provides the state and outputs."""

    identity: NodeIdentity
    mesh_id: str
    settings: MeshSettings
    rng: random.Random
    gossip: GossipParams
    rejected: int
    _fd: FailureDetector
    _pending: NodeRecord | None
    evicted: Revocation | None  # an eviction of us a member showed us (core.evicted)
    #: why the last join this node refused was refused (the adapter logs it;
    #: the joiner is told only "refused": a stranger learns nothing of the mesh)
    last_join_refusal: str = ""

    if TYPE_CHECKING:

        @property
        def key(self) -> bytes: ...  # noqa: D102
        @property
        def mesh(self) -> MeshState: ...  # noqa: D102
        def live_records(self) -> list[NodeRecord]: ...  # noqa: D102
        def start(self, now_ms: int) -> list[Out]: ...  # noqa: D102
        def update_self(self, now_ms: int, **changes: Any) -> list[Out]: ...  # noqa: D102

        _on_changed: OnChanged

        def _push_now(
            self,
            keys: Iterable[bytes],
            exclude: Sequence[bytes],
            now_ms: int,
            full: int | None = None,
            hops: int = 0,
        ) -> list[Out]: ...

        def _maybe_reassign(self, now_ms: int) -> list[Out]: ...

    # -- authority ------------------------------------------------------------------
    @property
    def chain(self) -> tuple[Cert, ...]:
        """This node's admission proof (empty for the founder)."""
        rec = self.mesh.record(self.key)
        return rec.chain if rec is not None else ()

    def is_admin(self, key: bytes | None = None) -> bool:
        """Is ``key`` (default: this node) an admin of the mesh?"""
        return self.mesh.authority.is_admin(self.key if key is None else key)

    def may_admit(self, now_ms: int) -> bool:
        """May this node admit new nodes (policy, or admin) at ``now_ms``?"""
        if not self.mesh.admission:
            return True
        if self.evicted is not None:
            return False
        return self.mesh.authority.member_may_admit(self.key, self.chain, now_ms)

    def _require_admin(self) -> None:
        self._require_not_evicted()
        if not self.is_admin():
            raise NotAllowed("only an admin of this mesh can do that")

    def _require_not_evicted(self) -> None:
        """A node a member showed its eviction (core.evicted) does nothing only a member does."""
        if self.evicted is not None:
            raise NotAllowed(
                "this node was evicted from this mesh by an admin: no member takes "
                "anything from it any more (leave the mesh: smegctl leave-mesh)"
            )

    def _statement(self, st: AuthItem, now_ms: int) -> list[Out]:
        changed, errors = self.mesh.apply_many([st], now_ms)
        if errors:
            raise NotAllowed(str(errors[0]))
        return self._on_changed(changed, now_ms, None)

    def evict(self, now_ms: int, target: bytes, *, cascade: bool = False) -> list[Out]:
        """Publish a revocation of ``target`` (admins only)."""
        self._require_admin()
        if target == self.key:
            raise NotAllowed("a node cannot evict itself (leave the mesh instead)")
        keep = () if cascade else self._admitted_by(target)
        return self._statement(
            Revocation.create(
                self.identity,
                self.mesh_id,
                target=target,
                cascade=cascade,
                keep=keep,
                now_ms=now_ms,
            ),
            now_ms,
        )

    def _admitted_by(self, key: bytes) -> tuple[bytes, ...]:
        """Nodes whose admission ``key`` signed (directly), as far as we know."""
        out: set[bytes] = set()
        for r in self.mesh.records():
            out.update(c.subject for c in r.chain if c.issuer == key)
        return tuple(sorted(out))

    def set_admin(self, now_ms: int, subject: bytes, admin: bool) -> list[Out]:
        """Make ``subject`` an admin, or drop it (admins only).

        Nothing if it already is (or is not) one: a statement more would be gossiped
        to every member.
        """
        self._require_admin()
        if (subject in self.mesh.authority.admins) == admin:
            return []
        if not admin and subject == self.key and not self._other_admin_in_mesh():
            raise NotAllowed("this is the last admin still in the mesh: make another admin first")
        if admin and not self.mesh.is_member(subject):
            raise NotAllowed("only a member of the mesh can be made an admin")
        return self._statement(
            AdminChange.create(
                self.identity, self.mesh_id, subject=subject, admin=admin, now_ms=now_ms
            ),
            now_ms,
        )

    def left_without_admin(self) -> int:
        """How many other live members our leaving now would leave with no admin.

        0: none, or another admin is still in the mesh, or we are no admin.
        Nobody could evict a node or name an admin after, and there is no way back.
        Leaving keeps a node's admin right in the authority: an admin that left
        counts for nothing here; evicted (and told so), we are no admin to lose.
        """
        st, me = self.mesh, self.key
        if not st.admission or self.evicted is not None or me not in st.authority.admins:
            return 0
        if self._other_admin_in_mesh():
            return 0
        return sum(1 for r in self.live_records() if r.wg_key != me)

    def _other_admin_in_mesh(self) -> bool:
        """Is an admin other than us still in the mesh (its record known, not left)?

        Leaving keeps a node's admin right in the authority, so the authority's
        admins alone do not say who could still evict a node or name an admin:
        the rule of both ``left_without_admin`` and ``set_admin``'s last-admin guard.
        """
        st, me = self.mesh, self.key
        others = (st.record(k) for k in st.authority.admins if k != me)
        return any(r is not None and not r.left for r in others)

    def reserve_alias(self, now_ms: int, alias: str, holder: bytes | None) -> list[Out]:
        """Reserve ``alias`` for ``holder`` (None: release it; admins only)."""
        self._require_admin()
        return self._statement(
            AliasReserve.create(
                self.identity,
                self.mesh_id,
                alias=alias,
                holder=holder if holder is not None else bytes(32),
                now_ms=now_ms,
            ),
            now_ms,
        )

    def set_policy(self, now_ms: int, policy: Policy) -> list[Out]:
        """Change who may admit new nodes (admins only)."""
        self._require_admin()
        return self._statement(
            PolicyChange.create(self.identity, self.mesh_id, policy=policy, now_ms=now_ms), now_ms
        )

    def revoke_invite(self, now_ms: int, token_hash_: bytes) -> list[Out]:
        """Revoke a token: its issuer or an admin.

        The issuer speaks in its own record: its grant's uses become 0, which
        every version of smegmesh takes as used up. An admin revoking another
        member's token publishes an :class:`InviteRevoke` statement.
        """
        rec = self.mesh.record(self.key)
        if rec is not None and any(g.token_hash == token_hash_ for g in rec.invites):
            grants = tuple(
                replace(g, uses=0) if g.token_hash == token_hash_ else g for g in rec.invites
            )
            return self.update_self(now_ms, invites=grants)
        if not self.is_admin():
            raise NotAllowed("only the token's issuer or an admin can revoke it")
        return self._statement(
            InviteRevoke.create(self.identity, self.mesh_id, token_hash=token_hash_, now_ms=now_ms),
            now_ms,
        )

    def token_issuer(self, token_hash_: bytes) -> bytes | None:
        """The live member that issued the token with this hash, if known (we first)."""
        rec = self.mesh.record(self.key)
        if rec is not None and any(g.token_hash == token_hash_ for g in rec.invites):
            return self.key
        for r in self.live_records():
            if any(g.token_hash == token_hash_ for g in r.invites):
                return r.wg_key
        return None

    def _may_issue(self, now_ms: int) -> Callable[[NodeRecord], bool] | None:
        """Whether a member's grants count: it may invite now (None: no authority, all may)."""
        if not self.mesh.admission:
            return None
        auth = self.mesh.authority
        return lambda r: auth.member_may_admit(r.wg_key, r.chain, now_ms)

    def invite(
        self,
        now_ms: int,
        *,
        ttl_ms: int,
        uses: int,
        bootstrap: Iterable[Bootstrap],
        secret: bytes,
        strict: bool = False,
    ) -> tuple[Token, list[Out]]:
        """Issue a token with ``secret`` (16 bytes from the caller's cryptographic source)."""
        self._require_not_evicted()
        if not self.may_admit(now_ms):
            raise NotAllowed(
                f"this mesh's invite policy is '{self.mesh.authority.policy}': "
                "this node may not invite (ask an admin)"
            )
        token = new_token(
            self.mesh_id,
            now_ms=now_ms,
            ttl_ms=ttl_ms,
            uses=uses,
            bootstrap=bootstrap,
            secret=secret,
            issuer=self.key if self.mesh.admission else None,
        )
        rec = self.mesh.record(self.key)
        assert rec is not None, "start() first"
        grants = self._outstanding(rec.invites, now_ms)
        if len(grants) >= MAX_INVITES:
            raise TooManyInvites(
                f"{MAX_INVITES} invitations outstanding: revoke one (list-invites, "
                "revoke-invite) or wait until one is used or expires"
            )
        grant = token.grant()
        if strict:
            grant = replace(grant, strict=True)
        grants.append(grant)
        return token, self.update_self(now_ms, invites=tuple(grants))

    def _outstanding(self, grants: Sequence[InviteGrant], now_ms: int) -> list[InviteGrant]:
        """Our grants that may still admit: not expired, revoked or used up.

        A record holds at most ``MAX_INVITES``; the rest make room for a new one
        (review of the authority: the 17th invitation silently dropped the
        first, still valid and unused, and kept the spent and revoked ones).
        """
        auth = self.mesh.authority
        used = tokens_used(self.live_records(), auth.token_subjects, (g.token_hash for g in grants))
        return [
            g
            for g in grants
            if g.expiry_ms > now_ms
            and g.uses > 0
            and len(used[g.token_hash]) < g.uses
            and not auth.token_revoked(g.token_hash, self.key)
        ]

    def _refuse_join(self, reason: str) -> tuple[Message, list[Out]]:
        """A join refused: ``last_join_refusal`` says why, for the adapter's log (not the wire)."""
        self.last_join_refusal = reason
        return Refusal(self.mesh_id), []

    def _admit(self, src: bytes, req: JoinRequest, now_ms: int) -> tuple[Message, list[Out]]:
        st = self.mesh
        auth = st.authority
        # the cheap refusals first: the token lookup hashes per record
        if req.record.wg_key != src:
            return self._refuse_join("its record is not of the key that called")
        if not self.may_admit(now_ms):
            return self._refuse_join("this node may not admit (the invite policy, or evicted)")
        if auth.is_revoked(src):
            return self._refuse_join("it was evicted from this mesh")
        grant, reason = check_admission(
            self.live_records(),
            req.secret,
            src,
            now_ms,
            ledger=auth.token_subjects,
            self_key=self.key,
            revoked=auth.token_revoked,
            may_issue=self._may_issue(now_ms),
        )
        if grant is None:
            return self._refuse_join(reason or "its invitation does not admit it")
        try:
            check_record_fields(req.record, self.mesh_id, memo=st.memo)
        except RecordError as e:
            return self._refuse_join(f"its record: {e.field}: {e}")
        out: list[Out] = []
        chain: tuple[Cert, ...] = ()
        if st.admission:
            current = st.record(src)
            if current is not None and st.admission_error(src, current.chain) is None:
                chain = current.chain  # a retry, or a restart: same admission
            elif (issued := self._issued_before(src, grant.token_hash)) is not None:
                chain = issued  # a join again, before its record came: the same certificate
            else:
                cert = Cert.create(
                    self.identity,
                    self.mesh_id,
                    subject=src,
                    may_admit=auth.may_admit_by_policy(req.record.role == Role.PEER),
                    now_ms=max(now_ms, self.chain[-1].issued_ms if self.chain else 0),
                    token_hash=grant.token_hash,
                    token_expiry_ms=grant.expiry_ms,
                    token_uses=grant.uses,
                )
                chain = (*self.chain, cert)
                out.extend(self._statement(cert, now_ms))  # the token ledger entry
        else:
            try:
                if st.apply(req.record, now_ms):
                    out.append(Changed(frozenset({src})))
                    # new to every member: in full to every target
                    out.extend(self._push_now({src}, (src,), now_ms, full=self.gossip.branch))
            except RecordError as e:
                return self._refuse_join(f"its record: {e.field}: {e}")
            rec = st.record(self.key)
            assert rec is not None
            adm = Admission(grant.token_hash, src)
            if adm not in rec.admitted:
                out.extend(self.update_self(now_ms, admitted=(*rec.admitted, adm)[-64:]))
        self._fd.heard_from(src, now_ms)
        return JoinReply(self.mesh_id, self._join_page(src), chain), out

    def _issued_before(self, src: bytes, token_hash_: bytes) -> tuple[Cert, ...] | None:
        """Our chain and the certificate we gave ``src`` with this token, if it still admits it.

        A joiner's record reaches us only after its join, so a join sent again
        (its reply lost, or replayed by whoever holds the secret) would
        otherwise get a new certificate each time, every one stored and gossiped.
        """
        cert = self.mesh.authority.token_certs.get((token_hash_, src, self.key))
        if cert is None:
            return None
        chain = (*self.chain, cert)
        return chain if self.mesh.admission_error(src, chain) is None else None

    def _join_page(self, joiner: bytes) -> tuple[Item, ...]:
        """One page of the state for a joiner.

        The mesh's authority statements (founding record, admins, evictions:
        every record depends on them), ours and its records, live records next;
        the rest reaches it by anti-entropy (see :meth:`pull_from`).
        """
        statements = [a for a in self.mesh.auth_items() if not isinstance(a, Cert)]
        first = [*statements, *self.mesh.items_for([self.key, joiner])]
        live = [r for r in self.mesh.live_records() if r.wg_key not in (self.key, joiner)]
        rest = self.mesh.all_items()
        seen: set[int] = set()
        ordered: list[Item] = []
        for it in (*first, *live, *rest):
            if id(it) not in seen:
                seen.add(id(it))
                ordered.append(it)
        return tuple(page(ordered, memo=self.mesh.memo)[0])

    def pull_from(self, key: bytes, now_ms: int) -> list[Out]:
        """Start an anti-entropy session with ``key`` now (a joiner, after its join reply)."""
        session = SyncSession.initiator(self.mesh, now_ms, rng=self.rng)
        return [Call(key, session.start(), SyncCtx(session))]

    def join_request(self, secret: bytes, now_ms: int) -> JoinRequest:
        """What a joiner sends to a member: the token's secret and our signed record.

        Our record is created first (not pushed: we know no member yet); the
        member's ``JoinReply`` goes to :meth:`absorb`.
        """
        if self.mesh.admission:
            if self._pending is None:
                self._pending = self._fresh_record(now_ms)
            return JoinRequest(self.mesh_id, secret, self._pending)
        if self.mesh.record(self.key) is None:
            self.start(now_ms)
        own = self.mesh.record(self.key)
        assert own is not None
        return JoinRequest(self.mesh_id, secret, own)

    def _fresh_record(self, now_ms: int) -> NodeRecord:
        s = self.settings
        return NodeRecord.create(
            self.identity,
            self.mesh_id,
            version=now_ms,
            now_ms=now_ms,
            role=s.role,
            wg_endpoint=s.wg_endpoint if s.role == Role.PEER else None,
            control_endpoint=s.control_endpoint if s.role == Role.PEER else None,
            tls_fp=s.tls_fp,
        )

    def absorb(self, items: Iterable[Item], now_ms: int, chain: Sequence[Cert] = ()) -> list[Out]:
        """Take a bulk state transfer (join reply, restore); announce ourselves.

        ``chain``: our admission proof from the member that admitted us.
        """
        # a bulk transfer holds a history of prunes (a long-lived pruner's many):
        # all taken at once, not within a pruner's budget (core.prune_budget)
        budget, self.mesh.prune_budget = self.mesh.prune_budget, None
        try:
            changed, _errors = self.mesh.apply_many(items, now_ms)
        finally:
            self.mesh.prune_budget = budget
        self.rejected += len(_errors)
        if chain or self._pending is not None:
            base = self.mesh.record(self.key) or self._pending or self._fresh_record(now_ms)
            self._pending = None
            rec = base.evolve(self.identity, now_ms, chain=tuple(chain), left=False)
            changed |= self.mesh.apply_many([rec], now_ms)[0]
        out: list[Out] = [Changed(frozenset(changed) | {self.key})]
        if self.settings.role == Role.CLIENT:
            out.extend(self._maybe_reassign(now_ms))
        out.extend(self._push_now({self.key}, (), now_ms, full=self.gossip.branch))
        return out
