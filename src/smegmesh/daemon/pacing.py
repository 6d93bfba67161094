"""When smegd's next reconcile pass may run: a bounded share of a core. Pure.

A reconcile pass (routes over all meshes, the desired WireGuard
configuration and its apply, DNS names, alias checks) costs O(N) in the
members: at 3,000 members ~10 ms, and ~126 ms with the DNS server on (its
names are rebuilt). Every state change wakes the loop, and a large mesh
under churn changes many times a second (3,000 members at 20 %/min: 20
changes a second), so passes one per wake-up ran back to back and took a
whole core.

Passes now draw on a budget of CPU time (a token bucket): it fills at
``share`` of a second per second (:data:`RECONCILE_CPU_SHARE`, 10 % of a
core) up to ``burst_s`` (:data:`BURST_S`), and each pass takes what it cost.
While the budget is spent, the next pass waits until it is not (at most
:data:`MAX_GAP_S`), and the changes that arrive meanwhile are applied
together by that pass. After a quiet spell the budget is full: a change is
applied at once, and so are the passes of a join or of a start-up that
imports modules, up to ``burst_s`` of CPU back to back. Under a lasting
storm the passes take ``share`` of a core.

What a pass cost is the CPU time of the event loop's thread during it
(``time.thread_time``), not its wall time: a hook script run when an
interface comes up, or a slow WireGuard backend, waits without costing a
core and must not hold the next pass back.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BURST_S", "MAX_GAP_S", "RECONCILE_CPU_SHARE", "PassPacer"]

#: The most of a core the reconcile passes take under a lasting storm of changes.
RECONCILE_CPU_SHARE = 0.1
#: CPU seconds of passes allowed back to back after a quiet spell.
BURST_S = 0.25
#: The longest wait between passes, whatever they cost (seconds).
MAX_GAP_S = 5.0


@dataclass(slots=True)
class PassPacer:
    """Spaces passes so that they take at most ``share`` of the time (``time`` in seconds)."""

    share: float = RECONCILE_CPU_SHARE
    burst_s: float = BURST_S
    max_gap_s: float = MAX_GAP_S
    _credit: float | None = None  # CPU seconds of passes allowed now (full at first)
    _at: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0 or self.burst_s < 0 or self.max_gap_s <= 0:
            raise ValueError("need 0 < share <= 1, burst_s >= 0 and max_gap_s > 0")

    def _refill(self, now: float) -> float:
        if self._credit is None:
            self._credit = self.burst_s
        else:
            self._credit = min(self.burst_s, self._credit + (now - self._at) * self.share)
        self._at = now
        return self._credit

    def done(self, now: float, busy_s: float) -> None:
        """A pass ended at ``now``, having taken ``busy_s`` seconds of CPU."""
        credit = self._refill(now) - max(0.0, busy_s)
        # a debt beyond max_gap_s of refill is forgiven: the next pass waits max_gap_s
        self._credit = max(credit, -self.max_gap_s * self.share)

    def wait_s(self, now: float) -> float:
        """How long to wait from ``now`` before the next pass (0: run it now)."""
        credit = self._refill(now)
        return 0.0 if credit >= 0 else -credit / self.share
