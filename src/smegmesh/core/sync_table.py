"""The sessions a sync responder holds: bounded, oldest ended first. Pure.

A responder (``core.sync``) keeps each open session, and each one over for a
while (to answer its last step again), in one dict in order of last
activity: ``(initiator, session id) -> session``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smegmesh.core.sync import SyncSession

__all__ = [
    "MAX_DONE_SESSIONS",
    "MAX_RESPONDER_SESSIONS",
    "MAX_SESSIONS_PER_INITIATOR",
    "SESSION_TIMEOUT_MS",
    "expire",
    "forget_done",
    "make_room",
]

SESSION_TIMEOUT_MS = 30_000
#: Sessions a responder holds open at once, in all and per initiator. A new
#: ``SyncStart`` past either bound ends the oldest such session (its initiator
#: gets ``SyncEnd`` on its next step and pulls again later): a member opening
#: sessions without end holds at most two of them, and every message costs the
#: responder O(1) bookkeeping, not a sweep of every session it holds.
MAX_RESPONDER_SESSIONS = 64
MAX_SESSIONS_PER_INITIATOR = 2
#: Of those, sessions over kept to answer their last step again (the latest).
MAX_DONE_SESSIONS = 8


def expire(sessions: dict[tuple[bytes, int], SyncSession], now_ms: int) -> None:
    """Drop sessions idle for :data:`SESSION_TIMEOUT_MS`, least recently active first.

    ``respond`` keeps the dict in that order: O(1) per message, amortised.
    """
    while sessions:
        k = next(iter(sessions))
        if now_ms - sessions[k].now_ms <= SESSION_TIMEOUT_MS:
            return
        del sessions[k]


def forget_done(sessions: dict[tuple[bytes, int], SyncSession], slot: tuple[bytes, int]) -> None:
    """Keep at most :data:`MAX_DONE_SESSIONS` sessions that are over: the latest.

    One per initiator: ``slot``'s, just over, replaces its initiator's older
    one, so a member finishing sessions quickly cannot push the others' out.

    What a session over keeps is its last reply: up to a page of items (held
    by the state anyway) and 256 KiB of questions. O(sessions), at most 64.
    """
    for k in [k for k, v in sessions.items() if v.done and k[0] == slot[0] and k != slot]:
        del sessions[k]
    done = [k for k, v in sessions.items() if v.done]
    for k in done[: max(0, len(done) - MAX_DONE_SESSIONS)]:
        del sessions[k]


def make_room(sessions: dict[tuple[bytes, int], SyncSession], src: bytes) -> None:
    """Make room before ``src`` opens a session (O(sessions), on a ``SyncStart`` only).

    Ends its oldest session past the per-initiator bound, and the least
    recently active of all past the total.
    """
    own = [k for k in sessions if k[0] == src]
    if len(own) >= MAX_SESSIONS_PER_INITIATOR:
        del sessions[own[0]]
    while len(sessions) >= MAX_RESPONDER_SESSIONS:
        del sessions[next(iter(sessions))]
