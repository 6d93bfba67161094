"""The node's lifecycle events: a bus (``GET /v1/events``, ``smegctl watch``) and detectors.

:class:`EventBus` numbers every event (``seq``, per daemon, increasing), keeps
the last :data:`RING_SIZE` in a ring buffer (``Last-Event-ID`` resumption),
logs one line per event (INFO for lifecycle events, docs/EVENTS.md) and hands
each to its subscribers. A subscriber has a bounded queue: publishing never
waits, a subscriber that does not read loses events and is told so by a
``stream.dropped`` event at the gap; the number of subscribers is capped.

The detectors turn the daemon's state changes into events:

* :class:`MemberEvents`: per mesh, the previous :class:`MemberView` of every
  node; on the engine's ``Changed(keys)`` only those keys are compared
  (:func:`diff_member`, pure), never the whole mesh;
* :func:`route_events`: the old and new routing tables (``_recompute_routes``);
* :func:`wg_peer_events`: the WireGuard operations the reconciler applied;
* :class:`HandshakeEvents`: handshake up/down from a WireGuard status read.

This module imports nothing heavy: ``smegctl watch`` uses :func:`describe`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smegmesh.core.record import NodeRecord
    from smegmesh.core.routing import RouteEntry, RoutingResult
    from smegmesh.core.state import MeshState
    from smegmesh.core.wgconfig import InterfaceStatus

__all__ = [
    "EVENT_TYPES",
    "HANDSHAKE_FRESH_S",
    "KEEPALIVE_S",
    "MAX_SUBSCRIBERS",
    "QUEUE_SIZE",
    "RING_SIZE",
    "WG_PEER_EVENTS_MAX",
    "Event",
    "EventBus",
    "HandshakeEvents",
    "MemberEvents",
    "MemberView",
    "Subscription",
    "TooManySubscribers",
    "describe",
    "diff_member",
    "member_view",
    "route_events",
    "wg_peer_events",
]

log = logging.getLogger("smegd.events")

#: Events kept for ``Last-Event-ID`` resumption.
RING_SIZE = 1024
#: Events queued for one subscriber before it loses some (``stream.dropped``).
QUEUE_SIZE = 256
#: Concurrent subscribers (``GET /v1/events`` streams) per daemon.
MAX_SUBSCRIBERS = 32
#: Seconds between ``: keepalive`` comments on an idle stream.
KEEPALIVE_S = 15.0
#: A handshake older than this is "down" (WireGuard's REJECT_AFTER_TIME).
HANDSHAKE_FRESH_S = 180.0
#: More WireGuard peers than this added (removed) at once make one summary event.
WG_PEER_EVENTS_MAX = 32

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
    "handshake.up": logging.DEBUG,
    "handshake.down": logging.DEBUG,
    "wg.peer_added": logging.INFO,
    "wg.peer_removed": logging.INFO,
    "mesh.joined": logging.DEBUG,  # node.py logs "created/joined/rejoined mesh" itself
    "mesh.left": logging.DEBUG,
    "config.reloaded": logging.INFO,
    "stream.dropped": logging.DEBUG,
}

#: Member states other than "live", tested in this order (first match wins);
#: each is a predicate over (state, record). A new state is one line here (and
#: its event type in :data:`GONE_EVENTS`).
MEMBER_STATES: tuple[tuple[str, Callable[[MeshState, NodeRecord], bool]], ...] = (
    ("left", lambda st, rec: rec.left),
    ("pruned", lambda st, rec: not st.is_live(rec.wg_key)),
)
#: The event when a live member enters a state (leaving "live").
GONE_EVENTS: dict[str, str] = {
    "left": "member.left",
    "pruned": "member.pruned",
    "evicted": "member.evicted",
}


def key_text(key: bytes) -> str:
    """A node key as the API writes it (standard base64, like ``wg`` and get-mesh)."""
    return base64.b64encode(key).decode("ascii")


# --------------------------------------------------------------------------- events


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


def _name(ev: Mapping[str, Any], prefix: str = "member") -> str:
    alias = ev.get("alias")
    node = ev.get("node")
    who = alias or (f"{str(node)[:8]}…" if node else "?")
    addr = ev.get("detail", {}).get("address")
    return f"{prefix} {who} ({addr})" if addr else f"{prefix} {who}"


def _peer(alias: Any, key: Any) -> str:
    if alias:
        return str(alias)
    return f"{str(key)[:8]}…" if key else "none"


def _route(r: Any) -> str:
    if not isinstance(r, Mapping):
        return "none"
    via = _peer(r.get("gateway_alias"), r.get("gateway"))
    path = r.get("path") or []
    beyond = f" (then {' > '.join(map(str, path))})" if path else ""
    return f"via {via} in {r.get('mesh')}{beyond}"


def _describe_body(ev: Mapping[str, Any]) -> str:
    t = str(ev.get("type"))
    d: Mapping[str, Any] = ev.get("detail") or {}
    if t == "member.joined":
        return f"{_name(ev)} joined"
    if t == "member.left":
        return f"{_name(ev)} left"
    if t == "member.pruned":
        return f"{_name(ev)} pruned (unreachable)"
    if t == "member.evicted":
        return f"{_name(ev)} evicted"
    if t == "member.returned":
        return f"{_name(ev)} came back (was {d.get('was', 'gone')})"
    if t == "member.changed":
        parts = []
        for k in ("alias", "description", "services", "role"):
            if k in d and isinstance(d[k], Mapping):
                old, new = d[k].get("old"), d[k].get("new")
                if k == "services":
                    parts.append(f"services {_services(old)} → {_services(new)}")
                else:
                    parts.append(f"{k} {old or '-'!s} → {new or '-'!s}")
        return f"{_name(ev)} changed " + "; ".join(parts)
    if t == "client.reassigned":
        old = _peer(d.get("old_alias"), d.get("old"))
        new = _peer(d.get("new_alias"), d.get("new"))
        return f"{_name(ev, 'client')} re-assigned from {old} to {new}"
    if t in ("route.changed", "exit.changed"):
        what = "exit" if t == "exit.changed" else f"route to {d.get('destination')}"
        return f"{what}: {_route(d.get('old'))} → {_route(d.get('new'))}"
    if t in ("wg.peer_added", "wg.peer_removed"):
        verb = "added" if t == "wg.peer_added" else "removed"
        if ev.get("node") is None and "count" in d:
            return f"{d['count']} WireGuard peers {verb}"
        return f"WireGuard peer {_name(ev, '').strip()} {verb}"
    if t in ("handshake.up", "handshake.down"):
        state = "established" if t == "handshake.up" else "lost"
        return f"handshake with {_name(ev, '').strip()} {state}"
    if t == "mesh.joined":
        return f"mesh {d.get('how', 'joined')} ({d.get('nodes', '?')} nodes)"
    if t == "mesh.left":
        return "left the mesh"
    if t == "config.reloaded":
        changed = d.get("changed")
        where = f" from {d['path']}" if d.get("path") else ""
        if isinstance(changed, Sequence) and not isinstance(changed, str) and changed:
            return f"configuration reloaded{where} (changed: {', '.join(map(str, changed))})"
        return f"configuration reloaded{where} (changed: nothing that applies live)"
    if t == "stream.dropped":
        reason = f" ({d['reason']})" if d.get("reason") else ""
        return f"{d.get('missed', '?')} events dropped{reason}"
    return f"{t} {json.dumps(dict(d), sort_keys=True)}"


def _services(s: Any) -> str:
    if not isinstance(s, Mapping) or not s:
        return "{}"
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(s.items())) + "}"


def describe(ev: Mapping[str, Any]) -> str:
    """One human line for an event (the JSON form): the log line and ``smegctl watch``."""
    body = _describe_body(ev)
    mesh = ev.get("mesh")
    return f"mesh {mesh}: {body}" if mesh else body


# --------------------------------------------------------------------------- bus


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
    ) -> None:
        """``first_seq``: the daemon passes its start time in ms, so the numbers of a
        restarted daemon are above those of the one before (a client resuming
        across the restart is told, instead of silently skipping events)."""
        self._ring: collections.deque[Event] = collections.deque(maxlen=ring_size)
        self._first = first_seq
        self._seq = first_seq - 1
        self._subs: set[Subscription] = set()
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._clock = clock
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
        if log.isEnabledFor(level):
            log.log(level, "%s", describe(ev.to_json()))
        for sub in self._subs:
            if sub.wants(ev):
                sub._offer(ev)
        return ev

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


# --------------------------------------------------------------------------- members


@dataclass(frozen=True, slots=True)
class MemberView:
    """What the events compare of one node in one mesh."""

    state: str  # "live" or a name of MEMBER_STATES
    alias: str
    address: str
    role: str
    description: str
    services: tuple[tuple[str, str], ...]
    assigned_peer: bytes | None


def member_view(state: MeshState, key: bytes) -> MemberView | None:
    """The view of ``key`` in ``state`` (None: nothing held for it)."""
    rec = state.get(key)
    if rec is None:
        if state.admission and state.authority.is_revoked(key):
            # an eviction purges the record: the view that remains is "evicted"
            return MemberView("evicted", "", "", "", "", (), None)
        return None
    name = "live"
    for st_name, test in MEMBER_STATES:
        if test(state, rec):
            name = st_name
            break
    return MemberView(
        state=name,
        alias=rec.alias,
        address=rec.address,
        role=str(rec.role.value),
        description=rec.description,
        services=rec.services,
        assigned_peer=rec.assigned_peer,
    )


def diff_member(old: MemberView | None, new: MemberView | None) -> list[tuple[str, dict[str, Any]]]:
    """The events (type, detail) for one node going from ``old`` to ``new``. Pure."""
    was_live = old is not None and old.state == "live"
    is_live = new is not None and new.state == "live"
    if not was_live and not is_live:
        return []
    if is_live and not was_live:
        assert new is not None
        base = {"address": new.address, "role": new.role}
        if old is None:
            return [("member.joined", base)]
        return [("member.returned", {**base, "was": old.state})]
    assert old is not None
    if not is_live:
        if new is None:  # collected: it was already gone (no event)
            return []
        kind = GONE_EVENTS.get(new.state, f"member.{new.state}")
        return [(kind, {"address": old.address, "role": old.role})]
    assert new is not None
    out: list[tuple[str, dict[str, Any]]] = []
    changes: dict[str, Any] = {}
    if old.alias != new.alias:
        changes["alias"] = {"old": old.alias or None, "new": new.alias or None}
    if old.description != new.description:
        changes["description"] = {"old": old.description, "new": new.description}
    if old.services != new.services:
        changes["services"] = {"old": dict(old.services), "new": dict(new.services)}
    if old.role != new.role:
        changes["role"] = {"old": old.role, "new": new.role}
    if changes:
        out.append(("member.changed", {"address": new.address, **changes}))
    if new.role == "client" and old.assigned_peer != new.assigned_peer:
        out.append(
            (
                "client.reassigned",
                {
                    "address": new.address,
                    "old": key_text(old.assigned_peer) if old.assigned_peer else None,
                    "new": key_text(new.assigned_peer) if new.assigned_peer else None,
                },
            )
        )
    return out


class MemberEvents:
    """Per mesh, the last view of every node; :meth:`changed` publishes the differences.

    A mesh is watched from :meth:`track` (its current members taken as known,
    silently) until :meth:`forget`; changes of an untracked mesh (a join in
    progress) are ignored. Views of departed nodes are kept until the state
    collects them (:meth:`sweep`).
    """

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self._views: dict[str, dict[bytes, MemberView]] = {}
        self._gone: dict[str, set[bytes]] = {}  # keys whose view is not live

    def track(self, mesh_id: str, state: MeshState, how: str) -> None:
        views: dict[bytes, MemberView] = {}
        gone: set[bytes] = set()
        for key in state.keys():  # noqa: SIM118 - MeshState is not iterable
            v = member_view(state, key)
            if v is not None:
                views[key] = v
                if v.state != "live":
                    gone.add(key)
        self._views[mesh_id] = views
        self._gone[mesh_id] = gone
        nodes = sum(1 for v in views.values() if v.state == "live")
        self.bus.publish("mesh.joined", mesh=mesh_id, detail={"how": how, "nodes": nodes})

    def forget(self, mesh_id: str) -> None:
        if self._views.pop(mesh_id, None) is not None:
            self._gone.pop(mesh_id, None)
            self.bus.publish("mesh.left", mesh=mesh_id)

    def changed(self, mesh_id: str, state: MeshState, keys: Iterable[bytes]) -> None:
        views = self._views.get(mesh_id)
        if views is None:
            return
        gone = self._gone[mesh_id]
        for key in keys:
            old = views.get(key)
            new = member_view(state, key)
            if old is None and new is not None and new.state == "live":
                prune = state.get_prune(key)
                if prune is not None:  # a pruned node we had not seen came back
                    old = MemberView("pruned", "", new.address, new.role, "", (), None)
            if new is None:
                views.pop(key, None)
                gone.discard(key)
            else:
                views[key] = new
                if new.state == "live":
                    gone.discard(key)
                else:
                    gone.add(key)
            if old == new:
                continue
            shown = new if new is not None else old
            for kind, detail in diff_member(old, new):
                self._publish_member(mesh_id, state, key, shown, kind, detail)

    def _publish_member(
        self,
        mesh_id: str,
        state: MeshState,
        key: bytes,
        view: MemberView | None,
        kind: str,
        detail: dict[str, Any],
    ) -> None:
        if kind == "client.reassigned":
            for side in ("old", "new"):
                k = detail.get(side)
                if k:
                    v = self._views[mesh_id].get(base64.b64decode(k))
                    detail[f"{side}_alias"] = v.alias if v and v.alias else None
        self.bus.publish(
            kind, mesh=mesh_id, node=key, alias=view.alias if view else None, detail=detail
        )

    def sweep(self, mesh_id: str, state: MeshState) -> None:
        """Drop views of departed nodes the state no longer holds (after its gc)."""
        views, gone = self._views.get(mesh_id), self._gone.get(mesh_id)
        if views is None or gone is None:
            return
        for key in [k for k in gone if k not in state]:
            gone.discard(key)
            views.pop(key, None)

    def alias_of(self, mesh_id: str, key: bytes) -> str | None:
        v = self._views.get(mesh_id, {}).get(key)
        return v.alias or None if v else None

    def address_of(self, mesh_id: str, key: bytes) -> str | None:
        v = self._views.get(mesh_id, {}).get(key)
        return v.address if v else None


# --------------------------------------------------------------------------- routes


def _route_json(e: RouteEntry, alias: Callable[[str, bytes], str | None]) -> dict[str, Any]:
    return {
        "mesh": e.mesh_id,
        "gateway": key_text(e.gateway),
        "gateway_alias": alias(e.mesh_id, e.gateway),
        "path": list(e.path),
    }


DEFAULT_ROUTE = "::/0"


def route_events(
    old: RoutingResult | None,
    new: RoutingResult | None,
    alias: Callable[[str, bytes], str | None] = lambda m, k: None,
) -> list[tuple[str, str | None, bytes | None, dict[str, Any]]]:
    """(type, mesh, gateway, detail) per destination whose route changed. Pure.

    The default route (``::/0``) is ``exit.changed``; others ``route.changed``.
    ``old`` None is the first computation: nothing to compare, no events.
    """
    if old is None:
        return []
    before = {e.destination: e for e in old.table}
    after = {e.destination: e for e in new.table} if new is not None else {}
    if before == after:
        return []
    out: list[tuple[str, str | None, bytes | None, dict[str, Any]]] = []
    for dest in sorted(before.keys() | after.keys()):
        b, a = before.get(dest), after.get(dest)
        if (
            b is not None
            and a is not None
            and (b.mesh_id, b.gateway, b.path)
            == (
                a.mesh_id,
                a.gateway,
                a.path,
            )
        ):
            continue
        kind = "exit.changed" if dest == DEFAULT_ROUTE else "route.changed"
        cur = a or b
        assert cur is not None
        out.append(
            (
                kind,
                cur.mesh_id,
                a.gateway if a is not None else None,
                {
                    "destination": dest,
                    "old": _route_json(b, alias) if b is not None else None,
                    "new": _route_json(a, alias) if a is not None else None,
                },
            )
        )
    return out


# --------------------------------------------------------------------------- WireGuard


def wg_peer_events(wg_ops: Iterable[Any]) -> tuple[list[bytes], list[bytes]]:
    """The public keys of peers added and removed by reconciler operations. Pure."""
    from smegmesh.core.wgdiff import AddPeer, RemovePeer

    added: list[bytes] = []
    removed: list[bytes] = []
    for op in wg_ops:
        if isinstance(op, AddPeer):
            added.append(op.peer.public_key)
        elif isinstance(op, RemovePeer):
            removed.append(op.public_key)
    return added, removed


class HandshakeEvents:
    """Handshake up/down per peer, from WireGuard status reads (whenever one is made)."""

    def __init__(self, bus: EventBus, fresh_s: float = HANDSHAKE_FRESH_S) -> None:
        self.bus = bus
        self.fresh_s = fresh_s
        self._up: dict[str, dict[bytes, bool]] = {}

    def forget(self, mesh_id: str) -> None:
        self._up.pop(mesh_id, None)

    def status(
        self,
        mesh_id: str,
        status: InterfaceStatus,
        now: float,
        members: MemberEvents | None = None,
    ) -> None:
        """Compare a fresh read with the previous one; the first read only seeds."""
        first = mesh_id not in self._up
        prev = self._up.setdefault(mesh_id, {})
        seen: set[bytes] = set()
        for key, peer in status.peers.items():
            seen.add(key)
            hs = peer.last_handshake
            up = hs is not None and now - hs < self.fresh_s
            was = prev.get(key)
            prev[key] = up
            if first or was == up or (was is None and not up):
                continue
            self.bus.publish(
                "handshake.up" if up else "handshake.down",
                mesh=mesh_id,
                node=key,
                alias=members.alias_of(mesh_id, key) if members else None,
                detail={
                    "address": members.address_of(mesh_id, key) if members else None,
                    "last_handshake": hs,
                },
            )
        for key in [k for k in prev if k not in seen]:
            del prev[key]
