"""A budget per member for the requests it sends us: bytes, and calls.

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

Small calls cost too: each is authenticated (a signature check) and handled,
about half a millisecond of a core over the stream. A member sending pings,
16 at a time, made 1,886 calls a second, all within its bytes, and kept the
receiving daemon at 107 % of a core (``--only member-calls``, twentieth
session). So calls are counted as well: :data:`CALL_RATE` a second, up to
:data:`CALL_BURST` at once, whatever their size. An honest member makes
well under one call a second to any one node at rest, 17 at most in a
second of a simulated partition heal, and ~150 in a row for a heal's chain
of sync sessions at 3,000 members.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from smegmesh.core.buckets import KeyedBuckets

__all__ = [
    "BURST",
    "CALL_BURST",
    "CALL_RATE",
    "MAX_KEYS",
    "OVER_BUDGET",
    "OVER_BUDGET_DELAY_S",
    "OVER_CALL_BUDGET",
    "RATE",
    "SMALL",
    "MemberBudget",
]

#: Bytes a second a member may send us in requests, at length.
RATE = 1 << 20
#: Bytes it may send at once (a partition's worth of state between two nodes).
BURST = 8 << 20
#: Requests up to this size are refused only once a member owes a whole burst.
SMALL = 16 << 10
#: Calls a second a member may make to us, whatever their size.
CALL_RATE = 100.0
#: Calls it may make at once: a heal's chain of sync sessions at 3,000
#: members (~150 steps) fits; a longer one goes on at the rate.
CALL_BURST = 1000.0
#: Members tracked (the least recently seen is forgotten: it starts full again).
MAX_KEYS = 4096
#: Why such a request is refused (a log and metrics reason).
OVER_BUDGET = "over its byte budget"
OVER_CALL_BUDGET = "over its call budget"
#: How long a refused call is held (in one of the member's in-flight slots)
#: before the refusal: so a member sending without end makes a few calls a
#: second, not thousands that each cost an authentication.
OVER_BUDGET_DELAY_S = 0.5


class MemberBudget:
    """Token buckets of bytes and of calls per key (see the module docstring)."""

    def __init__(
        self,
        rate: float = RATE,
        burst: float = BURST,
        *,
        small: int = SMALL,
        call_rate: float = CALL_RATE,
        call_burst: float = CALL_BURST,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.small = small
        self._clock = clock
        self._buckets = KeyedBuckets(rate, burst, max_keys)
        self._calls = KeyedBuckets(call_rate, call_burst, max_keys)
        self.refused = 0

    def charge(self, key: bytes, length: int) -> str | None:
        """Charge a call of ``length`` bytes to ``key``: None, or why it is refused."""
        now = self._clock()
        why: str | None = None
        if not self._calls.take(key, now, 1.0, 1.0):
            why = OVER_CALL_BUDGET
        else:
            floor = 0.0 if length > self.small else -self._buckets.burst
            if not self._buckets.take(key, now, length, floor):
                why = OVER_BUDGET
        self.refused += why is not None
        return why

    def out_of_calls(self, key: bytes) -> bool:
        """Whether ``key`` has no call left now (takes nothing: for a check before any work)."""
        return self._calls.tokens(key, self._clock()) < 1.0

    def admit(self, key: bytes, length: int) -> bool:
        """Charge a call of ``length`` bytes to ``key``; False: refuse it."""
        return self.charge(key, length) is None
