"""Tree-shaped dissemination: forwards along a spanning tree (a mixin of ``MeshNode``). Pure.

An option (``GossipParams.dissemination == "tree"``; docs/SCALE.md, section
15). Push gossip forwards every received change to ``branch`` random
members, so each node receives each change about twice in full and three or
four times in offers. Here a node forwards it, in full, to its *tree
neighbours* (``core.tree``: its parent and children in a spanning tree of the
key space every member computes from its own view), less the member it came
from: with views that agree, each node receives each change once, the eager
path of Plumtree (Leitão et al. 2007) over a tree no message builds.

Everything else stays: records are signed and verified as ever (a forward
is a ``Push``), received items are held for ``batch_ms`` after a push and go
together (Nagle's rule; each held key remembers the member it came from, who
is not sent it back), and the periodic rounds offer fresh keys to random
members (``round_fanout`` of them for ``infection_count`` rounds): the lazy
path that repairs what the tree missed (views that disagree, a lost push, a
member that drops what it should forward), with the background pull behind it.

A push along the tree that fails (no answer at the RPC timeout) marks its
target *down* in this node's tree for :data:`DOWN_MS`, or until the target
is heard from: the next member of its part takes its place, and gets the
failed push's keys at once; the target gets them once more (a lost datagram,
not a crash: that retry's answer clears the mark). A crashed member's
neighbours thus route around it one timeout after their first push to it,
long before its prune arrives. Clients forward as in push gossip.

A mark is a guess from one failed push, and ends at the first sign of life:
the member heard from, a new record it signed (a refutation, an update), or
its answer to a push along the tree, which goes to it again every
:data:`DOWN_RETRY_MS` while it is held live. When it answers, it is offered
the keys pushed along the tree while it was routed around. Without these, a
partition's failed pushes kept the members of the other side out of their
neighbours' trees for up to ``DOWN_MS`` after the cut had healed, and they
heard nothing along the tree until a pull (docs/SCALE.md, section 19).

Most pushes along the tree ask for no answer (``Call.unanswered``): its
``Ack`` was a datagram for each push, 10 % of a node's bytes at 1,000
simulated members and 60 %/min churn. A push to a neighbour that
acknowledged one within :data:`ANSWERED_EVERY_MS`, saying it takes pushes
unanswered (:data:`TAKES_UNANSWERED` in the ack), goes unanswered; the
first after that asks for an answer again, so a neighbour that crashed is
found at most that long later than before, and the keys pushed to it
unanswered since its last answer go with the failed push's to the member
that takes its place. A push lost on the way is repaired by the lazy path.

A mesh may mix the two disseminations (members switched one at a time, or
set apart by hand): a gossip member placed in the tree forwards nothing
along it, and its part would hear a change only from the random pushes and
the lazy path (docs/SCALE.md, section 18). A member that forwards along the
tree says so in its push acks (:data:`FORWARDS_TREE`); a tree neighbour
whose ack does not is *plain* for :data:`PLAIN_MS`: routed around as a down
one is (the next member of its part takes its place), and still pushed to,
as a member next to it in the tree, so that it hears each change too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from smegmesh.core.buckets import shifted
from smegmesh.core.delta import TAKES_DELTAS, TAKES_SHORT
from smegmesh.core.engine import Call, MeshSettings, Out, PushCtx
from smegmesh.core.gossip import GossipParams, GossipScheduler
from smegmesh.core.liveness import FailureDetector
from smegmesh.core.nodeviews import Views
from smegmesh.core.offer import MAX_HOPS
from smegmesh.core.record import Role
from smegmesh.core.tree import tree_neighbours

if TYPE_CHECKING:
    from smegmesh.core.state import MeshState

__all__ = [
    "ANSWERED_EVERY_MS",
    "DOWN_MS",
    "DOWN_RETRY_MS",
    "FORWARDS_TREE",
    "PLAIN_MS",
    "TAKES_UNANSWERED",
    "TreeState",
    "TreecastMixin",
]

#: A tree neighbour whose push failed is routed around this long, unless heard from.
DOWN_MS = 10_000
#: A member routed around as down gets one of the pushes along the tree again
#: at most this often, asking for an answer: the answer ends the mark (a cut
#: healed; its part heard nothing along the tree until the mark's end).
DOWN_RETRY_MS = 2_000
#: A push along the tree asks its target for an answer at least this often.
ANSWERED_EVERY_MS = 1_000
#: In a push's ``Ack`` (``probe_id``, beside ``delta.TAKES_DELTAS``): the
#: sender takes pushes that ask for no answer.
TAKES_UNANSWERED = 2
#: In a push's ``Ack`` (``probe_id``): the sender forwards what it receives
#: along the tree (its ``dissemination`` is ``tree``, and it is no client).
FORWARDS_TREE = 8
#: A tree neighbour whose ack said it does not forward along the tree is
#: routed around this long (renewed by each such ack; ended by one that does).
PLAIN_MS = 60_000
#: Keys remembered per neighbour as pushed unanswered since its last answer.
MAX_UNANSWERED_KEYS = 512
#: Members remembered as plain (not forwarding along the tree) at most.
MAX_PLAIN = 64


@dataclass(slots=True)
class TreeState:
    """One node's memory of its tree (a field of ``MeshNode``)."""

    #: member -> when a push along the tree to it failed
    down: dict[bytes, int] = field(default_factory=dict)
    #: down member -> when a push last went to it again (:data:`DOWN_RETRY_MS`)
    retried: dict[bytes, int] = field(default_factory=dict)
    #: down member -> (since, keys pushed along the tree while it was routed
    #: around): offered to it when it answers again (at most
    #: MAX_UNANSWERED_KEYS keys each, MAX_PLAIN members)
    missed: dict[bytes, tuple[int, set[bytes]]] = field(default_factory=dict)
    #: held (batched) key -> the member it came from (None: our own, or a sync's)
    came_from: dict[bytes, bytes | None] = field(default_factory=dict)
    #: the last neighbours computed, and of what (views' reach version, peers, routed around)
    cached: tuple[tuple[int, int, frozenset[bytes]], list[bytes]] | None = None
    #: the last plain members found next to this node (``_tree_push_targets``), and of what
    plain_cached: tuple[tuple[int, int, frozenset[bytes]], list[bytes]] | None = None
    #: neighbour -> when it last answered a push saying it takes them unanswered
    answered: dict[bytes, int] = field(default_factory=dict)
    #: neighbour -> keys pushed to it unanswered since (at most MAX_UNANSWERED_KEYS)
    unanswered: dict[bytes, set[bytes]] = field(default_factory=dict)
    #: neighbour -> when its ack last said it does not forward along the tree
    plain: dict[bytes, int] = field(default_factory=dict)


