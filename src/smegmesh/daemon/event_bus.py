"""The event bus: numbered events, a ring buffer for ``Last-Event-ID``, log
lines, bounded subscriber queues (``daemon/events.py`` describes it).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass
from smegmesh.daemon.event_text import describe, key_text
from smegmesh.daemon.ratelog import SourceWindow

log = logging.getLogger("smegd.events")


#: Events kept for ``Last-Event-ID`` resumption.
RING_SIZE = 1024
#: Events queued for one subscriber before it loses some (``stream.dropped``).
QUEUE_SIZE = 256
#: Concurrent subscribers (``GET /v1/events`` streams) per daemon.
MAX_SUBSCRIBERS = 32
#: Seconds between ``: keepalive`` comments on an idle stream.
KEEPALIVE_S = 15.0
#: Log lines of one node's events per :data:`LOG_WINDOW_S`; the rest are counted.
LOG_LINES_PER_NODE = 30
LOG_WINDOW_S = 60.0
#: Nodes whose lines are counted per window (the rest share one count).
LOG_MAX_NODES = 4096


#: Every event type, with the level its log line is written at.
EVENT_TYPES: dict[str, int] = {
    "member.joined": logging.INFO,
    "member.left": logging.INFO,
    "member.pruned": logging.INFO,
    "member.evicted": logging.INFO,
    "member.returned": logging.INFO,
    "member.changed": logging.INFO,
    "route.changed": logging.INFO,
    "exit.changed": logging.INFO,
    "client.reassigned": logging.INFO,
    "tunnel.dead": logging.WARNING,
    "tunnel.blackhole": logging.WARNING,
    "handshake.up": logging.DEBUG,
    "handshake.down": logging.DEBUG,
    "wg.peer_added": logging.INFO,
    "wg.peer_removed": logging.INFO,
    "mesh.joined": logging.DEBUG,  # node.py logs "created/joined/rejoined mesh" itself
    "mesh.left": logging.DEBUG,
    "mesh.evicted": logging.WARNING,
    "config.reloaded": logging.INFO,
    "stream.dropped": logging.DEBUG,
}


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    time: float
    type: str
    mesh: str | None = None
    node: str | None = None
    alias: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": round(self.time, 3),
            "type": self.type,
            "mesh": self.mesh,
            "node": self.node,
            "alias": self.alias,
            "detail": dict(self.detail),
        }

    def sse(self) -> bytes:
        """The event as one Server-Sent Events message."""
        data = json.dumps(self.to_json(), separators=(",", ":"))
        return f"id: {self.seq}\nevent: {self.type}\ndata: {data}\n\n".encode()


class _LineBudget(SourceWindow[int]):
    """Log lines per node and window: at most ``per_node``, the rest counted and
    summarised once the window is over. A member may change its record as often
    as its call budget allows, each change an event; its events all go to the
    streams, but one INFO line each (a few KB with its services) let it fill the
    log, and past journald's rate limit the journal drops every smegd line.
    (The window and the bound on nodes are ``ratelog.SourceWindow``'s, as for
    the daemon's other rate-limited lines; unlike ``RateLog`` it lets
    ``per_node`` lines a window through, which the caller writes itself.)"""

    other = "other nodes"

    def __init__(self, per_node: int, window_s: float, max_nodes: int, clock: Callable[[], float]):
        super().__init__(interval_s=window_s, max_sources=max_nodes, clock=clock)
        self.per_node = per_node

    def take(self, node: str) -> bool:
        """One line of ``node``'s: may it be logged?"""
        node = self._source(node)
        n = self._counts[node] = self._counts.get(node, 0) + 1
        return n <= self.per_node

    def _summarise(self, elapsed: float) -> None:
        for node, n in self._counts.items():
            if n > self.per_node:
                log.info(
                    "member events of %s: %d not logged in the last %.0f s "
                    "(at most %d lines a node; the event stream had them all)",
                    node if node == self.other else f"{node[:8]}…",
                    n - self.per_node,
                    elapsed,
                    self.per_node,
                )


class TooManySubscribers(Exception):
    """:data:`MAX_SUBSCRIBERS` streams are already open."""


