"""A budget of prunes per pruner. Pure: time is an argument.

A member may prune any member, and a prune of a live member is refuted by
it (a newer version always wins); but a member turned bad could prune every
live member at once, again after each refutation, and while a node holds a
member as pruned it drops its WireGuard peer. In the simulator, one member
pruning the other 299 of 300 at once made 52,306 of the 89,102 (observer,
member) pairs see the member not live (9,597 pair-seconds); with this
budget 5,495 (2,317 pair-seconds) (``tests/unit/test_gossip_hostile.py::
prune_storm``; docs/SECURITY.md, "Prunes of live members").

An honest node declares dead only the members it probes itself, one a
probe interval (``FailureDetector.tick``), and its own clients when they go
silent. So a node takes from each other pruner at most :data:`BURST` prunes
at once and :data:`RATE_PER_S` a second after that; prunes of the pruner's
own clients (their records name it as their peer) and our own are not
counted, nor are prunes of ourselves (we refute them). A prune over the
budget is refused like an invalid item: it comes again (by push or sync)
and is taken once the budget allows, or is moot by then, refuted. Charged
only for verified prunes that would change the state, so nobody can spend
an honest pruner's budget with forgeries. A member pruned by a pruner that
went over its budget lately is told at once (:meth:`PruneBudget.suspect`).

**A pruner's prunes of one client: one a gap.** A client cannot be called
(it has no control endpoint): it learns of its prune only from its own
pulls, one every ``pullInterval`` (3 s), so one prune of a live client keeps
it pruned for seconds, where a peer refutes in milliseconds. Pruning it again
after each refutation, well within the budget, a member (its own peer or any
other) kept a live client pruned 97 % of the time (review of the client role,
``tests/unit/test_client_hostile.py``). Only one peer watches a client, and a
client refutes only what was wrong, so an honest pruner has no second prune
of the same client soon after a first: one pruner's prunes of one client are
taken at most once a :data:`CLIENT_PRUNE_GAP_MS`, whoever the pruner.

**Prunes of one client by others than its judge: one a gap in all.** That
gap was per key, and a member allowed to admit (policy ``peers``) admitted 10
throwaway keys and pruned a live client with each in turn: it was pruned at
the other peers 42 % of the time, an honest peer holding 20 prunes of it
in 60 s (``tests/unit/test_client_hostile.py::
test_throwaway_keys_cannot_keep_a_live_client_pruned``). An honest node
prunes only the clients it watches, those whose record names it (their
judge), so the prunes of a client by all the other members together are now
taken at most once a gap (1.7 %, 2 prunes, same run;
``::test_prunes_of_one_client_by_others_than_its_judge_are_taken_once_a_gap_in_all``).
The judge has its own gap, which nobody else can spend (a prune is signed by
its pruner): others never hold its prune back. Refused ones count as over
budget, like the rest. The cost: a peer that watches a client whose named
peer is gone (``desired.assigned_peer``'s fallback) is not its judge here,
and its prune of a dead client can wait up to a gap behind another's. Both
tables keep at most ``max_pruners`` entries, the oldest going first.
"""

from __future__ import annotations

from typing import TypeVar

from smegmesh.core.buckets import KeyedBuckets, shifted

__all__ = [
    "BURST",
    "CLIENT_PRUNE_GAP_MS",
    "MAX_PRUNERS",
    "RATE_PER_S",
    "SUSPECT_MS",
    "PruneBudget",
]

#: Prunes a pruner may have taken at once (a few suspicion windows' worth).
BURST = 16
#: Prunes a second after that (an honest node probes one member a second).
RATE_PER_S = 1.0
#: Pruners tracked (the least recently seen is forgotten: it starts full again).
MAX_PRUNERS = 4096
#: A pruner refused this lately is suspect (see :meth:`PruneBudget.suspect`).
SUSPECT_MS = 30_000
#: One prune of a client by one pruner is taken per this many ms (see the docstring).
CLIENT_PRUNE_GAP_MS = 30_000

_K = TypeVar("_K")


