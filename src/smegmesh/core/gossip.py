"""Gossip scheduling (SPEC §3): who to talk to, and when. Pure; time is an argument.

Members are grouped into clusters of ``cluster_size`` by key order. A node
holding *fresh* items (changed recently, its own or received) pushes them to
``branch`` random members of its cluster -- one of them, with probability
``inter_cluster_chance``, from another cluster -- right away when they arrive
(triggered push) and then once every ``sync_interval`` for ``infection_count``
rounds. A node with nothing fresh pulls (digest anti-entropy) from one random
member every ``pull_interval``. Of a round's targets, ``full_push`` get the
items and the others an offer of their keys (``core.offer``), except for a
node's own changes, which every target gets in full. Clients talk only to (up to two) peers.

The scheduler decides; the caller builds and sends messages. It holds no
mesh state itself: the current member list is passed in on every call.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import overload

#: Pushes of an item that found their target holding it, per push round the
#: item loses (see ``GossipScheduler.lose_interest``).
LOSE_INTEREST_AFTER = 2
#: Triggered pushes of one received key per ``infection_count`` sync
#: intervals (see ``GossipScheduler.throttle``): prunes and their refutation
#: (2 in a 1,000-node churn lost 4 restarts of 39,000; 3 changed nothing).
TRIGGERS_PER_KEY = 3


@dataclass(frozen=True, slots=True)
class GossipParams:
    sync_interval_ms: int = 1_000
    pull_interval_ms: int = 3_000
    cluster_size: int = 64
    inter_cluster_chance: float = 0.15
    branch: int = 3
    infection_count: int = 3
    #: Targets of a round of *received* items that get the items themselves;
    #: the others get an ``Offer`` of their keys and pull what they lack
    #: (``core.offer``). A node's own changes go in full to every target.
    #: ``branch`` or more: push everything in full (the protocol before offers).
    full_push: int = 2
    #: Targets of a periodic round (``infection_count`` rounds of offers after
    #: the triggered push); None: ``branch``. Fewer save offers under churn
    #: (1 at 1,000 simulated nodes: 13 % fewer bytes) but slow the tail of a
    #: change (p99 850 -> 1,911 ms) and of a crash's prune (p99 5,073 ->
    #: 6,008 ms; docs/SCALE.md, section 6).
    round_fanout: int | None = None
    #: Received items arriving within this long of the last push of received
    #: items are held and pushed together when it is over (Nagle's rule: a
    #: storm of changes costs one message per target per ``batch_ms``, a lone
    #: change goes at once). 0: push each at once.
    batch_ms: int = 100
    #: How received items are forwarded: ``gossip`` (to random members, as
    #: above) or ``tree`` (to the node's parent and children in a spanning tree
    #: of the key space, ``core.tree``; the periodic rounds stay, as the lazy
    #: repair path). An option, off by default (docs/SCALE.md, section 15).
    dissemination: str = "gossip"
    #: Children per member in the tree (``dissemination == "tree"``).
    tree_fanout: int = 4

    def __post_init__(self) -> None:
        if self.sync_interval_ms <= 0 or self.pull_interval_ms <= 0:
            raise ValueError("gossip intervals must be positive")
        if self.cluster_size < 1 or self.branch < 1 or self.infection_count < 0:
            raise ValueError("clusterSize and branch must be >= 1, infectionCount >= 0")
        if self.full_push < 0 or self.batch_ms < 0:
            raise ValueError("full_push and batch_ms must be >= 0")
        if self.round_fanout is not None and self.round_fanout < 1:
            raise ValueError("round_fanout must be >= 1")
        if self.dissemination not in ("gossip", "tree") or self.tree_fanout < 1:
            raise ValueError("dissemination must be gossip or tree, tree_fanout >= 1")
        if not 0.0 <= self.inter_cluster_chance <= 1.0:
            raise ValueError("interClusterChance must be within [0, 1]")

    def lazy_tree(self, *, keep_infection_count: bool = False) -> GossipParams:
        """These parameters with ``tree`` dissemination as measured (docs/SCALE.md, 15).

        The periodic rounds are then the lazy repair path only: one random
        member each (``round_fanout`` 1), for one round unless
        ``keep_infection_count`` (a user set it); see :meth:`as_dissemination`.
        """
        return replace(
            self,
            dissemination="tree",
            round_fanout=1,
            infection_count=self.infection_count if keep_infection_count else 1,
        )

    def as_dissemination(self, how: str, *, keep_infection_count: bool = False) -> GossipParams:
        """These parameters as smegd's ``dissemination: how`` gives them.

        ``tree``: :meth:`lazy_tree`; ``gossip``: the default periodic rounds
        (``branch`` targets, three rounds unless ``keep_infection_count``).
        smegd, the swarm's members and the simulator (its members of either
        setting, ``--mixed-share``) take this one rule.
        """
        if how == "tree":
            return self.lazy_tree(keep_infection_count=keep_infection_count)
        rounds = self.infection_count if keep_infection_count else GossipParams().infection_count
        return replace(self, dissemination=how, round_fanout=None, infection_count=rounds)


def full_hops(members: int, branch: int) -> int:
    """Hop counts up to which received items are still forwarded in full to every target.

    A change made by one node and forwarded in full to ``branch`` targets at
    each hop has reached about ``branch ** (h + 1)`` nodes after its ``h``-th
    forward; while that is at most a third of the ``members``, most targets
    lack it and a full push is no waste. Later, most would hold it already:
    one target gets it in full, the others an offer (``core.offer``). At
    least 1: the first forward is in full (3 at 100 members, 4 at 1,000, 5 at
    3,000 with ``branch`` 3).
    """
    if branch <= 1:
        return 1
    h = 0
    while branch ** (h + 2) * 3 <= members:
        h += 1
    return max(1, h)


#: Probability that a background pull goes to a pruned (not departed) member:
#: at least PULL_PRUNED_CHANCE, more when many members are pruned (see
#: :func:`pull_pruned_chance`), at most PULL_PRUNED_MAX.
PULL_PRUNED_CHANCE = 0.25
PULL_PRUNED_MAX = 0.5


def pull_pruned_chance(pruned: int, reachable: int) -> float:
    """Probability that a background pull goes to one of ``pruned`` members.

    ``reachable``: the other members a pull may go to. A partition is healed by
    a pull across it (each side holds the other as pruned and calls nobody
    there otherwise), so the chance grows with the share of those members
    pruned, ``pruned / (pruned + reachable)``, as Serf's reconnect does: a
    2 | 2 split pulls across on every second round (not every fourth: a heal
    after the cut ended took over 10 s in 5 % of simulated 4-node runs),
    while a large mesh under churn, whose pruned members are mostly gone for
    good, keeps PULL_PRUNED_CHANCE. The pulls left for the own side are at
    least half.
    """
    if pruned <= 0:
        return 0.0
    return min(PULL_PRUNED_MAX, max(PULL_PRUNED_CHANCE, pruned / (pruned + reachable)))


class _Without(Sequence[bytes]):
    """``keys`` without the slice ``[lo, hi)``, as a sequence: O(1) to make and index."""

    __slots__ = ("_gap", "_keys", "_len", "_lo")

    def __init__(self, keys: Sequence[bytes], lo: int, hi: int) -> None:
        self._keys, self._lo, self._gap = keys, lo, hi - lo
        self._len = len(keys) - self._gap

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._len))]
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        return self._keys[i if i < self._lo else i + self._gap]


@dataclass(frozen=True, slots=True)
class Round:
    """What to do now: push ``keys`` to ``push_to``; pull from ``pull_from``."""

    push_to: tuple[bytes, ...] = ()
    keys: frozenset[bytes] = frozenset()
    pull_from: bytes | None = None


@dataclass(slots=True)
class GossipScheduler:
    """Per-mesh gossip timing for one node."""

    self_key: bytes
    params: GossipParams
    rng: random.Random
    #: key -> push rounds left for that item
    _fresh: dict[bytes, int] = field(default_factory=dict)
    #: key -> pushes of it that found the target holding it (see lose_interest)
    _misses: dict[bytes, int] = field(default_factory=dict)
    _next_sync_ms: int | None = None
    _next_pull_ms: int | None = None
    _pull_due_ms: int = 0  # when the next pull was first due (postponed from)
    #: last push of received items (see ``hold``); held keys -> fewest hops
    _last_trigger_ms: int | None = None
    _held: dict[bytes, int] = field(default_factory=dict)
    _held_due: int | None = None
    #: received key -> (start of its window, triggered pushes in it); see throttle
    _triggers: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    _triggers_kept: int = 0  # entries after the last sweep of expired ones

    # -- inputs -------------------------------------------------------------
    def note_fresh(self, keys: Iterable[bytes]) -> None:
        """Items for ``keys`` changed: gossip them for ``infection_count`` more rounds."""
        for k in keys:
            self._fresh[k] = self.params.infection_count
            self._misses.pop(k, None)

    def lose_interest(self, keys: Iterable[bytes]) -> None:
        """A push of ``keys`` found its target holding them all.

        Rumour mongering with feedback (Demers et al. 1987): an item the
        targets already hold has spread; pushing it for every remaining round
        only repeats it (under churn and after a partition, most push bytes).
        Every :data:`LOSE_INTEREST_AFTER` such answers cost the item one push
        round. The tail it may miss is the background pull's (``pull_interval``).
        """
        fresh, misses, per_round = self._fresh, self._misses, LOSE_INTEREST_AFTER
        for k in keys:
            left = fresh.get(k)
            if left is None:
                continue
            m = misses.get(k, 0) + 1
            if m < per_round:
                misses[k] = m
                continue
            misses.pop(k, None)
            if left <= 1:
                del fresh[k]
            else:
                fresh[k] = left - 1

    def throttle(
        self, keys: Iterable[bytes], now_ms: int, exempt: frozenset[bytes] = frozenset()
    ) -> list[bytes]:
        """The received ``keys`` that may be pushed now; the others wait for the rounds.

        A key is pushed at once (triggered) at most :data:`TRIGGERS_PER_KEY`
        times per window of ``infection_count`` sync intervals; a later change
        within the window is only noted fresh, so the periodic rounds carry its
        latest version. A member publishing versions of its record without end
        made every node forward each of them at once (50 a second: 10x the
        bytes of one a second, at every member); honest keys change once or
        twice in a window (a prune, its refutation). O(1) per key; the table
        holds the keys triggered in the last window. ``exempt`` keys (members
        just back alive: a refutation) always go at once.
        """
        window = self.params.sync_interval_ms * max(1, self.params.infection_count)
        t = self._triggers
        if len(t) > 2 * self._triggers_kept + 64:
            self._triggers = t = {k: v for k, v in t.items() if now_ms - v[0] < window}
            self._triggers_kept = len(t)
        out: list[bytes] = []
        late: list[bytes] = []
        for k in keys:
            if k in exempt:
                out.append(k)
                continue
            start, n = t.get(k, (now_ms, 0))
            if now_ms - start >= window:
                start, n = now_ms, 0
            if n >= TRIGGERS_PER_KEY:
                late.append(k)
                continue
            t[k] = (start, n + 1)
            out.append(k)
        if late:
            self.note_fresh(late)
        return out

    @property
    def fresh_keys(self) -> frozenset[bytes]:
        return frozenset(self._fresh)

    def retune(self, params: GossipParams, now_ms: int) -> None:
        """Use ``params`` from now on (a configuration reload): shorter intervals apply now."""
        self.params = params
        if self._next_sync_ms is not None:
            self._next_sync_ms = min(self._next_sync_ms, now_ms + params.sync_interval_ms)
        if self._next_pull_ms is not None:
            self._next_pull_ms = min(self._next_pull_ms, now_ms + params.pull_interval_ms)

    def clock_stepped(self, delta_ms: int) -> None:
        """The wall clock was stepped by ``delta_ms``: the rounds' times move with it.

        Set back an hour, no round, push or pull was due for an hour.
        """
        d = delta_ms
        if self._next_sync_ms is not None:
            self._next_sync_ms += d
        if self._next_pull_ms is not None:
            self._next_pull_ms += d
        self._pull_due_ms += d
        if self._last_trigger_ms is not None:
            self._last_trigger_ms += d
        if self._held_due is not None:
            self._held_due += d
        self._triggers = {k: (start + d, n) for k, (start, n) in self._triggers.items()}

    # -- target selection ---------------------------------------------------
    def targets(
        self,
        peers: Sequence[bytes],
        *,
        is_client: bool = False,
        client_peers: Sequence[bytes] = (),
        exclude: Iterable[bytes] = (),
        count: int | None = None,
    ) -> tuple[bytes, ...]:
        """Choose up to ``count`` (default ``branch``) push targets.

        ``peers`` are the live members other nodes can reach (not clients),
        sorted (the views' reachable list is). A client pushes only to
        ``client_peers`` (its assigned peer and a spare).
        """
        excluded = set(exclude) | {self.self_key}
        want = self.params.branch if count is None else count
        if is_client:
            return tuple(p for p in client_peers if p not in excluded)[
                : 2 if count is None else min(2, count)
            ]
        own, rest = self._split(peers)
        chosen: list[bytes] = []
        if rest and (not own or self.rng.random() < self.params.inter_cluster_chance):
            chosen.extend(self._pick(rest, 1, excluded, chosen))
        chosen.extend(self._pick(own, want - len(chosen), excluded, chosen))
        if len(chosen) < want and rest:
            chosen.extend(self._pick(rest, want - len(chosen), excluded, chosen))
        return tuple(chosen)

    def _pick(
        self, pool: Sequence[bytes], n: int, excluded: set[bytes], taken: Sequence[bytes]
    ) -> list[bytes]:
        """Up to ``n`` distinct random members of ``pool`` not excluded nor taken.

        O(n) for a large pool (rejection sampling), exact for a small one.
        """
        if n <= 0 or not pool:
            return []
        if len(pool) <= 4 * (n + len(excluded) + len(taken)) + 8:
            cands = [k for k in pool if k not in excluded and k not in taken]
            return self.rng.sample(cands, min(n, len(cands)))
        out: list[bytes] = []
        for _ in range(20 * n + 20):
            k = pool[self.rng.randrange(len(pool))]
            if k not in excluded and k not in taken and k not in out:
                out.append(k)
                if len(out) == n:
                    break
        return out

    def _split(self, peers: Sequence[bytes]) -> tuple[list[bytes], Sequence[bytes]]:
        """(my cluster, every other member) of the sorted ``peers``: O(cluster_size + log N).

        Members and self, in key order, cut into clusters of ``cluster_size``.
        Nothing is built but my cluster: the rest is ``peers`` without my
        cluster's slice (:class:`_Without`), so a change of membership costs
        nothing here (a sorted copy and two slices of the whole list were
        ~0.1 ms at 3,000 members, per change of membership; before that the
        clusters built, ~1.4 ms).
        """
        i = bisect.bisect_left(peers, self.self_key)
        listed = i < len(peers) and peers[i] == self.self_key
        size = self.params.cluster_size
        lo = i - i % size  # my cluster in key order with self: [lo, lo + size)
        if listed:
            own = list(peers[lo:i]) + list(peers[i + 1 : lo + size])
            hi = lo + size
        else:  # self would be at i: the cluster holds size - 1 of peers
            hi = lo + size - 1
            own = list(peers[lo:hi])
        return own, _Without(peers, lo, min(hi, len(peers)))

    # -- timing ---------------------------------------------------------------
    def busy(self, now_ms: int) -> bool:
        """Whether other changes spread now.

        True when received items past their first hops were pushed (or held,
        :meth:`hold`) less than a sync interval ago.
        """
        last = self._last_trigger_ms
        return last is not None and now_ms - last < self.params.sync_interval_ms

    def hold(self, keys: Iterable[bytes], hops: int, now_ms: int) -> bool:
        """Whether received ``keys`` (to forward at ``hops``) wait for a batched push.

        True when received items were pushed less than ``batch_ms`` ago: the
        keys are held (with the fewest hops asked for) until :meth:`release`.
        False: push them now (this counts as the last push).
        """
        last, batch = self._last_trigger_ms, self.params.batch_ms
        if batch <= 0 or last is None or now_ms - last >= batch:
            self._last_trigger_ms = now_ms
            return False
        held = self._held
        for k in keys:
            held[k] = min(held.get(k, hops), hops)
        if self._held_due is None:
            self._held_due = last + batch
        return True

    def release(self, now_ms: int) -> tuple[frozenset[bytes], int] | None:
        """The held keys and their fewest hops, once their batch is due (else None)."""
        if self._held_due is None or now_ms < self._held_due:
            return None
        keys, hops = frozenset(self._held), min(self._held.values(), default=0)
        self._held.clear()
        self._held_due = None
        self._last_trigger_ms = now_ms
        return (keys, hops) if keys else None

    def triggered(
        self,
        keys: Iterable[bytes],
        peers: Sequence[bytes],
        *,
        is_client: bool = False,
        client_peers: Sequence[bytes] = (),
        exclude: Iterable[bytes] = (),
    ) -> Round:
        """Fresh items just arrived: push them now (and mark them for later rounds)."""
        ks = frozenset(keys)
        if not ks:
            return Round()
        self.note_fresh(ks)
        to = self.targets(peers, is_client=is_client, client_peers=client_peers, exclude=exclude)
        return Round(push_to=to, keys=ks)

    def tick(
        self,
        now_ms: int,
        peers: Sequence[bytes],
        *,
        is_client: bool = False,
        client_peers: Sequence[bytes] = (),
    ) -> Round:
        """Called often; returns the round due at ``now_ms`` (possibly empty)."""
        p = self.params
        if self._next_sync_ms is None:
            # Desynchronise nodes that start together.
            self._next_sync_ms = now_ms + self.rng.randrange(p.sync_interval_ms)
            self._next_pull_ms = now_ms + self.rng.randrange(p.pull_interval_ms)
            self._pull_due_ms = self._next_pull_ms
        push_to: tuple[bytes, ...] = ()
        keys: frozenset[bytes] = frozenset()
        pull_from: bytes | None = None
        if now_ms >= self._next_sync_ms:
            self._next_sync_ms = now_ms + p.sync_interval_ms
            if self._fresh:
                keys = frozenset(self._fresh)
                for k in list(self._fresh):
                    left = self._fresh[k] - 1
                    if left <= 0:
                        del self._fresh[k]
                        self._misses.pop(k, None)
                    else:
                        self._fresh[k] = left
                push_to = self.targets(
                    peers, is_client=is_client, client_peers=client_peers, count=p.round_fanout
                )
                # A node that pushed has just talked; postpone its background
                # pull, by one pull interval at most: under sustained churn a
                # node always has fresh items and never pulled, so what no
                # push or offer brought it waited for the end of the storm
                # (1,000 simulated nodes, 20 %/min: 48 node-restart pairs of
                # ~39,000 unreached after 5 s; 1 with the cap, for 4 % more bytes)
                assert self._next_pull_ms is not None
                later = min(now_ms + p.sync_interval_ms, self._pull_due_ms + p.pull_interval_ms)
                self._next_pull_ms = max(self._next_pull_ms, later)
        assert self._next_pull_ms is not None
        if now_ms >= self._next_pull_ms:
            self._next_pull_ms = self._pull_due_ms = now_ms + p.pull_interval_ms
            choice = self.targets(peers, is_client=is_client, client_peers=client_peers)
            if choice:
                pull_from = choice[0]
        return Round(push_to=push_to, keys=keys, pull_from=pull_from)

    def next_deadline(self) -> int | None:
        """Earliest time ``tick`` has something to do (for the event loop / simulator)."""
        times = [
            t for t in (self._next_sync_ms, self._next_pull_ms, self._held_due) if t is not None
        ]
        return min(times) if times else None
