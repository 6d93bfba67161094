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
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["BURST", "MAX_PRUNERS", "RATE_PER_S", "SUSPECT_MS", "PruneBudget"]

#: Prunes a pruner may have taken at once (a few suspicion windows' worth).
BURST = 16
#: Prunes a second after that (an honest node probes one member a second).
RATE_PER_S = 1.0
#: Pruners tracked (the least recently seen is forgotten: it starts full again).
MAX_PRUNERS = 4096
#: A pruner refused this lately is suspect (see :meth:`PruneBudget.suspect`).
SUSPECT_MS = 30_000


class PruneBudget:
    """Token buckets of prunes per pruner; ``exempt``: our own key."""

    __slots__ = ("_buckets", "_refused_at", "burst", "exempt", "max_pruners", "rate", "refused")

    def __init__(
        self,
        exempt: bytes = b"",
        *,
        rate_per_s: float = RATE_PER_S,
        burst: int = BURST,
        max_pruners: int = MAX_PRUNERS,
    ) -> None:
        self.exempt = exempt
        self.rate, self.burst, self.max_pruners = rate_per_s / 1000, float(burst), max_pruners
        self._buckets: OrderedDict[bytes, tuple[float, int]] = OrderedDict()  # tokens, at ms
        self.refused = 0
        #: pruners refused lately -> when (bounded as the buckets are); see suspect
        self._refused_at: dict[bytes, int] = {}

    def take(self, pruner: bytes, target: bytes, now_ms: int) -> bool:
        """One prune of ``target`` by ``pruner`` at ``now_ms``; False: refuse it.

        Not counted: our own prunes, and prunes of ourselves (we refute them:
        refused, the others that took it would wait for the budget to refill).
        """
        if self.exempt in (pruner, target):
            return True
        tokens, at = self._buckets.pop(pruner, (self.burst, now_ms))
        tokens = min(self.burst, tokens + max(0, now_ms - at) * self.rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        else:
            self.refused += 1
            self._refused_at[pruner] = now_ms
            if len(self._refused_at) > self.max_pruners:  # only the recent ones matter
                self._refused_at = {
                    k: t for k, t in self._refused_at.items() if now_ms - t < SUSPECT_MS
                }
        self._buckets[pruner] = (tokens, max(at, now_ms))
        if len(self._buckets) > self.max_pruners:
            gone, _ = self._buckets.popitem(last=False)
            self._refused_at.pop(gone, None)
        return ok

    def suspect(self, pruner: bytes, now_ms: int) -> bool:
        """Whether ``pruner`` went over its budget in the last :data:`SUSPECT_MS`.

        Its prunes we take then are most likely of live members that have not
        heard of them (the others that would have told them refused them too):
        the node tells each such member at once, so it refutes.
        """
        at = self._refused_at.get(pruner)
        return at is not None and now_ms - at < SUSPECT_MS
