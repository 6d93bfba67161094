"""Whether a client's assigned peer forwards what it sends into the mesh. Pure.

A client pings its peer over the control transport (underlay) and watches
WireGuard's handshakes with it (``core.tunnel``); neither proves the peer
forwards: a peer that answers pings and completes handshakes, then drops
every packet it should forward, kept its client with no path into the mesh.

So, while the tunnel is watched and has handshakes and the peer answers our
pings, the client now and then probes *through* it: the daemon sends the
authenticated control-plane ``Ping`` to another peer's *overlay* address at
its control port (so it crosses our peer's forwarding), and the same ``Ping``
to that member's control endpoint over the underlay. The outcome of a probe:

* answered over the overlay: our peer forwards; the run of failures ends;
* answered over the underlay only: a failure of our peer's forwarding, or a
  member that does not answer over the overlay (a hostile one, or one bound
  to another address, ``bindAddress``);
* not answered at all: that member is down or unreachable; it says nothing
  of our peer (a dead third member frames nobody).

Only :data:`FAILS_TO_BLAME` failures in a row, to as many distinct members
where there are that many other peers (all of them where there are fewer),
while our peer still answers pings and the tunnel still handshakes, blame our
peer: a single hostile or dead member cannot frame an honest one. With fewer
other peers than that, one hostile other peer can (docs/SECURITY.md).

*Bounds:* one probe in flight; the first to a newly assigned peer within
:data:`QUICK_PROBE_MS` (a client that joined through, or moved to, a peer that
forwards nothing finds out in about 20 s); then one every :data:`PROBE_EVERY_MS` (jittered
±50 % with the engine's random source) and, after a failure, the next within
:data:`QUICK_PROBE_MS` until a run is complete (at most ``FAILS_TO_BLAME - 1``
quick ones a run); state: a few integers and at most ``FAILS_TO_BLAME`` keys.
A move for this reason at most once a backoff (30 s doubling to 30 min until
a probe through a peer succeeds): a mesh whose members do not answer over the
overlay at all moves its clients that rarely.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FAILS_TO_BLAME",
    "FORWARD_BACKOFF_MAX_MS",
    "FORWARD_BACKOFF_MS",
    "PROBE_EVERY_MS",
    "PROBE_TIMEOUT_MS",
    "QUICK_PROBE_MS",
    "ForwardMove",
    "ForwardWatch",
]

#: The mean time between probes through our peer while they succeed.
PROBE_EVERY_MS = 30_000
#: After a failure, the next probe (to another member) within this (jittered).
QUICK_PROBE_MS = 5_000
#: The daemon's wait for either answer of a probe; one in flight longer is forgotten.
PROBE_TIMEOUT_MS = 3_000
#: Failed probes in a row (to as many distinct members, where there are) that blame our peer.
FAILS_TO_BLAME = 3
#: The wait after a move for this reason before the next, doubling to the max.
FORWARD_BACKOFF_MS = 30_000
FORWARD_BACKOFF_MAX_MS = 30 * 60_000


def move_backoff_ms(moves: int) -> int:
    """The wait after a client's ``moves``-th move in a row (from 1) that nothing proved right.

    30 s doubling to 30 min: this module's moves and ``core.tunnel``'s.
    """
    return min(FORWARD_BACKOFF_MS << min(moves - 1, 16), FORWARD_BACKOFF_MAX_MS)


@dataclass(frozen=True, slots=True)
class ForwardMove:
    """A client left ``old``, which forwarded none of its probes (``new``: None, no other)."""

    old: bytes
    new: bytes | None
    #: the members probed in the run that blamed it (reachable over the underlay)
    members: tuple[bytes, ...]
    outs: list[Any]  # core.engine.Out


@dataclass(slots=True)
class ForwardWatch:
    """One client mesh's probes through its assigned peer (see the module docstring)."""

    #: the peer whose forwarding the run below judges
    peer: bytes | None = None
    #: the next probe is due then (0: not scheduled yet)
    due_ms: int = 0
    #: the member probed now, and since when
    inflight: bytes | None = None
    inflight_ms: int = 0
    #: failed probes in a row, and the distinct members they went to (at most FAILS_TO_BLAME)
    fails: int = 0
    failed: list[bytes] = field(default_factory=list)
    #: moves for this reason with no probe answered through a peer since; the earliest next
    moves: int = 0
    next_move_ms: int = 0

    def _schedule(self, now_ms: int, rng: random.Random, quick: bool = False) -> None:
        quick = quick or 0 < self.fails < FAILS_TO_BLAME
        base = QUICK_PROBE_MS if quick else PROBE_EVERY_MS
        self.due_ms = now_ms + base // 2 + rng.randrange(base + 1)

    def probe(
        self, now_ms: int, peer: bytes, others: list[bytes], rng: random.Random
    ) -> bytes | None:
        """The member to probe through ``peer`` now (None: none due).

        ``others``: the live peers but ours and us, in a stable order.
        """
        if peer != self.peer:  # a new peer (joined, or moved): checked soon, not in a period
            self.peer, self.fails, self.failed, self.inflight = peer, 0, [], None
            self._schedule(now_ms, rng, quick=True)
        if self.inflight is not None and now_ms - self.inflight_ms > 2 * PROBE_TIMEOUT_MS:
            self.inflight = None  # never answered for: forgotten
        if self.inflight is not None or now_ms < self.due_ms or not others:
            return None
        fresh = [k for k in others if k not in self.failed]
        target = rng.choice(fresh or others)
        self.inflight, self.inflight_ms = target, now_ms
        return target

    def result(
        self,
        now_ms: int,
        peer: bytes,
        target: bytes,
        overlay: bool,
        underlay: bool,
        n_others: int,
        rng: random.Random,
    ) -> bool:
        """The outcome of the probe of ``target``; True: blame ``peer`` now.

        The caller checks that the peer still answers and the tunnel still
        handshakes, moves, and calls :meth:`moved`.
        """
        if peer != self.peer or target != self.inflight:
            return False  # an old probe's, or one we forgot
        self.inflight = None
        if overlay:
            self.fails, self.failed = 0, []
            self.moves = self.next_move_ms = 0  # a peer forwards: no backoff
        elif underlay:
            self.fails = min(self.fails + 1, FAILS_TO_BLAME)
            if target not in self.failed:
                self.failed = [*self.failed, target][-FAILS_TO_BLAME:]
        self._schedule(now_ms, rng)
        need = min(FAILS_TO_BLAME, max(1, n_others))
        return (
            self.fails >= FAILS_TO_BLAME
            and len(self.failed) >= need
            and now_ms >= self.next_move_ms
        )

    def moved(self, now_ms: int) -> None:
        """We left the peer (or had none to go to): a new run, and a longer wait for the next."""
        self.moves += 1
        self.next_move_ms = now_ms + move_backoff_ms(self.moves)
        self.fails, self.failed, self.peer = 0, [], None

    def clock_stepped(self, delta_ms: int) -> None:
        """The caller's clock was stepped: our times move with it."""
        self.due_ms += delta_ms
        self.inflight_ms += delta_ms
        self.next_move_ms += delta_ms