class PruneBudget:
    """Token buckets of prunes per pruner; ``exempt``: our own key."""

    __slots__ = (
        "_buckets",
        "_client_prunes",
        "_others_prunes",
        "_refused_at",
        "exempt",
        "max_pruners",
        "refused",
    )

    def __init__(
        self,
        exempt: bytes = b"",
        *,
        rate_per_s: float = RATE_PER_S,
        burst: int = BURST,
        max_pruners: int = MAX_PRUNERS,
    ) -> None:
        self.exempt = exempt
        self.max_pruners = max_pruners
        self._buckets = KeyedBuckets(rate_per_s / 1000, float(burst), max_pruners)  # time: ms
        self.refused = 0
        #: pruners refused lately -> when (the latest max_pruners); see suspect
        self._refused_at: dict[bytes, int] = {}
        #: (pruner, client) -> when we took its last prune of that client, oldest first
        self._client_prunes: dict[tuple[bytes, bytes], int] = {}
        #: client -> when we took the last prune of it by a member not its judge, oldest first
        self._others_prunes: dict[bytes, int] = {}

    @classmethod
    def probing(cls, exempt: bytes, probe_interval_ms: int) -> PruneBudget:
        """A node's budget: a prune a probe interval, one a second at least."""
        return cls(exempt, rate_per_s=max(RATE_PER_S, 1000 / max(1, probe_interval_ms)))

    def take(
        self,
        pruner: bytes,
        target: bytes,
        now_ms: int,
        *,
        client: bool = False,
        judge: bool = False,
    ) -> bool:
        """One prune of ``target`` by ``pruner`` at ``now_ms``; False: refuse it.

        Not counted: our own prunes, and prunes of ourselves (we refute them:
        refused, the others that took it would wait for the budget to refill);
        nor, against the budget, a ``judge``'s (a peer's of its own client).
        A ``client`` target: at most one prune by ``pruner`` a
        :data:`CLIENT_PRUNE_GAP_MS`, its judge's too; and at most one a gap
        by all the members other than its judge together (the judge's own
        prunes never wait for theirs).
        """
        if self.exempt in (pruner, target):
            return True
        pair = (pruner, target)
        ok = not client or (
            _past_gap(self._client_prunes.get(pair), now_ms)
            and (judge or _past_gap(self._others_prunes.get(target), now_ms))
        )
        ok = ok and (judge or self._buckets.take(pruner, now_ms, 1.0, 1.0))
        if not ok:
            self._refuse(pruner, now_ms)
        elif client:
            _note(self._client_prunes, pair, now_ms, self.max_pruners)
            if not judge:
                _note(self._others_prunes, target, now_ms, self.max_pruners)
        return ok

    def _refuse(self, pruner: bytes, now_ms: int) -> None:
        self.refused += 1
        self._refused_at.pop(pruner, None)  # oldest first: the least recent goes
        self._refused_at[pruner] = now_ms
        if len(self._refused_at) > self.max_pruners:
            del self._refused_at[next(iter(self._refused_at))]

    def clock_stepped(self, delta_ms: int) -> None:
        """The wall clock was stepped by ``delta_ms``: the buckets' times move with it."""
        self._buckets.clock_stepped(delta_ms)
        self._refused_at = shifted(self._refused_at, delta_ms)
        self._client_prunes = shifted(self._client_prunes, delta_ms)
        self._others_prunes = shifted(self._others_prunes, delta_ms)

    def suspect(self, pruner: bytes, now_ms: int) -> bool:
        """Whether ``pruner`` went over its budget in the last :data:`SUSPECT_MS`.

        Its prunes we take then are most likely of live members that have not
        heard of them (the others that would have told them refused them too):
        the node tells each such member at once, so it refutes.
        """
        at = self._refused_at.get(pruner)
        return at is not None and now_ms - at < SUSPECT_MS


def _past_gap(last: int | None, now_ms: int) -> bool:
    return last is None or now_ms - last >= CLIENT_PRUNE_GAP_MS


def _note(table: dict[_K, int], key: _K, now_ms: int, cap: int) -> None:
    """``key``'s prune taken at ``now_ms``; ``table`` keeps at most ``cap`` keys.

    In time order (moved to the end with each prune, shifted together on a
    clock step): the oldest goes, and a key past its gap, the oldest if any,
    counts the same as one not held.
    """
    table.pop(key, None)
    table[key] = now_ms
    if len(table) > cap:
        del table[next(iter(table))]
