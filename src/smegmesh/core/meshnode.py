"""One node's membership of one mesh: the protocol engine. Pure (sans-I/O).

The daemon and the simulator both drive this class through the shared driver
(:mod:`smegmesh.core.driver`); neither contains protocol logic of its own.
Inputs are typed values with the current time, given to :meth:`MeshNode.step`;
outputs are ``Call`` (send this request to that member; report the reply or
the failure back), ``Respond`` (the reply to a request) and ``Changed`` (these
node keys changed: update WireGuard, DNS...); see :mod:`smegmesh.core.engine`.
Local commands outside that set (admin statements, invitations, joins) are
methods returning the same outputs.

What it does:

* owns this node's signed record (creates it, re-signs on change, refutes a
  prune of itself by publishing a newer version);
* gossip (``core.gossip``): triggered push of fresh items, infection rounds,
  background pull through digest anti-entropy (``core.sync``);
* failure detection (``core.liveness``): probes, suspicion, and a signed prune
  when a member is dead; clients ping their assigned peer, which watches them;
* admission of joiners holding a valid invitation (``core.invite``);
* client assignment (``core.desired.assigned_peer``) and re-assignment when
  the client's peer stops answering.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

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
from smegmesh.core.desired import assigned_peer
from smegmesh.core.engine import (
    Call,
    CallCtx,
    CallFailed,
    Changed,
    Input,
    Message,
    Out,
    PeerPingCtx,
    ProbeCtx,
    PushCtx,
    RelayCtx,
    ReplyReceived,
    RequestReceived,
    Respond,
    Start,
    SyncCtx,
    TimerFired,
    UpdateSelf,
)
from smegmesh.core.gossip import GossipParams, GossipScheduler
from smegmesh.core.hashing import ranked
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.invite import (
    Bootstrap,
    Token,
    check_admission,
    new_token,
    token_hash,
)
from smegmesh.core.liveness import (
    Dead,
    FailureDetector,
    LivenessParams,
)
from smegmesh.core.liveness import (
    Ping as ProbePing,
)
from smegmesh.core.liveness import (
    PingReq as ProbePingReq,
)
from smegmesh.core.messages import Ack, JoinReply, JoinRequest, Ping, PingReq, Refusal
from smegmesh.core.paging import PAGE_BYTES, page, pages
from smegmesh.core.record import (
    Admission,
    NodeRecord,
    Prune,
    RecordError,
    Role,
    check_record_fields,
)
from smegmesh.core.state import MeshState
from smegmesh.core.sync import Push, SyncEnd, SyncSession, SyncStart, SyncStep

__all__ = [
    "Call",
    "Changed",
    "MeshNode",
    "MeshSettings",
    "NotAllowed",
    "Out",
    "Respond",
]

Item = NodeRecord | Prune | AuthItem


class NotAllowed(Exception):
    """This node may not do that in this mesh (not an admin, policy)."""


#: Probability that a background pull goes to a pruned (not departed) member.
PULL_PRUNED_CHANCE = 0.25
#: At most one heal session per pruned member this often (see ``_heard_from_pruned``).
HEAL_INTERVAL_MS = 3_000
#: Members remembered for that bound (older entries are dropped first).
MAX_HEAL_ENTRIES = 4096


@dataclass(frozen=True, slots=True)
class MeshSettings:
    role: Role = Role.PEER
    wg_endpoint: str | None = None
    control_endpoint: str | None = None
    tls_fp: bytes | None = None


MAX_FOLLOW_SESSIONS = 256


def _record_key(r: NodeRecord) -> bytes:
    return r.wg_key


@dataclass(frozen=True, slots=True)
class _Views:
    state: MeshState
    version: int
    live: list[NodeRecord]
    peers: dict[bytes, NodeRecord]
    reachable: list[bytes]
    my_clients: list[bytes]
    pruned: list[bytes]  # pruned (not departed) members we could try to reach again


@dataclass
class MeshNode:
    identity: NodeIdentity
    mesh_id: str
    settings: MeshSettings
    gossip: GossipParams
    liveness: LivenessParams
    rng: random.Random
    state: MeshState | None = None
    sessions_limit: int = 64
    #: re-sign our unchanged record this often, so it never ages past the
    #: tombstone GC horizon (receivers refuse records older than that)
    refresh_ms: int = 3_600_000
    _sched: GossipScheduler = field(init=False)
    _fd: FailureDetector = field(init=False)
    _avoid: dict[bytes, int] = field(default_factory=dict)  # client: peers not answering
    _peer_ping_due: int = 0
    _peer_ping_inflight: bool = False
    _peer_ping_failures: int = 0
    _responders: dict[tuple[bytes, int], SyncSession] = field(default_factory=dict)
    rejected: int = 0
    #: reasons of the last rejected items (records without admission, forged prunes...)
    last_rejects: list[str] = field(default_factory=list)
    heal_sessions: int = 0  # sync sessions started on hearing from a pruned member
    _view_cache: _Views | None = None
    #: a joiner's own record until a member admits it (admission mode)
    _pending: NodeRecord | None = None
    #: pruned members we started a heal session with: key -> not again before (ms)
    _heal_due: dict[bytes, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = MeshState(self.mesh_id)
        self._sched = GossipScheduler(self.key, self.gossip, self.rng)
        self._fd = FailureDetector(self.key, self.liveness, self.rng)

    # -- views ------------------------------------------------------------------
    @property
    def key(self) -> bytes:
        return self.identity.wg_public_key

    @property
    def mesh(self) -> MeshState:
        assert self.state is not None
        return self.state

    @property
    def record(self) -> NodeRecord | None:
        return self.mesh.live_record(self.key)

    def _views(self) -> _Views:
        """O(N) views of the state, kept up to date incrementally.

        A change of k records costs O(k log N) plus a copy of the view lists
        (a memcpy), not a rebuild: at 10,000 nodes a rebuild is ~0.1 s and
        every state change would pay it. The reachable list keeps its
        identity while the set of reachable peers does not change, so the
        gossip and failure-detector caches keyed on it stay valid.
        """
        st = self.mesh
        v = self._view_cache
        if v is not None and v.state is st:
            if v.version == st.version:
                return v
            keys = st.changed_since(v.version)
            if keys is not None and len(keys) * 8 <= max(64, len(v.live)):
                v = self._update_views(v, set(keys))
                self._view_cache = v
                return v
        live = st.live_records()
        peers = {r.wg_key: r for r in live if r.role == Role.PEER}
        v = _Views(
            st,
            st.version,
            live,
            peers,
            self._reachable_of(peers),
            self._clients_of(live, peers),
            [k for k in (r.wg_key for r in st.records()) if self._is_pruned_member(k)],
        )
        self._view_cache = v
        return v

    def _reachable_of(self, peers: dict[bytes, NodeRecord]) -> list[bytes]:
        return sorted(
            k for k, r in peers.items() if k != self.key and r.control_endpoint is not None
        )

    def _clients_of(self, live: list[NodeRecord], peers: dict[bytes, NodeRecord]) -> list[bytes]:
        return [
            r.wg_key for r in live if r.role == Role.CLIENT and assigned_peer(r, peers) == self.key
        ]

    def _is_pruned_member(self, key: bytes) -> bool:
        """A pruned (not departed) member we could try to reach again."""
        r = self.mesh.record(key)
        return (
            r is not None
            and not r.left
            and key != self.key
            and r.control_endpoint is not None
            and not self.mesh.is_live(key)
        )

    def _update_views(self, v: _Views, keys: set[bytes]) -> _Views:
        st = self.mesh
        live = list(v.live)  # copies: views may be shared (the simulator primes them)
        peers = dict(v.peers)
        pruned = list(v.pruned)
        membership = clients = False
        for k in sorted(keys):
            i = bisect.bisect_left(live, k, key=_record_key)
            old = live[i] if i < len(live) and live[i].wg_key == k else None
            if old is not None:
                del live[i]
            new = st.live_record(k)
            if new is not None:
                live.insert(i, new)
            old_peer = peers.pop(k, None)
            if new is not None and new.role == Role.PEER:
                peers[k] = new
            was = old_peer is not None and old_peer.control_endpoint is not None
            now = new is not None and new.role == Role.PEER and new.control_endpoint is not None
            membership |= was != now and k != self.key
            clients |= any(r is not None and r.role == Role.CLIENT for r in (old, new))
            if self._is_pruned_member(k):
                if k not in pruned:
                    pruned.append(k)
            elif k in pruned:
                pruned.remove(k)
        reach = self._reachable_of(peers) if membership else v.reachable
        mine = self._clients_of(live, peers) if membership or clients else v.my_clients
        return _Views(st, st.version, live, peers, reach, mine, pruned)

    def live_records(self) -> list[NodeRecord]:
        return self._views().live

    def live_peers(self) -> dict[bytes, NodeRecord]:
        return self._views().peers

    def _reachable_peers(self) -> list[bytes]:
        """Members other nodes can call: live peers with a control endpoint."""
        return self._views().reachable

    def my_peer(self) -> bytes | None:
        """For a client: the peer it is attached to."""
        rec = self.record
        if rec is None or rec.role != Role.CLIENT:
            return None
        return rec.assigned_peer

    def my_clients(self) -> list[bytes]:
        return self._views().my_clients

    def retune(self, gossip: GossipParams, liveness: LivenessParams, now_ms: int) -> None:
        """New gossip and liveness parameters (a configuration reload), effective at once."""
        self.gossip = gossip
        self.liveness = liveness
        self._sched.retune(gossip, now_ms)
        self._fd.retune(liveness, now_ms)
        self._peer_ping_due = min(self._peer_ping_due, now_ms + liveness.probe_interval_ms)

    @property
    def suspects(self) -> frozenset[bytes]:
        return self._fd.suspects

    def last_heard(self, key: bytes) -> int | None:
        return self._fd.last_heard(key)

    # -- own record ---------------------------------------------------------------
    def start(self, now_ms: int) -> list[Out]:
        """Publish (or re-publish, after a restart) this node's record."""
        s = self.settings
        current = self.mesh.record(self.key)
        fields: dict[str, Any] = {
            "role": s.role,
            "wg_endpoint": s.wg_endpoint if s.role == Role.PEER else None,
            "control_endpoint": s.control_endpoint if s.role == Role.PEER else None,
            "tls_fp": s.tls_fp,
            "left": False,
        }
        if s.role == Role.CLIENT:
            fields["assigned_peer"] = self._choose_peer(now_ms)
        if current is None:
            rec = NodeRecord.create(
                self.identity, self.mesh_id, version=now_ms, now_ms=now_ms, **fields
            )
        else:
            rec = current.evolve(self.identity, now_ms, **fields)
        return self._publish(rec, now_ms)

    def update_self(self, now_ms: int, **changes: Any) -> list[Out]:
        """Change this node's record (alias, description, services, routes...)."""
        current = self.mesh.record(self.key)
        if current is None:
            return self.start(now_ms)
        return self._publish(current.evolve(self.identity, now_ms, **changes), now_ms)

    def leave(self, now_ms: int) -> list[Out]:
        """Publish the leave tombstone and push it to ``branch`` members."""
        return self.update_self(now_ms, left=True)

    def _publish(self, rec: NodeRecord, now_ms: int) -> list[Out]:
        changed = self.mesh.apply(rec, now_ms)
        out: list[Out] = []
        if changed:
            out.append(Changed(frozenset({self.key})))
            out.extend(self._push_now({self.key}, (), now_ms))
        return out

    def _choose_peer(self, now_ms: int) -> bytes | None:
        peers = [k for k in self._reachable_peers() if self._avoid.get(k, 0) <= now_ms]
        if not peers:
            peers = self._reachable_peers()
        order = ranked(self.key, peers)
        return order[0] if order else None

    # -- invitations --------------------------------------------------------------
    # -- authority ------------------------------------------------------------------
    @property
    def chain(self) -> tuple[Cert, ...]:
        """This node's admission proof (empty for the founder)."""
        rec = self.mesh.record(self.key)
        return rec.chain if rec is not None else ()

    def is_admin(self, key: bytes | None = None) -> bool:
        return self.mesh.authority.is_admin(self.key if key is None else key)

    def may_admit(self, now_ms: int) -> bool:
        """May this node admit new nodes (policy, or admin) at ``now_ms``?"""
        if not self.mesh.admission:
            return True
        chain = self.chain
        flag = bool(chain) and chain[-1].may_admit
        return self.mesh.authority.issuer_may_admit(self.key, flag, now_ms)

    def _require_admin(self) -> None:
        if not self.is_admin():
            raise NotAllowed("only an admin of this mesh can do that")

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
        self._require_admin()
        if not admin and subject == self.key and len(self.mesh.authority.admins) <= 1:
            raise NotAllowed("this is the mesh's last admin: make another admin first")
        if admin and not self.mesh.is_member(subject):
            raise NotAllowed("only a member of the mesh can be made an admin")
        return self._statement(
            AdminChange.create(
                self.identity, self.mesh_id, subject=subject, admin=admin, now_ms=now_ms
            ),
            now_ms,
        )

    def reserve_alias(self, now_ms: int, alias: str, holder: bytes | None) -> list[Out]:
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
        """Revoke a token: its issuer or an admin."""
        issuer = self.token_issuer(token_hash_)
        if issuer != self.key and not self.is_admin():
            raise NotAllowed("only the token's issuer or an admin can revoke it")
        return self._statement(
            InviteRevoke.create(self.identity, self.mesh_id, token_hash=token_hash_, now_ms=now_ms),
            now_ms,
        )

    def token_issuer(self, token_hash_: bytes) -> bytes | None:
        for r in self.live_records():
            if any(g.token_hash == token_hash_ for g in r.invites):
                return r.wg_key
        return None

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
        )
        rec = self.mesh.record(self.key)
        assert rec is not None, "start() first"
        grants = [g for g in rec.invites if g.expiry_ms > now_ms][-15:]
        grant = token.grant()
        if strict:
            grant = replace(grant, strict=True)
        grants.append(grant)
        return token, self.update_self(now_ms, invites=tuple(grants))

    def _admit(self, src: bytes, req: JoinRequest, now_ms: int) -> tuple[Message, list[Out]]:
        st = self.mesh
        auth = st.authority
        grant, _reason = check_admission(
            self.live_records(),
            req.secret,
            src,
            now_ms,
            ledger=auth.token_subjects,
            self_key=self.key,
            revoked=auth.token_revoked,
        )
        if grant is None or req.record.wg_key != src or not self.may_admit(now_ms):
            return Refusal(self.mesh_id), []
        if auth.is_revoked(src):
            return Refusal(self.mesh_id), []
        try:
            check_record_fields(req.record, self.mesh_id)
        except RecordError:
            return Refusal(self.mesh_id), []
        out: list[Out] = []
        chain: tuple[Cert, ...] = ()
        if st.admission:
            current = st.record(src)
            if current is not None and st.admission_error(src, current.chain) is None:
                chain = current.chain  # a retry, or a restart: same admission
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
                    out.extend(self._push_now({src}, (src,), now_ms))
            except RecordError:
                return Refusal(self.mesh_id), []
            rec = st.record(self.key)
            assert rec is not None
            adm = Admission(token_hash(req.secret), src)
            if adm not in rec.admitted:
                out.extend(self.update_self(now_ms, admitted=(*rec.admitted, adm)[-64:]))
        self._fd.heard_from(src, now_ms)
        return JoinReply(self.mesh_id, self._join_page(src), chain), out

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
        return tuple(page(ordered)[0])

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
        changed, _errors = self.mesh.apply_many(items, now_ms)
        self.rejected += len(_errors)
        if chain or self._pending is not None:
            base = self.mesh.record(self.key) or self._pending or self._fresh_record(now_ms)
            self._pending = None
            rec = base.evolve(self.identity, now_ms, chain=tuple(chain), left=False)
            changed |= self.mesh.apply_many([rec], now_ms)[0]
        out: list[Out] = [Changed(frozenset(changed) | {self.key})]
        if self.settings.role == Role.CLIENT:
            out.extend(self._maybe_reassign(now_ms))
        out.extend(self._push_now({self.key}, (), now_ms))
        return out

    # -- receiving items -------------------------------------------------------------
    def _ingest(self, items: Iterable[Item], now_ms: int, src: bytes | None) -> list[Out]:
        changed, errors = self.mesh.apply_many(items, now_ms)
        self.rejected += len(errors)  # a peer's garbage: counted, never fatal
        if errors:  # why (for the adapter's rate-limited log): the first few reasons
            self.last_rejects = [str(e) for e in errors[:3]]
        return self._on_changed(changed, now_ms, src)

    def _on_changed(self, changed: set[bytes], now_ms: int, src: bytes | None) -> list[Out]:
        """Common follow-up of any state change: liveness, refutation, push, reassignment."""
        if not changed:
            return []
        out: list[Out] = [Changed(frozenset(changed))]
        for k in changed:
            if self.mesh.live_record(k) is None:
                self._fd.forget(k)
        # Refute a prune of ourselves: publish a version the prune does not cover.
        if self.key in changed and self.mesh.live_record(self.key) is None:
            own = self.mesh.record(self.key)
            if own is not None and not own.left:
                self._fd.refuted()
                out.extend(self._publish(own.evolve(self.identity, now_ms), now_ms))
                if src is not None and src != self.key:
                    # The member that showed us our prune holds it: it gets the
                    # refutation at once (it would otherwise wait for a pull).
                    out.extend(self._push_calls([src], frozenset({self.key})))
        out.extend(self._push_now(changed, (src,) if src else (), now_ms))
        if self.settings.role == Role.CLIENT:
            out.extend(self._maybe_reassign(now_ms))
        return out

    def _push_now(self, keys: Iterable[bytes], exclude: Sequence[bytes], now_ms: int) -> list[Out]:
        rnd = self._sched.triggered(
            keys,
            self._reachable_peers(),
            is_client=self.settings.role == Role.CLIENT,
            client_peers=self._client_targets(now_ms),
            exclude=exclude,
        )
        return self._push_calls(rnd.push_to, rnd.keys)

    def _push_calls(self, to: Iterable[bytes], keys: frozenset[bytes]) -> list[Out]:
        targets = tuple(to)
        if not targets or not keys:
            return []
        items = self.mesh.items_for(keys)
        if not items:
            return []
        msgs = [Push(self.mesh_id, tuple(p)) for p in pages(items)]  # bounded messages
        return [Call(t, msg, PushCtx(keys)) for t in targets for msg in msgs]

    def _client_targets(self, now_ms: int) -> list[bytes]:
        if self.settings.role != Role.CLIENT:
            return []  # only clients restrict their gossip partners
        mine = self.my_peer()
        peers = self._reachable_peers()
        out = [mine] if mine is not None and mine in peers else []
        for k in ranked(self.key, peers):
            if k not in out and self._avoid.get(k, 0) <= now_ms:
                out.append(k)
            if len(out) >= 2:
                break
        return out

    # -- clock ------------------------------------------------------------------------
    def tick(self, now_ms: int) -> list[Out]:
        out: list[Out] = []
        own = self.mesh.record(self.key)
        if own is not None and not own.left and now_ms - own.timestamp_ms >= self.refresh_ms:
            out.extend(self._publish(own.evolve(self.identity, now_ms), now_ms))
        is_client = self.settings.role == Role.CLIENT
        peers = self._reachable_peers()
        rnd = self._sched.tick(
            now_ms, peers, is_client=is_client, client_peers=self._client_targets(now_ms)
        )
        out.extend(self._push_calls(rnd.push_to, rnd.keys))
        if rnd.pull_from is not None and len(self._responders) < self.sessions_limit:
            target = rnd.pull_from
            pruned = self._views().pruned
            if pruned and not is_client and self.rng.random() < PULL_PRUNED_CHANCE:
                # Heal partitions and false prunes: a pruned member may be alive
                # (on the other side of a partition); a pull shows it our state,
                # including its prune, which it refutes.
                target = self.rng.choice(pruned)
            session = SyncSession.initiator(self.mesh, now_ms, rng=self.rng)
            out.append(Call(target, session.start(), SyncCtx(session)))
        if is_client:
            out.extend(self._client_tick(now_ms))
        else:
            for a in self._fd.tick(now_ms, peers, watched_clients=self.my_clients()):
                if isinstance(a, ProbePing):
                    out.append(
                        Call(
                            a.target,
                            Ping(self.mesh_id, a.probe_id),
                            ProbeCtx(a.target, a.probe_id),
                        )
                    )
                elif isinstance(a, ProbePingReq):
                    out.append(
                        Call(
                            a.via,
                            PingReq(self.mesh_id, a.target, a.probe_id),
                            ProbeCtx(a.target, a.probe_id),
                        )
                    )
                elif isinstance(a, Dead):
                    out.extend(self._declare_dead(a.target, now_ms))
        return out

    def _declare_dead(self, target: bytes, now_ms: int) -> list[Out]:
        rec = self.mesh.record(target)
        if rec is None or target == self.key:
            return []
        prune = Prune.create(
            self.identity,
            self.mesh_id,
            now_ms=now_ms,
            target_record=rec if self.mesh.admission else None,
            target=target,
            target_version=rec.version,
            by_chain=self.chain if self.mesh.admission else (),
        )
        return self._ingest([prune], now_ms, None)

    def _client_tick(self, now_ms: int) -> list[Out]:
        """Clients ping their peer every probe period (it watches them) and move on failure."""
        out = self._maybe_reassign(now_ms)
        peer = self.my_peer()
        if self._peer_ping_inflight or now_ms < self._peer_ping_due:
            return out
        if peer is None:
            self._peer_ping_due = now_ms + self.liveness.probe_interval_ms
            return out
        self._peer_ping_due = now_ms + self.liveness.probe_interval_ms
        self._peer_ping_inflight = True
        out.append(Call(peer, Ping(self.mesh_id, 0), PeerPingCtx(peer)))
        return out

    def _maybe_reassign(self, now_ms: int) -> list[Out]:
        rec = self.mesh.record(self.key)
        if rec is None or rec.left or rec.role != Role.CLIENT:
            return []
        current = rec.assigned_peer
        live = self._reachable_peers()
        if current is not None and current in live and self._avoid.get(current, 0) <= now_ms:
            return []
        best = self._choose_peer(now_ms)
        if best == current:
            return []
        self._peer_ping_failures = 0
        return self.update_self(now_ms, assigned_peer=best)

    def next_deadline(self) -> int | None:
        if self._sched.next_deadline() is None:
            return 0  # never ticked: tick as soon as possible
        times = [
            t for t in (self._sched.next_deadline(), self._fd.next_deadline()) if t is not None
        ]
        if self.settings.role == Role.CLIENT:
            if self.my_peer() is not None and not self._peer_ping_inflight:
                times.append(self._peer_ping_due)
            elif self.my_peer() is None:
                times.append(self._peer_ping_due + self.liveness.probe_interval_ms)
        return min(times) if times else None

    # -- requests from other members ------------------------------------------------------
    def is_member(self, key: bytes) -> bool:
        """An admitted node that has not left (a pruned one may still refute)."""
        return self.mesh.is_member(key)

    # -- the engine boundary ---------------------------------------------------------------
    def step(self, inp: Input) -> list[Out]:
        """Take one input; return what to do, in order (see :mod:`smegmesh.core.engine`)."""
        if isinstance(inp, TimerFired):
            return self.tick(inp.now_ms)
        if isinstance(inp, RequestReceived):
            return self._request(inp)
        if isinstance(inp, ReplyReceived):
            return self.handle_reply(inp.call.to, inp.call.ctx, inp.msg, inp.now_ms)
        if isinstance(inp, CallFailed):
            return self.handle_failure(inp.call.to, inp.call.ctx, inp.now_ms)
        if isinstance(inp, Start):
            return self.start(inp.now_ms)
        if isinstance(inp, UpdateSelf):
            return self.update_self(inp.now_ms, **inp.changes)
        return self.leave(inp.now_ms)

    def handle_request(
        self, src: bytes, msg: Message, now_ms: int, request_id: int = 0
    ) -> tuple[Message | None, list[Out]]:
        """:meth:`step` for a request, with the reply split out of the outputs.

        The reply is None when it comes later (a ``PingReq``: a ``Respond``
        output after the relayed ping's reply or failure).
        """
        outs = self._request(RequestReceived(src, msg, now_ms, request_id))
        if outs and isinstance(outs[-1], Respond) and outs[-1].request_id == request_id:
            return outs[-1].msg, outs[:-1]
        return None, outs

    def _request(self, req: RequestReceived) -> list[Out]:
        """A request from ``req.src`` (authenticated by the transport).

        The reply is the last output (a ``Respond``), except for a ``PingReq``:
        then the last output is the relayed ``Ping`` to its target, and the
        ``Respond`` (``Ack(ok)``) comes with that ping's reply or failure.
        Non-members get a ``Refusal`` for everything but a ``JoinRequest``
        with a valid token.
        """
        src, msg, now_ms = req.src, req.msg, req.now_ms
        reply, outs = self._answer(src, msg, now_ms)
        if reply is None:
            assert isinstance(msg, PingReq)
            ctx = RelayCtx(req.request_id, msg.probe_id)
            ping = Ping(self.mesh_id, msg.probe_id)
            outs.append(Call(msg.target, ping, ctx, self.liveness.probe_timeout_ms))
        else:
            outs.append(Respond(req.request_id, reply))
        return outs

    def _answer(self, src: bytes, msg: Message, now_ms: int) -> tuple[Message | None, list[Out]]:
        """The reply to a request (None: relay the ``PingReq``) and the other outputs."""
        if isinstance(msg, JoinRequest):
            return self._admit(src, msg, now_ms)
        pre: list[Out] = []
        if not self.is_member(src):
            # A node just admitted elsewhere announces itself with a push of its
            # own record, whose admission chain is its credential.
            if not isinstance(msg, Push) or not self.mesh.admission:
                return Refusal(self.mesh_id), []
            own = [i for i in msg.items if isinstance(i, NodeRecord) and i.wg_key == src][:1]
            pre = self._ingest(own, now_ms, src)
            if not self.is_member(src):
                return Refusal(self.mesh_id), []
        self._fd.heard_from(src, now_ms)
        if isinstance(msg, Ping):
            return Ack(self.mesh_id, msg.probe_id), self._heard_from_pruned(src, now_ms)
        if isinstance(msg, PingReq):
            return None, self._heard_from_pruned(src, now_ms)
        if isinstance(msg, Push):
            out = pre + self._ingest(msg.items, now_ms, src)
            return Ack(self.mesh_id, 0), out + self._heard_from_pruned(src, now_ms)
        if isinstance(msg, SyncStart | SyncStep | SyncEnd):
            reply, _session, merged = SyncSession.respond(
                self.mesh, self._responders, src, msg, now_ms
            )
            out = self._on_changed(set(merged), now_ms, src)
            return reply, out + self._heard_from_pruned(src, now_ms)
        return Refusal(self.mesh_id), []

    def _heard_from_pruned(self, key: bytes, now_ms: int) -> list[Out]:
        """``key`` answered or called us (authenticated) while we hold it as pruned.

        That is proof it is alive: start a sync session with it at once, at most
        one per member per :data:`HEAL_INTERVAL_MS`. The session shows it our
        prune of it, which it refutes and pushes straight back to us (see
        :meth:`_on_changed`); we then spread the refutation on our side. Heals a
        partition in a few round trips instead of waiting for random pulls.
        """
        if not self._is_pruned_member(key) or self.settings.role == Role.CLIENT:
            return []
        if self._heal_due.get(key, 0) > now_ms:
            return []
        if len(self._heal_due) >= MAX_HEAL_ENTRIES:
            self._heal_due = {k: t for k, t in self._heal_due.items() if t > now_ms}
            while len(self._heal_due) >= MAX_HEAL_ENTRIES:
                del self._heal_due[next(iter(self._heal_due))]
        self._heal_due.pop(key, None)
        self._heal_due[key] = now_ms + HEAL_INTERVAL_MS
        self.heal_sessions += 1
        session = SyncSession.initiator(self.mesh, now_ms, rng=self.rng)
        return [Call(key, session.start(), SyncCtx(session))]

    # -- replies to our requests -------------------------------------------------------------
    def handle_reply(self, to: bytes, ctx: CallCtx, reply: Message, now_ms: int) -> list[Out]:
        """The reply ``reply`` of member ``to`` to our call with context ``ctx``."""
        if isinstance(ctx, RelayCtx):  # a relayed ping: answer the PingReq
            ok = isinstance(reply, Ack) and reply.ok
            return [Respond(ctx.request_id, Ack(self.mesh_id, ctx.probe_id, ok))]
        if isinstance(reply, Refusal):
            if isinstance(ctx, PeerPingCtx):
                # Our peer no longer serves us in this mesh (it left it, or lost us): a
                # failure, not an answer; otherwise the ping stays in flight forever and
                # the client never moves (nor pulls from anyone else).
                return self.handle_failure(to, ctx, now_ms)
            return []
        if not isinstance(ctx, ProbeCtx):
            self._fd.heard_from(to, now_ms)
        if isinstance(ctx, ProbeCtx):
            if isinstance(reply, Ack) and reply.ok:
                self._fd.on_ack(ctx.target, ctx.probe_id, now_ms)
            return self._heard_from_pruned(to, now_ms)
        if isinstance(ctx, PeerPingCtx):
            self._peer_ping_inflight = False
            self._peer_ping_failures = 0
            return []
        if isinstance(ctx, SyncCtx):
            if not isinstance(reply, SyncStart | SyncStep | SyncEnd):
                return []
            nxt, merged = ctx.session.receive(reply, now_ms)
            out = self._on_changed(set(merged), now_ms, to)
            if nxt is not None:
                out.append(Call(to, nxt, ctx))
            elif (
                ctx.session.merged
                and ctx.session.bytes_received >= PAGE_BYTES // 4
                and ctx.follow < MAX_FOLLOW_SESSIONS
            ):
                # A session that brought a page or so may have been cut short by
                # the page limit: go on with the next page at once (bounded chain).
                session = SyncSession.initiator(self.mesh, now_ms, rng=self.rng)
                out.append(Call(to, session.start(), SyncCtx(session, ctx.follow + 1)))
            return out
        return []

    def handle_failure(self, to: bytes, ctx: CallCtx, now_ms: int) -> list[Out]:
        """Our call to ``to`` with context ``ctx`` failed (no answer)."""
        if isinstance(ctx, RelayCtx):
            return [Respond(ctx.request_id, Ack(self.mesh_id, ctx.probe_id, False))]
        if isinstance(ctx, PeerPingCtx):
            self._peer_ping_inflight = False
            self._peer_ping_failures += 1
            if (
                self._peer_ping_failures * self.liveness.probe_interval_ms
                >= self.liveness.suspicion_ms
            ):
                # Our peer is silent: avoid it for a while and move to the next one.
                self._avoid[ctx.peer] = now_ms + 3 * self.liveness.suspicion_ms
                return self._maybe_reassign(now_ms)
        return []
