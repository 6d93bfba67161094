"""Whether a client's peer forwards what the client sends it into the mesh. Pure.

A client's pings of its assigned peer go over the underlay, and the tunnel
watch (``core.tunnel``) sees WireGuard handshakes with it; neither shows that
the peer forwards. A peer that completes handshakes and drops what it should
forward (its forwarding off, a firewall's forward chain, a member turned bad)
kept its client with no way into the mesh.

So while the tunnel works (a handshake seen, the peer answering pings), the
client pings another member now and then **through the tunnel**: at that
member's overlay address and control port (``Call.overlay``), so that the
ping and its answer cross the peer's forwarding both ways. One answer proves
the path. After :data:`FAILS_TO_MOVE` probes in a row without an answer,
each to another member (to every other one, when there are fewer), while the
peer itself answers and handshakes, the client pings the peer's own overlay
address, which needs no forwarding: answered, the peer is passed over for
``AVOID_MS`` and the client moves; not answered either, nothing is proven
(a firewall in front of every member's control port on the overlay would do
that too) and the probes start again. One member that does not answer
(down, or lying) cannot make a client leave an honest peer where there are
others to ask.

Bounds: one probe in flight; one per :data:`PROBE_EVERY_MS` while the path
works, one per :data:`RETRY_MS` after a failure; moves for this reason back
off as the tunnel watch's do (30 s doubling to 30 min until a probe is
answered).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "FAILS_TO_MOVE",
    "MOVE_BACKOFF_MAX_MS",
    "PROBE_EVERY_MS",
    "RETRY_MS",
    "DataPathWatch",
    "move_backoff_ms",
]

#: A probe through the tunnel this often while the path works.
PROBE_EVERY_MS = 30_000
#: After a probe that got no answer, the next one this soon.
RETRY_MS = 5_000
#: Probes in a row without an answer, each to another member, that judge the path dead.
FAILS_TO_MOVE = 3
#: The first and the longest wait between two moves of a client for a dead tunnel or path.
MOVE_BACKOFF_FIRST_MS = 30_000
MOVE_BACKOFF_MAX_MS = 30 * 60_000


def move_backoff_ms(moves: int) -> int:
    """The wait after the ``moves``-th move in a row (from 1) that nothing proved right."""
    return min(MOVE_BACKOFF_FIRST_MS << min(max(moves - 1, 0), 16), MOVE_BACKOFF_MAX_MS)


@dataclass(slots=True)
class DataPathWatch:
    """One client mesh's probes through the tunnel to its peer (module docstring)."""

    #: the peer probed through, and when the next probe is due
    peer: bytes | None = None
    due_ms: int = 0
    inflight: bool = False
    #: the members of the probes that went unanswered, in a row, through this peer
    failed: list[bytes] = field(default_factory=list)
    #: enough went unanswered: the next probe is of the peer itself
    checking: bool = False
    #: moves for a dead path with no answer since; the earliest next one
    moves: int = 0
    next_move_ms: int = 0

    def due(self, peer: bytes, now_ms: int) -> bool:
        """Whether to probe through ``peer`` now (then :meth:`target` and :meth:`sent`)."""
        if peer != self.peer:
            self.peer, self.failed, self.inflight, self.checking = peer, [], False, False
            self.due_ms = now_ms + RETRY_MS  # the tunnel just came up: not at once
        return not self.inflight and now_ms >= self.due_ms

    def target(self, others: list[bytes], pick: Callable[[int], int]) -> bytes | None:
        """The member to probe: the peer itself to check a verdict, else another.

        One of ``others`` not tried in this run of failures (any, when all
        were); ``pick(n)`` chooses an index below ``n`` (the engine's random
        source).
        """
        if self.checking:
            return self.peer
        fresh = [k for k in others if k not in self.failed] or others
        return fresh[pick(len(fresh))] if fresh else None

    def sent(self) -> None:
        """A probe went out: none more until it is answered or fails."""
        self.inflight = True

    def answered(self, peer: bytes, target: bytes, now_ms: int) -> bool:
        """A probe of ``target`` through ``peer`` was answered; True: the path is dead.

        An answer of another member: the path works. Of the peer itself, at
        its overlay address, after :data:`FAILS_TO_MOVE` others did not
        answer: the tunnel carries our pings to the peer and the peer's
        control port answers on it, so it is the forwarding that fails.
        """
        if peer != self.peer:
            return False
        self.inflight = False
        if target == peer and self.checking:
            self.checking = False
            return now_ms >= self.next_move_ms
        self.failed = []
        self.due_ms = now_ms + PROBE_EVERY_MS
        self.moves = self.next_move_ms = 0
        return False

    def unanswered(self, peer: bytes, target: bytes, others: int, now_ms: int) -> None:
        """A probe of ``target`` through ``peer`` got no answer.

        ``others``: the members a probe could go to (not the peer). After
        :data:`FAILS_TO_MOVE` in a row, to as many members (all of them, when
        fewer), the next probe goes to the peer itself. If that one is not
        answered either, nothing is proven (the tunnel, or a firewall in
        front of every member's control port on the overlay): start again.
        """
        if peer != self.peer:
            return
        self.inflight = False
        if target == peer:
            self.checking, self.failed = False, []
            self.due_ms = now_ms + PROBE_EVERY_MS
            return
        self.failed.append(target)
        distinct = min(FAILS_TO_MOVE, max(1, others))
        self.checking = len(self.failed) >= FAILS_TO_MOVE and len(set(self.failed)) >= distinct
        self.due_ms = now_ms if self.checking else now_ms + RETRY_MS

    def forget(self) -> None:
        """The tunnel or the peer is not known to work: what failed proves nothing."""
        self.failed, self.inflight, self.checking = [], False, False

    def moved(self, now_ms: int) -> None:
        """We left the peer for a dead path: the next such move waits longer."""
        self.moves += 1
        self.next_move_ms = now_ms + move_backoff_ms(self.moves)
        self.failed, self.peer, self.checking = [], None, False

    def clock_stepped(self, delta_ms: int) -> None:
        """The caller's clock was stepped: our times move with it."""
        self.due_ms += delta_ms
        self.next_move_ms += delta_ms