class Subscription:
    """One subscriber's bounded queue. Read with :meth:`get`; end with :meth:`close`."""

    def __init__(self, bus: EventBus, mesh: str | None, maxlen: int) -> None:
        self._bus = bus
        self.mesh = mesh
        self._maxlen = maxlen
        self._queue: collections.deque[Event] = collections.deque()
        self._wake = asyncio.Event()
        self.missed = 0  # events lost since the last one queued (slow consumer)
        self._missed_last = 0  # seq of the last event lost
        self.closed = False

    def wants(self, ev: Event) -> bool:
        return self.mesh is None or ev.mesh is None or ev.mesh == self.mesh

    def _offer(self, ev: Event) -> None:
        if len(self._queue) >= self._maxlen:
            self.missed += 1
            self._missed_last = ev.seq
            self._wake.set()
            return
        self._flush_missed()
        self._queue.append(ev)
        self._wake.set()

    def _flush_missed(self) -> None:
        if self.missed:
            self._queue.append(
                self._bus.dropped_notice(
                    self._missed_last, self.missed, "the client read too slowly"
                )
            )
            self.missed = 0

    def _push_initial(self, evs: Iterable[Event]) -> None:
        self._queue.extend(evs)
        if self._queue:
            self._wake.set()

    def __len__(self) -> int:
        return len(self._queue)

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event; None after ``timeout`` s without one or once closed."""
        while not self._queue:
            if self.missed:
                self._flush_missed()
                break
            if self.closed:
                return None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return None
        if self.closed and not self._queue:
            return None
        return self._queue.popleft()

    def close(self) -> None:
        self.closed = True
        self._wake.set()
        self._bus._subs.discard(self)


class EventBus:
    """Numbers, buffers, logs and fans out events (see the module docstring)."""

    def __init__(
        self,
        *,
        ring_size: int = RING_SIZE,
        queue_size: int = QUEUE_SIZE,
        max_subscribers: int = MAX_SUBSCRIBERS,
        clock: Callable[[], float] = time.time,
        first_seq: int = 1,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``first_seq``: the daemon passes its start time in ms, so the numbers of a
        restarted daemon are above those of the one before (a client resuming
        across the restart is told, instead of silently skipping events).
        ``monotonic``: the clock of the log lines' budget per node."""
        self._ring: collections.deque[Event] = collections.deque(maxlen=ring_size)
        self._first = first_seq
        self._seq = first_seq - 1
        self._subs: set[Subscription] = set()
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._clock = clock
        self._lines = _LineBudget(LOG_LINES_PER_NODE, LOG_WINDOW_S, LOG_MAX_NODES, monotonic)
        self.closed = False

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(
        self,
        type: str,
        *,
        mesh: str | None = None,
        node: bytes | str | None = None,
        alias: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> Event:
        """Record an event: number it, log its line, queue it for every subscriber.

        Never blocks and never raises for a slow subscriber. ``node`` is a key
        (bytes) or its text; ``alias`` None or "" means none.
        """
        self._seq += 1
        ev = Event(
            seq=self._seq,
            time=self._clock(),
            type=type,
            mesh=mesh,
            node=key_text(node) if isinstance(node, bytes) else node,
            alias=alias or None,
            detail=dict(detail or {}),
        )
        self._ring.append(ev)
        level = EVENT_TYPES.get(type, logging.INFO)
        if log.isEnabledFor(level) and (ev.node is None or self._lines.take(ev.node)):
            data = ev.to_json()
            # logFormat json: the event's fields beside the sentence (text lines ignore them)
            fields = {k: data[k] for k in ("seq", "mesh", "node", "alias", "detail")}
            log.log(level, "%s", describe(data), extra={"event": ev.type, **fields})
        for sub in self._subs:
            if sub.wants(ev):
                sub._offer(ev)
        return ev

    def tick(self) -> None:
        """Write the summary of log lines left out, once their window is over."""
        self._lines.note_tick()

    def dropped_notice(self, last_missed: int, missed: int, reason: str) -> Event:
        """A ``stream.dropped`` event (not buffered; its seq is the last one missed)."""
        return Event(
            seq=last_missed,
            time=self._clock(),
            type="stream.dropped",
            detail={"missed": missed, "reason": reason},
        )

    def subscribe(self, *, last_id: int | None = None, mesh: str | None = None) -> Subscription:
        """A new subscriber, first given what it missed after ``last_id`` (if any).

        Missed events still in the ring are replayed; if some are gone the
        replay starts with ``stream.dropped``. A ``last_id`` below this bus's
        first number comes from before a daemon restart (one above the newest
        cannot be placed at all): the whole ring is replayed after a
        ``stream.dropped`` saying so (``missed``: this run's events no longer
        buffered; what the previous run did after ``last_id`` is unknown).
        """
        if self.closed:
            raise TooManySubscribers("the daemon is shutting down")
        if len(self._subs) >= self.max_subscribers:
            raise TooManySubscribers(
                f"too many event streams open (at most {self.max_subscribers})"
            )
        sub = Subscription(self, mesh, self.queue_size)
        if last_id is not None:
            sub._push_initial(self._replay(last_id, sub))
        self._subs.add(sub)
        return sub

    def _replay(self, last_id: int, sub: Subscription) -> list[Event]:
        first = self._ring[0].seq if self._ring else self._seq + 1
        out: list[Event] = []
        if last_id > self._seq or last_id < self._first - 1:
            out.append(self.dropped_notice(first - 1, first - self._first, "the daemon restarted"))
            start = first
        elif last_id < first - 1:
            out.append(
                self.dropped_notice(first - 1, first - 1 - last_id, "older than the event buffer")
            )
            start = first
        else:
            start = last_id + 1
        # seqs in the ring are consecutive: index arithmetic, no scan
        for ev in list(self._ring)[start - first :] if self._ring else []:
            if sub.wants(ev):
                out.append(ev)
        # a replay longer than the queue is the client's to read: it is bounded by the ring
        return out

    def close(self) -> None:
        """End every stream (the daemon is stopping)."""
        self.closed = True
        for sub in list(self._subs):
            sub.close()
