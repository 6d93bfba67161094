"""Whether a client's WireGuard tunnel to its assigned peer carries anything. Pure.

A client pings its assigned peer over the control transport, and moves on
when that peer stops answering. But the control port answering says nothing
of the WireGuard port: a firewall that lets one through and not the other, or a
peer that answers pings and never completes a handshake left the client with
no data path at all, for good. (Our own interface set down beside a running
smegd is no fault of the peer's: a read that finds it down starts the watch
again, ``ClientMixin.tunnel_read``, and the health check brings it up.)
A client sends persistent keepalives (25 s by default), so WireGuard keeps
a session with its peer whether or not anything else is sent: a handshake
within seconds of the first keepalive, and a new one at least every
``REJECT_AFTER_MS`` plus a keepalive interval after that.

:class:`TunnelWatch` takes the peer's latest handshake as the daemon reads it
from WireGuard, every few seconds, and says when the tunnel is dead:

* no handshake at all :data:`FIRST_HANDSHAKE_MS` (30 s: six of WireGuard's
  5 s handshake retries) after the peer became ours, or after its WireGuard
  peer was (re)configured;
* no new handshake for :data:`REJECT_AFTER_MS` (WireGuard's limit, after
  which a session carries no data) plus a keepalive interval plus
  :data:`FIRST_HANDSHAKE_MS`. WireGuard's handshake time is only read as a
  sign that a handshake was made (its value changed): the silence is
  measured on our own clock from the read that saw it, so a clock step, or
  a daemon restarted beside a live interface (its last handshake made before
  the daemon started), neither moves a client early nor keeps it late.

A dead tunnel moves the client to the next peer, at most once a backoff:
:data:`FIRST_HANDSHAKE_MS`, doubling with each move that no handshake with
any peer followed, up to :data:`MOVE_BACKOFF_MAX_MS` (a client whose own
network drops WireGuard's packets would otherwise re-sign its record, and
the mesh gossip it, every 30 s for as long as that lasts). Any handshake
resets it.

What this does not catch: a peer that completes handshakes and then drops
the packets it should forward; its probes through the peer do
(``core.forwardwatch``, kept here as ``TunnelWatch.fwd``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smegmesh.core.forwardwatch import FORWARD_BACKOFF_MAX_MS, ForwardWatch, move_backoff_ms
from smegmesh.core.wgconfig import InterfaceStatus

__all__ = [
    "AVOID_MS",
    "FIRST_HANDSHAKE_MS",
    "MOVE_BACKOFF_MAX_MS",
    "REJECT_AFTER_MS",
    "TunnelMove",
    "TunnelWatch",
    "tunnel_of",
]

#: WireGuard's REJECT_AFTER_TIME: a session this old carries no data.
REJECT_AFTER_MS = 180_000
#: No handshake this long after the peer became ours: the tunnel is dead.
FIRST_HANDSHAKE_MS = 30_000
#: The longest wait between two moves for a dead tunnel.
MOVE_BACKOFF_MAX_MS = FORWARD_BACKOFF_MAX_MS
#: A peer whose tunnel was dead is passed over this long when choosing ours.
AVOID_MS = 10 * 60_000


@dataclass(frozen=True, slots=True)
class TunnelMove:
    """A client left ``old`` for its dead tunnel (``new``: its peer now; None: no other)."""

    old: bytes
    new: bytes | None
    silent_ms: int
    outs: list[Any]  # core.engine.Out (engine imports this module's users)


def tunnel_of(status: InterfaceStatus, peer: bytes) -> tuple[bool, int | None]:
    """(judged, latest handshake in ms or None) of ``peer`` in a WireGuard status read.

    Not judged without a peer entry (not configured yet) or without an
    endpoint (its name did not resolve in time): no handshake can start, and
    that is no fault of the peer's.
    """
    p = status.peers.get(peer)
    if p is None or not p.endpoint:
        return False, None
    return True, None if p.last_handshake is None else int(p.last_handshake * 1000)


@dataclass(slots=True)
class TunnelWatch:
    """One client mesh's watch of the tunnel to its assigned peer (see the module docstring).

    WireGuard's handshake time is on the wall clock of when it was made: it
    tells only *that* a handshake was made (the value changed). Silence is
    measured on the caller's clock, from the read that first saw the value,
    so neither a clock step nor a handshake made before the watch began
    moves a client early or keeps it late.
    """

    #: the peer watched, and since when (ms; again when WireGuard lost the peer)
    peer: bytes | None = None
    since_ms: int = 0
    #: the peer's latest handshake as last read (None: never), and when we read it first
    handshake: int | None = None
    heard_ms: int = 0
    #: moves for a dead tunnel with no handshake since; the earliest next one
    moves: int = 0
    next_move_ms: int = 0
    #: the probes through the peer (``core.forwardwatch``)
    fwd: ForwardWatch = field(default_factory=ForwardWatch)

    def seen(
        self, peer: bytes, handshake_ms: int | None, keepalive_s: int, now_ms: int
    ) -> int | None:
        """The peer's latest handshake (None: never) as WireGuard has it now.

        Returns how long the tunnel has been silent (ms) when it is dead and a
        move is allowed now, else None. The caller moves and calls :meth:`moved`.
        """
        if peer != self.peer or (handshake_ms is None and self.handshake is not None):
            # another peer, or this one configured again (its handshake went with it)
            self.peer, self.since_ms, self.handshake = peer, now_ms, None
        if handshake_ms is not None and handshake_ms != self.handshake:
            self.handshake, self.heard_ms = handshake_ms, now_ms
            self.moves = self.next_move_ms = 0  # a tunnel works: no backoff
        if self.handshake is not None:
            silent = now_ms - self.heard_ms
            limit = REJECT_AFTER_MS + keepalive_s * 1000 + FIRST_HANDSHAKE_MS
        else:
            silent, limit = now_ms - self.since_ms, FIRST_HANDSHAKE_MS
        if silent < limit or now_ms < self.next_move_ms:
            return None
        return silent

    def absent(self) -> None:
        """WireGuard has no such peer configured (yet), or no endpoint for it: start again."""
        self.peer = None

    def moved(self, now_ms: int) -> None:
        """We left the peer for its dead tunnel (or had none to go to): the next move waits longer.

        The watch goes on: a new peer starts it again, and the same one (no
        other to go to) keeps its handshake, so the backoff grows.
        """
        self.moves += 1
        self.next_move_ms = now_ms + move_backoff_ms(self.moves)

    def clock_stepped(self, delta_ms: int) -> None:
        """The caller's clock was stepped: our times move with it (WireGuard's are not used)."""
        self.since_ms += delta_ms
        self.heard_ms += delta_ms
        self.next_move_ms += delta_ms
        self.fwd.clock_stepped(delta_ms)
