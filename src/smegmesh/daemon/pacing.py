"""When smegd's next reconcile pass may run: a bounded share of a core. Pure.

A reconcile pass (routes over all meshes, the desired WireGuard
configuration and its apply, DNS names, alias checks) costs O(N) in the
members: at 3,000 members ~12 ms, and ~140 ms with the DNS server on (its
names are rebuilt). Every state change wakes the loop, and a large mesh
under churn changes many times a second (3,000 members at 20 %/min: 20
changes a second), so passes one per wake-up ran back to back and took a
whole core. A pass now waits, after the last one, ``(1 - share) / share``
times as long as that one took (9x for :data:`RECONCILE_CPU_SHARE`, at most
:data:`MAX_GAP_S`): the changes that arrive meanwhile are applied together
by the next pass. A change after a quiet spell is applied at once, and a
small mesh (a pass of a millisecond) waits a few milliseconds at most.

What a pass took is the CPU time of the event loop's thread during it
(``time.thread_time``), not its wall time: a hook script run when an
interface comes up, or a slow WireGuard backend, waits without costing a
core and must not hold the next pass back.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_GAP_S", "RECONCILE_CPU_SHARE", "PassPacer"]

#: The most of a core the reconcile passes take under a storm of changes.
RECONCILE_CPU_SHARE = 0.1
#: The longest wait between passes, whatever the last one took (seconds).
MAX_GAP_S = 5.0


@dataclass(slots=True)
class PassPacer:
    """Spaces passes so that they take at most ``share`` of the time (``time`` in seconds)."""

    share: float = RECONCILE_CPU_SHARE
    max_gap_s: float = MAX_GAP_S
    _next: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise ValueError("share must be within (0, 1]")

    def done(self, now: float, busy_s: float) -> None:
        """A pass ended at ``now``, having taken ``busy_s`` seconds of CPU."""
        busy = max(0.0, busy_s)
        self._next = now + min(self.max_gap_s, busy * (1.0 - self.share) / self.share)

    def wait_s(self, now: float) -> float:
        """How long to wait from ``now`` before the next pass (0: run it now)."""
        return 0.0 if self._next is None else max(0.0, self._next - now)
