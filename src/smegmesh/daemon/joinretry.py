"""The order and pace of a joiner's attempts at the bootstrap members of a token (issue 14).

A member that is busy (CPU-starved by a burst of joins, a slow disk), or down
for a moment (a restart), answers nothing for a few seconds. One call per
bootstrap member made a join fail at once: after the first failure the
client's endpoint back-off (``transport.EndpointBackoff``) refused the second
pass outright. Now the joiner goes round the bootstrap members again and
again, each round after a jittered exponential pause (so joiners that failed
together do not come back together), skipping a member while its endpoint
back-off runs, for :data:`JOIN_DEADLINE_TIMEOUTS` x the configured ``timeout``
(15 s by default; no new round starts after it, but there are always at
least :data:`MIN_ROUNDS`, and a round tries every member named in the token:
under load one attempt alone may take longer than the deadline). A refusal (an expired or used-up
token) is final and ends the join at once; that decision stays with the caller.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

__all__ = [
    "JOIN_DEADLINE_TIMEOUTS",
    "JOIN_PAUSE_BASE_S",
    "JOIN_PAUSE_CAP_S",
    "MIN_ROUNDS",
    "attempts",
    "unreachable_message",
]

#: A join starts no new attempt after this many ``timeout`` s (``smegctl join-mesh``
#: waits 120 s for the answer).
JOIN_DEADLINE_TIMEOUTS = 3.0
#: Rounds over the bootstrap members made whatever the deadline (one attempt may
#: take ``2 x timeout``, longer on a starved machine, and use the deadline up).
MIN_ROUNDS = 2
#: Pause after the first round of failed attempts; doubles each round, jittered x0.5-1.5.
JOIN_PAUSE_BASE_S = 0.5
#: Longest pause between two rounds.
JOIN_PAUSE_CAP_S = 8.0

B = TypeVar("B")


async def attempts(
    bootstrap: Sequence[B],
    backoff_wait: Callable[[B], float],
    *,
    deadline_s: float,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> AsyncIterator[B]:
    """Bootstrap members to try, in turn, paced, until the deadline.

    Round 0 tries every member in the token's order (the inviter first). A
    member whose endpoint is backing off (``backoff_wait(b) > 0``) is skipped
    in that round; if every member is backing off, the pause is at least the
    shortest back-off left.
    """
    if not bootstrap:
        return
    rng = rng or random.Random()
    end = clock() + deadline_s
    n = 0
    while True:
        tried = False
        for b in bootstrap:
            if backoff_wait(b) > 0:
                continue
            tried = True
            yield b
        pause = min(JOIN_PAUSE_CAP_S, JOIN_PAUSE_BASE_S * 2.0**n) * rng.uniform(0.5, 1.5)
        if not tried:
            pause = max(pause, min(backoff_wait(b) for b in bootstrap))
        if n + 1 >= MIN_ROUNDS and clock() + pause >= end:
            return
        n += 1
        await sleep(pause)


def unreachable_message(failures: Sequence[tuple[str, str]], seconds: float) -> str:
    """The one line a join gives when no bootstrap member answered.

    ``failures``: ``(endpoint, error)`` of each attempt, in order. Each member
    is named once, with its last error (it said the same address up to three
    times an attempt, and every attempt again: four attempts at one member
    made a 500-character line).
    """
    last: dict[str, str] = {}
    for endpoint, error in failures:
        last.pop(endpoint, None)
        last[endpoint] = error
    parts = [e if endpoint in e else f"{endpoint}: {e}" for endpoint, e in last.items()]
    tries = f"{len(failures)} attempt{'s' if len(failures) != 1 else ''} in {seconds:.0f} s"
    return f"no member named in the token could be reached ({tries}): " + "; ".join(parts[-4:])
