"""A byte budget per member for the requests it sends us.

Everything a member sends is decoded and checked: about 65 µs an item of
state, so ~150 ms of the event loop for 1 MiB of records. Until the
nineteenth session members were trusted for volume: one member turned bad,
sending 1 MiB pushes 8 at a time, kept the receiving daemon at 87 % of a
core and slowed a change's propagation to it 45-fold
(``bench/abuse_bench.py --only member-forged``).

Each member key gets a token bucket of bytes (:data:`RATE` a second, up to
:data:`BURST`), charged with a request's declared length before its body is
read. A request larger than :data:`SMALL` is refused while the bucket is
empty; a small one (a ping, an ack, an offer) only once the member is a
whole burst in debt, so a member that just sent a burst of state is never
taken for dead for it. Honest members send ~0.3 KB/s each at rest, and a few
MB at most after a partition (the rest follows at :data:`RATE`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from smegmesh.core.buckets import KeyedBuckets

__all__ = ["BURST", "MAX_KEYS", "OVER_BUDGET", "OVER_BUDGET_DELAY_S", "RATE", "SMALL", "ByteBudget"]

#: Bytes a second a member may send us in requests, at length.
RATE = 1 << 20
#: Bytes it may send at once (a partition's worth of state between two nodes).
BURST = 8 << 20
#: Requests up to this size are refused only once a member owes a whole burst.
SMALL = 16 << 10
#: Members tracked (the least recently seen is forgotten: it starts full again).
MAX_KEYS = 4096
#: Why such a request is refused (a log and metrics reason).
OVER_BUDGET = "over its byte budget"
#: How long a refused call is held (in one of the member's in-flight slots)
#: before the refusal: so a member sending without end makes a few calls a
#: second, not thousands that each cost an authentication.
OVER_BUDGET_DELAY_S = 0.5


class ByteBudget:
    """Token buckets of bytes per key (see the module docstring)."""

    def __init__(
        self,
        rate: float = RATE,
        burst: float = BURST,
        *,
        small: int = SMALL,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.small = small
        self._clock = clock
        self._buckets = KeyedBuckets(rate, burst, max_keys)
        self.refused = 0

    def admit(self, key: bytes, length: int) -> bool:
        """Charge a request of ``length`` bytes to ``key``; False: refuse it."""
        floor = 0.0 if length > self.small else -self._buckets.burst
        ok = self._buckets.take(key, self._clock(), length, floor)
        self.refused += not ok
        return ok
