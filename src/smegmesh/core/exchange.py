"""Requests from other members and replies to our calls (a mixin of ``MeshNode``). Pure.

A request gets its reply as the last output (a ``Respond``), except a
``PingReq``: the engine relays it (pings the target within the probe
timeout) and answers ``Ack(ok)`` when that ping is answered or fails.
Hearing from a member we hold as pruned starts a heal session at once.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from smegmesh.core.cert import AuthItem
from smegmesh.core.delta import as_deltas
from smegmesh.core.elide import elide_news, expand, expand_again, shortened
from smegmesh.core.engine import (
    Call,
    CallCtx,
    Changed,
    MeshSettings,
    Message,
    OfferCtx,
    OnChanged,
    Out,
    PeerPingCtx,
    ProbeCtx,
    PushCtx,
    RelayCtx,
    RequestReceived,
    Respond,
    SyncCtx,
)
from smegmesh.core.evicted import EvictedMixin
from smegmesh.core.gossip import GossipParams, GossipScheduler
from smegmesh.core.liveness import FailureDetector, LivenessParams
from smegmesh.core.meshtag import MeshTags, record_version
from smegmesh.core.messages import IN_REPLY, Ack, JoinRequest, Ping, PingReq, Refusal
from smegmesh.core.offer import (
    MAX_HOPS,
    AskedInFull,
    Offer,
    Want,
    offer_entries,
    offers,
    wanted,
    wanted_parts,
)
from smegmesh.core.paging import PAGE_BYTES, pages
from smegmesh.core.record import NodeRecord, Prune, RecordError, Role
from smegmesh.core.refuted import RefutedPrunes, pruners_of
from smegmesh.core.state import MeshState
from smegmesh.core.state_gate import senders_faults
from smegmesh.core.sync import Push, SyncEnd, SyncSession, SyncStart, SyncStep
from smegmesh.core.treecast import TreecastMixin

Item = NodeRecord | Prune | AuthItem

__all__ = ["ANSWERED_FOR_STRANGERS", "ExchangeMixin"]

#: Names of the requests answered, other than with a ``Refusal``, for a caller
#: not (yet) known as a member (see ``_answer``): a join with a token, and the
#: push of a just-admitted node's own record (how it announces itself). The
#: datagram transport learns from this which answers show it is known.
ANSWERED_FOR_STRANGERS = frozenset({JoinRequest.__name__, Push.__name__})

#: At most one heal session per pruned member this often (see ``_heard_from_pruned``).
HEAL_INTERVAL_MS = 3_000
#: Members remembered for that bound (older entries are dropped first).
MAX_HEAL_ENTRIES = 4096
MAX_FOLLOW_SESSIONS = 256


class ExchangeMixin(EvictedMixin, TreecastMixin):
    """See the module docstring; ``MeshNode`` provides the state and outputs."""

    mesh_id: str
    settings: MeshSettings
    liveness: LivenessParams
    rng: random.Random
    gossip: GossipParams
    heal_sessions: int
    by_reference: dict[str, int]
    _asked: AskedInFull
    tags: MeshTags
    _fd: FailureDetector
    _sched: GossipScheduler
    _responders: dict[tuple[bytes, int], SyncSession]
    _heal_due: dict[bytes, int]
    _sync_due: dict[str, int]
    _avoid: dict[bytes, int]
    rejected: int
    last_rejects: list[str]
    refuted: RefutedPrunes

    if TYPE_CHECKING:

        @property
        def key(self) -> bytes: ...  # noqa: D102
        @property
        def mesh(self) -> MeshState: ...  # noqa: D102
        def is_member(self, key: bytes) -> bool: ...  # noqa: D102
        def _is_pruned_member(self, key: bytes) -> bool: ...

        _on_changed: OnChanged

        def _admit(
            self, src: bytes, req: JoinRequest, now_ms: int
        ) -> tuple[Message, list[Out]]: ...
        def _peer_acked(self, peer: bytes, now_ms: int, reply: Message) -> list[Out]: ...
        def _ping_ack(self, src: bytes, ping: Ping) -> Ack: ...
        def _peer_ping_failed(self, peer: bytes, now_ms: int) -> list[Out]: ...

    def _gossip_calls(
        self,
        to: Sequence[bytes],
        keys: frozenset[bytes],
        full: int,
        hops: int = MAX_HOPS,
        now_ms: int | None = None,
    ) -> list[Out]:
        """A gossip round: the first ``full`` targets get the items, the others an offer.

        Pushing every round's items in full made each node receive each change
        several times (``core.offer``); an offer repeats ~27 bytes per key
        instead, and the target pulls what it lacks. Full pushes are the fast
        path (no extra round trip): a change goes in full while it is new to
        most of the mesh (few hops), then one target of each round gets it in
        full and the others an offer. With ``full_push`` >= ``branch`` every
        round is pushed in full, as before offers existed.
        """
        if self.gossip.full_push >= self.gossip.branch:
            full = len(to)
        out = self._push_calls(to[:full], keys, hops, now_ms=now_ms)
        rest = to[full:]
        if rest and keys:
            entries = offer_entries(self.mesh, keys)
            if entries:
                ctx = OfferCtx(frozenset(k for k in keys if k in self.mesh))
                out.extend(Call(t, msg, ctx) for t in rest for msg in offers(self.mesh_id, entries))
        return out

    def _push_calls(
        self,
        to: Iterable[bytes],
        keys: frozenset[bytes],
        hops: int = 0,
        whole: frozenset[bytes] = frozenset(),
        now_ms: int | None = None,
    ) -> list[Out]:
        """Push ``keys`` to ``to``: what changed (``news_for``), the ``whole`` entries whole.

        With ``now_ms``, what changed goes without the parts every member holds
        (:mod:`~smegmesh.core.elide`).
        """
        targets = tuple(to)
        if not targets or not keys:
            return []
        news: list[Any] = self.mesh.news_for(keys - whole)
        sent = news
        if now_ms is not None and self.mesh.admission:
            news, sent = elide_news(news, now_ms)
        whole_items: list[Any] = self.mesh.items_for(keys & whole)
        if not whole_items and not sent:
            return []
        if now_ms is None:
            ctx = PushCtx(keys)
            return [
                Call(t, m, ctx) for t in targets for m in self._pushes(whole_items + sent, hops)
            ]
        # Members that take deltas get a new version of a record they hold as
        # what changed (core.delta), those that said so short names and times
        # (elide.shortened, with deltas or without); the others items as they are.
        deltas = as_deltas(news, sent, self.mesh.bases)
        tags, out = self.tags, list[Out]()
        forms: dict[tuple[bool, bool], tuple[PushCtx, list[Push]]] = {}
        for t in targets:
            v = record_version(self.mesh, t)
            form = (deltas is not None and tags.takes_deltas(t, v), tags.takes_short(t, v))
            if form not in forms:
                items = deltas if form[0] and deltas is not None else sent
                items = [shortened(i) for i in items] if form[1] else items
                forms[form] = PushCtx(keys, deltas=form[0]), self._pushes(whole_items + items, hops)
            c, msgs = forms[form]
            out.extend(Call(t, m, c) for m in msgs)
        return out

    def _pushes(self, items: list[Any], hops: int) -> list[Push]:  # of bounded size
        return [Push(self.mesh_id, tuple(p), hops) for p in pages(items, memo=self.mesh.memo)]

    def _ingest(
        self, items: Iterable[Item], now_ms: int, src: bytes | None, hops: int | None = None
    ) -> list[Out]:
        """Merge received ``items`` (from ``src``; None: our own), count what was refused."""
        batch = tuple(items)
        down = pruners_of(self.mesh, batch)
        changed, errors = self.mesh.apply_many(batch, now_ms)
        self._count_rejects(senders_faults(errors))
        return self._merged(changed, down, now_ms, src, hops)

    def _count_rejects(self, errors: list[RecordError]) -> None:
        """A peer's garbage: counted, never fatal; why (for the adapter's log): the first few."""
        self.rejected += len(errors)
        if errors:
            self.last_rejects = [str(e) for e in errors[:3]]

    def _merged(
        self,
        changed: set[bytes],
        down: dict[bytes, tuple[bytes, int]],
        now_ms: int,
        src: bytes | None,
        hops: int | None = None,
    ) -> list[Out]:
        """What follows a merge (a push's, or a sync step's) that changed ``changed``.

        ``down``: the merged items' members held as pruned before it, and by
        whom (:func:`~smegmesh.core.refuted.pruners_of`, taken before the merge).
        """
        if down:
            self.refuted.note(self.mesh, down, changed, now_ms)
        # Back alive: a push's goes on at once, whatever its throttle (a prune and
        # its refutation, again and again, must not leave the refutation to the
        # rounds). A sync session's (hops None) keep the throttle: a heal brings
        # hundreds at once, and counted they healed sooner (300 nodes, 6 s cut,
        # seeds 1-10: exempt, two seeds healed 0.5 and 1 s later, none sooner).
        revived = frozenset(
            k for k in down if hops is not None and self.mesh.live_record(k) is not None
        )
        out = self._on_changed(changed, now_ms, src, hops, revived)
        return out + self._tell_pruned(changed, now_ms)

    def _tell_pruned(self, changed: Iterable[bytes], now_ms: int) -> list[Out]:
        """Push its prune to each member just pruned by a suspect pruner (``PruneBudget.suspect``).

        Such a member is most likely alive and unaware: the nodes that would
        have forwarded the prune to it refused it for the budget. Told, it
        refutes at once (at most one push per member per ``HEAL_INTERVAL_MS``).
        """
        budget = self.mesh.prune_budget
        if budget is None or not budget.refused:
            return []
        out: list[Out] = []
        for k in changed:
            prune = self.mesh.get_prune(k)
            if prune is None or k == self.key or self.mesh.live_record(k) is not None:
                continue
            if budget.suspect(prune.by_wg_key, now_ms) and self._heal_slot(k, now_ms):
                out.extend(self._push_calls([k], frozenset({k})))  # not elided
        return out

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

        The reply is the last output (a ``Respond``), except for a ``PingReq`` relayed:
        then the last output is the relayed ``Ping`` to its target, and the
        ``Respond`` (``Ack(ok)``) comes with that ping's reply or failure.
        Non-members get a ``Refusal`` for everything but a ``JoinRequest``
        with a valid token.
        """
        src, now_ms = req.src, req.now_ms
        msg = self.tags.untagged(req.msg)  # core.meshtag
        reply, outs = self._answer(src, msg, now_ms)
        if reply is None:
            assert isinstance(msg, PingReq)
            ctx = RelayCtx(req.request_id, msg.probe_id)
            ping = Ping(self.mesh_id, msg.probe_id)
            # The configured probe timeout, not our health-scaled one: the
            # requester sent the PingReq at its probe timeout and gives up at its
            # probe period (0.4 s and 1 s by default), so a later ack is wasted.
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
                return self._refuse(src, now_ms), []
            own = [i for i in msg.items if isinstance(i, NodeRecord) and i.wg_key == src][:1]
            pre = self._ingest(own, now_ms, src)
            if not self.is_member(src):
                return self._refuse(src, now_ms, own), []
        self._fd.heard_from(src, now_ms)
        if isinstance(msg, Ping):
            return self._ping_ack(src, msg), self._heard_from_pruned(src, now_ms)
        if isinstance(msg, PingReq):
            heal = self._heard_from_pruned(src, now_ms)
            if msg.target == self.key or not self.is_member(msg.target):
                # no call to ourselves, nor to a key that is no member (a departed
                # member's old endpoint may be someone else's now)
                return Ack(IN_REPLY, msg.probe_id, msg.target == self.key), heal
            return None, heal
        if isinstance(msg, Push):
            ack, out = self._on_push(src, msg, now_ms)
            return ack, pre + out + self._heard_from_pruned(src, now_ms)
        if isinstance(msg, Offer):
            # Keys and versions only: we ask for what we lack (core.offer).
            want = Want(IN_REPLY, wanted(self.mesh, msg.entries, self._asked, now_ms))
            return want, self._heard_from_pruned(src, now_ms)
        if isinstance(msg, SyncStart | SyncStep | SyncEnd):
            down = pruners_of(self.mesh, msg.items) if isinstance(msg, SyncStep) else {}
            reply, session, merged = SyncSession.respond(
                self.mesh, self._responders, src, msg, now_ms
            )
            self._count_rejects(session.take_errors())
            out = self._merged(set(merged), down, now_ms, src)
            return reply, out + self._heard_from_pruned(src, now_ms)
        return Refusal(self.mesh_id), []

    def _on_push(self, src: bytes, msg: Push, now_ms: int) -> tuple[Ack, list[Out]]:
        """A member's push: its elided parts put back (core.elide), merged, acknowledged."""
        got = expand(self.mesh, msg.items)
        self._count_rejects(got.errors)
        out = self._ingest(got.items, now_ms, src, msg.hops)
        if got.missing:  # a prune of the record this push brought resolves now
            out += self._ingest(expand_again(self.mesh, msg.items, got), now_ms, src, msg.hops)
        self.by_reference["resolved"] += got.resolved
        self.by_reference["unresolved"] += got.unresolved
        if got.unresolved:  # it holds what we lack: a sync session brings it whole
            out += self._sync_with(src, now_ms, "unresolved")
        # ok: something in it was news to us (the pusher's feedback, see handle_reply)
        news = bool(got.unresolved) or any(isinstance(o, Changed) for o in out)
        return Ack(IN_REPLY, self._push_ack_words(), news), out

    def _heard_from_pruned(self, key: bytes, now_ms: int) -> list[Out]:
        """``key`` answered or called us (authenticated) while we hold it as pruned.

        That is proof it is alive: push it our prune of it at once (one small
        ``Push``: its record and the prune), at most one per member per
        :data:`HEAL_INTERVAL_MS`, and start a sync session with it if no heal
        started one in the last :data:`HEAL_INTERVAL_MS`. It refutes the prune
        and pushes the refutation straight back to us (see :meth:`_on_changed`);
        we then spread the refutation on our side. Heals a partition in a few
        round trips instead of waiting for random pulls. Not a sync session per
        member: after a partition the two sides' states differ by O(N) items
        and each member hears from O(N) pruned members, so a session per heal
        (O(N) bytes and work each) was O(N^2) per node and O(N^3) in all.
        """
        if not self._is_pruned_member(key) or self.settings.role == Role.CLIENT:
            return []
        if not self._heal_slot(key, now_ms):
            return []
        self.heal_sessions += 1
        # not elided (no now_ms): it holds its own latest record, not the one pruned
        out = self._push_calls([key], frozenset({key}))
        # One sync session per interval in all (not per member) brings the
        # rest of the other side's changes at once, in O(N) per interval.
        return out + self._sync_with(key, now_ms)

    def _sync_with(self, key: bytes, now_ms: int, slot: str = "heal") -> list[Out]:
        """A sync session with ``key``, unless one of ``slot`` started in the last interval.

        Slots: ``heal`` (a pruned member heard from), ``unresolved`` (a push named
        parts we lack, core.elide), ``told`` (our peer holds us pruned, core.clientside):
        apart, so bogus references cannot take the heals' session (twentieth session).
        """
        if now_ms < self._sync_due.get(slot, 0):
            return []
        self._sync_due[slot] = now_ms + HEAL_INTERVAL_MS
        session = SyncSession.initiator(self.mesh, now_ms, rng=self.rng)
        return [Call(key, session.start(), SyncCtx(session))]

    def _heal_slot(self, key: bytes, now_ms: int) -> bool:
        """Take the heal slot of ``key``: False if something was sent to it already.

        One per member per :data:`HEAL_INTERVAL_MS`; at most
        :data:`MAX_HEAL_ENTRIES` members remembered.
        """
        if self._heal_due.get(key, 0) > now_ms:
            return False
        if len(self._heal_due) >= MAX_HEAL_ENTRIES:
            self._heal_due = {k: t for k, t in self._heal_due.items() if t > now_ms}
            while len(self._heal_due) >= MAX_HEAL_ENTRIES:
                del self._heal_due[next(iter(self._heal_due))]
        self._heal_due.pop(key, None)
        self._heal_due[key] = now_ms + HEAL_INTERVAL_MS
        return True

    def _announce_to(self, key: bytes, now_ms: int) -> list[Out]:
        """Member ``key`` refused our call: it does not know us.

        A joiner announces itself by pushing its own record (its chain is its
        credential, :meth:`_answer`); when those pushes all failed (100 daemons
        on 2 cores), every member refused it for good. So a refusal is answered
        with our record, at most once per member per :data:`HEAL_INTERVAL_MS`,
        while we are a member that has not left. An evicted node is refused again.
        """
        own = self.mesh.record(self.key)
        if not self.mesh.admission or own is None or own.left or self.evicted:
            return []
        if not self._heal_slot(key, now_ms):
            return []
        # not elided (no now_ms): the member does not know us, nor our chain
        return self._push_calls([key], frozenset({self.key}))

    # -- replies to our requests -------------------------------------------------------------
    def handle_reply(self, to: bytes, ctx: CallCtx, reply: Message, now_ms: int) -> list[Out]:
        """The reply ``reply`` of member ``to`` to our call with context ``ctx``."""
        self.tags.note_reply(to, reply, record_version(self.mesh, to))
        if isinstance(ctx, RelayCtx):  # a relayed ping: answer the PingReq
            ok = isinstance(reply, Ack) and reply.ok
            return [Respond(ctx.request_id, Ack(IN_REPLY, ctx.probe_id, ok))]
        if isinstance(reply, Refusal | Push):  # a Push shows us evicted (core.evicted)
            told = self._told(reply, now_ms)
            # Our peer no longer serves us (it left, or lost us): a failure, or the
            # ping stays in flight forever and the client never moves nor pulls.
            if isinstance(ctx, PeerPingCtx):
                return told + self.handle_failure(to, ctx, now_ms)
            return told + self._announce_to(to, now_ms)
        if not isinstance(ctx, ProbeCtx):
            self._fd.heard_from(to, now_ms)
        if isinstance(ctx, ProbeCtx):
            if isinstance(reply, Ack) and reply.ok:
                self._fd.on_ack(ctx.target, ctx.probe_id, now_ms)
            return self._heard_from_pruned(to, now_ms)
        if isinstance(ctx, PeerPingCtx):
            return self._peer_acked(ctx.peer, now_ms, reply)
        if isinstance(ctx, SyncCtx):
            if not isinstance(reply, SyncStart | SyncStep | SyncEnd):
                return []
            down = pruners_of(self.mesh, reply.items) if isinstance(reply, SyncStep) else {}
            nxt, merged = ctx.session.receive(reply, now_ms)
            self._count_rejects(ctx.session.take_errors())
            out = self._merged(set(merged), down, now_ms, to)
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
        return self._push_feedback(to, ctx, reply, now_ms)

    def _push_feedback(self, to: bytes, ctx: CallCtx, reply: Message, now_ms: int) -> list[Out]:
        """The answer to our push or offer.

        ``Ack(ok=False)`` says the target held the pushed items all; a ``Want``
        names the offered keys it lacks: those go to it in a ``Push`` now
        (their current items; a key we did not offer is ignored), and the
        others count as held.
        """
        if isinstance(ctx, PushCtx) and isinstance(reply, Ack):
            self.tags.note_push_ack(to, reply, record_version(self.mesh, to))
            if not reply.ok:
                # fewer push rounds for these items (rumour mongering with feedback)
                self._sched.lose_interest(ctx.keys)
            return self._tree_answered(to, ctx, reply.probe_id, now_ms)
        elif isinstance(ctx, OfferCtx) and isinstance(reply, Want):
            whole, news = wanted_parts(ctx.keys, reply)
            held = ctx.keys - whole - news
            if held:
                self._sched.lose_interest(held)
            # hops MAX_HOPS: late in the change's spread (the target offers it
            # in its rounds); whole entries where the target lacks the record
            return self._push_calls([to], whole | news, MAX_HOPS, whole=whole, now_ms=now_ms)
        return []

    def handle_failure(self, to: bytes, ctx: CallCtx, now_ms: int) -> list[Out]:
        """Our call to ``to`` with context ``ctx`` failed (no answer)."""
        if isinstance(ctx, RelayCtx):
            return [Respond(ctx.request_id, Ack(IN_REPLY, ctx.probe_id, False))]
        if isinstance(ctx, PushCtx) and ctx.deltas:
            # an older node refuses a push it cannot decode: whole records to
            # it, until an ack of a push says it takes deltas (core.delta)
            self.tags.note_delta_failed(to, record_version(self.mesh, to))
        if isinstance(ctx, PushCtx) and ctx.tree:
            return self._tree_failed(to, ctx, now_ms)
        if isinstance(ctx, PeerPingCtx):
            return self._peer_ping_failed(ctx.peer, now_ms)
        return []