class TreecastMixin:
    """See the module docstring; ``MeshNode`` provides the state and outputs."""

    gossip: GossipParams
    settings: MeshSettings
    _sched: GossipScheduler
    _fd: FailureDetector
    _treecast: TreeState

    if TYPE_CHECKING:

        @property
        def key(self) -> bytes: ...  # noqa: D102
        @property
        def mesh(self) -> MeshState: ...  # noqa: D102
        def _reachable_peers(self) -> list[bytes]: ...
        def _views(self) -> Views: ...
        def _gossip_calls(
            self,
            to: Sequence[bytes],
            keys: frozenset[bytes],
            full: int,
            hops: int = ...,
            now_ms: int | None = None,
        ) -> list[Out]: ...
        def _push_calls(
            self,
            to: Iterable[bytes],
            keys: frozenset[bytes],
            hops: int = 0,
            whole: frozenset[bytes] = frozenset(),
            now_ms: int | None = None,
        ) -> list[Out]: ...

    @property
    def forwards_tree(self) -> bool:
        """Whether received items go along the tree here (clients forward as in gossip)."""
        return self.gossip.dissemination == "tree" and self.settings.role != Role.CLIENT

    def _tree_clock_stepped(self, delta_ms: int) -> None:
        """The wall clock was stepped: the *down* marks move with it (``clock_stepped``)."""
        t = self._treecast
        t.down = shifted(t.down, delta_ms)
        t.retried = shifted(t.retried, delta_ms)
        t.missed = {k: (at + delta_ms, ks) for k, (at, ks) in t.missed.items()}
        t.answered = shifted(t.answered, delta_ms)
        t.plain = shifted(t.plain, delta_ms)

    def _push_ack_words(self) -> int:
        """What a push's ``Ack`` says of this node (``probe_id``; see ``core.delta`` too)."""
        words = TAKES_DELTAS | TAKES_UNANSWERED | TAKES_SHORT
        return words | FORWARDS_TREE if self.forwards_tree else words

    def _tree_plain(self, now_ms: int) -> set[bytes]:
        """The neighbours routed around now as not forwarding along the tree (:data:`PLAIN_MS`)."""
        t = self._treecast
        for k in [k for k, at in t.plain.items() if now_ms - at >= PLAIN_MS]:
            del t.plain[k]
        return set(t.plain)

    def _tree_down(self, now_ms: int) -> set[bytes]:
        """The members routed around now (see :data:`DOWN_MS`); expired marks dropped."""
        t = self._treecast
        if not t.down:
            return set()
        out: set[bytes] = set()
        for k, at in list(t.down.items()):
            heard = self._fd.last_heard(k)
            if now_ms - at >= DOWN_MS or (heard is not None and heard > at):
                del t.down[k]
            else:
                out.add(k)
        return out

    def _tree_signed(self, key: bytes) -> None:
        """A new record ``key`` signed arrived: alive, whatever a failed push guessed."""
        self._treecast.down.pop(key, None)

    def tree_targets(self, now_ms: int, down: Iterable[bytes] | None = None) -> list[bytes]:
        """This node's tree neighbours now: its parent and children (``core.tree``).

        Routed around: ``down``, by default the members down and plain now.
        """
        if down is None:
            down = self._tree_down(now_ms) | self._tree_plain(now_ms)
        dn = frozenset(down)
        peers = self._reachable_peers()
        t = self._treecast
        of = (self._views().reach_version, len(peers), dn)
        if t.cached is not None and t.cached[0] == of:
            return list(t.cached[1])
        out = self._tree_around(peers, dn)
        t.cached = (of, out)
        return list(out)

    def _tree_around(self, peers: list[bytes], down: frozenset[bytes]) -> list[bytes]:
        parent, children = tree_neighbours(self.key, peers, self.key, self.gossip.tree_fanout, down)
        return [parent, *children] if parent is not None else list(children)

    def _tree_push_targets(self, now_ms: int) -> list[bytes]:
        """The tree neighbours, and the plain members that would be ones.

        Those that would be were nothing routed around first, then those that
        would be were each the only plain one (so a plain member whose own
        neighbours are plain too still hears each change from a member next
        to it), at most as many as a member has neighbours (a node among
        many plain ones would otherwise push to all it routed around).
        """
        out = self.tree_targets(now_ms)
        plain = frozenset(self._tree_plain(now_ms))
        if not plain:
            return out
        down = frozenset(self._tree_down(now_ms)) | plain
        peers = self._reachable_peers()
        t = self._treecast
        of = (self._views().reach_version, len(peers), down)
        if t.plain_cached is None or t.plain_cached[0] != of:
            real = down - plain
            near = [k for k in self._tree_around(peers, real) if k in plain]
            alone = (k for k in plain - set(near) if k in self._tree_around(peers, down - {k}))
            near += sorted(alone)
            t.plain_cached = (of, near[: self.gossip.tree_fanout + 1])  # a neighbour's worth
        return out + [k for k in t.plain_cached[1] if k not in out]

    def _tree_push(
        self,
        keys: Iterable[bytes],
        exclude: Sequence[bytes],
        now_ms: int,
        own: bool,
        hops: int = 0,
        batched: bool = False,
        revived: frozenset[bytes] = frozenset(),
    ) -> list[Out]:
        """``MeshNode._push_now`` along the tree: ``own`` changes at once, received ones batched."""
        t = self._treecast
        src = exclude[0] if exclude else None
        ks = list(keys)
        if batched:
            came = {k: t.came_from.pop(k, None) for k in ks}
        else:
            if not own:
                ks = self._sched.throttle(ks, now_ms, revived)
                if ks and self._sched.hold(ks, hops, now_ms):
                    for k in ks:
                        t.came_from.setdefault(k, src)
                    return []
            came = dict.fromkeys(ks, src)
        if not ks:
            return []
        self._sched.note_fresh(ks)  # the lazy path: offers in the periodic rounds
        groups: dict[frozenset[bytes], list[bytes]] = {}
        for to in self._tree_push_targets(now_ms):
            sent = frozenset(k for k in ks if came[k] != to)
            if sent:
                groups.setdefault(sent, []).append(to)
        out: list[Out] = []
        for sent, tos in groups.items():
            out.extend(self._tree_calls(tos, sent, min(hops, MAX_HOPS), now_ms, 1))
        down = self._tree_down(now_ms)
        self._tree_note_missed(down, ks, now_ms)
        for to in self._tree_retry_due(down, now_ms):
            sent = frozenset(k for k in ks if came[k] != to)
            out.extend(self._tree_calls([to], sent, min(hops, MAX_HOPS), now_ms, 2) if sent else [])
        return out

    def _tree_note_missed(self, down: set[bytes], keys: list[bytes], now_ms: int) -> None:
        """``keys`` went along the tree around the ``down`` members: each is told when back.

        Pruned here since its mark or not: a member of the other side of a
        cut is marked, then pruned; back, it catches up at its first answer
        (:meth:`_tree_answered`) instead of at its next pull.
        """
        t = self._treecast
        for k in [k for k, (at, _) in t.missed.items() if now_ms - at >= 2 * DOWN_MS]:
            del t.missed[k]  # it never answered a push of ours again
        for k in sorted(down):
            if k in t.missed or len(t.missed) < MAX_PLAIN:
                held = t.missed.setdefault(k, (t.down[k], set()))[1]
                if len(held) + len(keys) <= MAX_UNANSWERED_KEYS:
                    held.update(keys)

    def _tree_retry_due(self, down: set[bytes], now_ms: int) -> list[bytes]:
        """The ``down`` members held live that get this push again (:data:`DOWN_RETRY_MS`).

        A mark is a guess from one failed push. When the cut it came from
        heals, the member is heard from only if it calls us: its answer to
        this push ends the mark, a second after it instead of at ``DOWN_MS``.
        """
        t = self._treecast
        for k in [k for k in t.retried if k not in down]:
            del t.retried[k]
        live = sorted(k for k in down if self.mesh.live_record(k) is not None)
        due = [
            k for k in live if now_ms - max(t.down[k], t.retried.get(k, t.down[k])) >= DOWN_RETRY_MS
        ][: self.gossip.tree_fanout + 1]
        for k in due:
            t.retried[k] = now_ms
        return due

    def _tree_calls(
        self, to: Sequence[bytes], keys: frozenset[bytes], hops: int, now_ms: int, tree: int
    ) -> list[Out]:
        out = self._push_calls(to, keys, hops, now_ms=now_ms)
        t = self._treecast
        if len(t.answered) > 64:  # neighbours come and go: forget the stale ones
            for k in [k for k, at in t.answered.items() if now_ms - at >= ANSWERED_EVERY_MS]:
                del t.answered[k]
                t.unanswered.pop(k, None)
        calls: list[Out] = []
        for c in out:
            if isinstance(c, Call) and isinstance(c.ctx, PushCtx):
                at = t.answered.get(c.to)
                quiet = tree == 1 and at is not None and now_ms - at < ANSWERED_EVERY_MS
                if quiet:
                    held = t.unanswered.setdefault(c.to, set())
                    if len(held) + len(c.ctx.keys) <= MAX_UNANSWERED_KEYS:
                        held |= c.ctx.keys
                c = replace(c, ctx=replace(c.ctx, tree=tree), unanswered=quiet)
            calls.append(c)
        return calls

    def _tree_answered(self, to: bytes, ctx: PushCtx, probe_id: int, now_ms: int) -> list[Out]:
        """``to`` acknowledged a push of ours along the tree (``probe_id``: the ack's words).

        An ack that first says ``to`` does not forward along the tree makes it
        plain: the push's keys go at once to the members that take its place.
        """
        if not ctx.tree:
            return []
        t = self._treecast
        back = t.missed.pop(to, None)  # down until now: offered what went by meanwhile
        told = self._gossip_calls([to], frozenset(back[1]), 0, now_ms=now_ms) if back else []
        return told + self._tree_acked(to, ctx, probe_id, now_ms)

    def _tree_acked(self, to: bytes, ctx: PushCtx, probe_id: int, now_ms: int) -> list[Out]:
        """What the ack's words say of ``to``: it takes pushes unanswered, it forwards."""
        t = self._treecast
        missed = t.unanswered.pop(to, set())
        if probe_id & TAKES_UNANSWERED:
            t.answered[to] = now_ms
        else:
            t.answered.pop(to, None)
        if probe_id & FORWARDS_TREE or not self.forwards_tree:
            t.plain.pop(to, None)
        elif to in t.plain:
            t.plain[to] = now_ms
        elif len(t.plain) < MAX_PLAIN:
            return self._tree_reroute(to, ctx.keys | missed, now_ms, t.plain)
        return []

    def _tree_failed(self, to: bytes, ctx: PushCtx, now_ms: int) -> list[Out]:
        """A push along the tree to ``to`` failed: route around it, and try it once more."""
        if ctx.tree != 1 or not self.forwards_tree:
            return []
        t = self._treecast
        t.answered.pop(to, None)
        keys = ctx.keys | t.unanswered.pop(to, set())  # what it may have missed since
        instead = self._tree_reroute(to, keys, now_ms, t.down)
        return instead + self._tree_calls([to], keys, 1, now_ms, 2)

    def _tree_reroute(
        self, to: bytes, keys: frozenset[bytes], now_ms: int, mark: dict[bytes, int]
    ) -> list[Out]:
        """Route around ``to`` (``mark``: down or plain) and push ``keys`` to those in its place."""
        routed = (self._tree_down(now_ms) - {to}) | self._tree_plain(now_ms)  # a plain one stays
        before = set(self.tree_targets(now_ms, routed))
        mark[to] = now_ms
        instead = [k for k in self.tree_targets(now_ms, routed | {to}) if k not in before]
        return self._tree_calls(instead, keys, 1, now_ms, 1)
