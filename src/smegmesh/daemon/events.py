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

from smegmesh.daemon.event_bus import (
    EVENT_TYPES,
    KEEPALIVE_S,
    MAX_SUBSCRIBERS,
    QUEUE_SIZE,
    RING_SIZE,
    Event,
    EventBus,
    Subscription,
    TooManySubscribers,
)
from smegmesh.daemon.event_detectors import (
    DEFAULT_ROUTE,
    GONE_EVENTS,
    HANDSHAKE_FRESH_S,
    MEMBER_STATES,
    ROUTE_EVENTS_MAX,
    WG_PEER_EVENTS_MAX,
    HandshakeEvents,
    MemberEvents,
    MemberView,
    diff_member,
    member_view,
    route_events,
    wg_peer_events,
)
from smegmesh.daemon.event_text import describe, key_text

__all__ = [
    "DEFAULT_ROUTE",
    "EVENT_TYPES",
    "GONE_EVENTS",
    "HANDSHAKE_FRESH_S",
    "KEEPALIVE_S",
    "MAX_SUBSCRIBERS",
    "MEMBER_STATES",
    "QUEUE_SIZE",
    "RING_SIZE",
    "ROUTE_EVENTS_MAX",
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
    "key_text",
    "member_view",
    "route_events",
    "wg_peer_events",
]
