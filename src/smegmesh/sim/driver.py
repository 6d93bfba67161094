"""The event loop and RPC driver shared by the simulators.

:class:`Driver` holds a virtual clock (a ``heapq`` of events, milliseconds)
and drives ``MeshNode`` engines over a simulated network through the driver
the daemon uses (:class:`~smegmesh.core.driver.EngineDriver`): this module is
only its port. It delivers ``Call`` requests and ``Respond`` replies, reports
failures (after loss, partition or a dead callee, at the call's timeout) and
wakes each engine at its next deadline. The engine itself relays ``PingReq``.

Calls go between *endpoints* (ints): one engine each. A subclass says how an
endpoint maps to its engine, its host (the simulated machine: latency,
traffic counters) and its liveness, how a public key resolves to an endpoint,
and what a ``Changed`` does: :class:`~smegmesh.sim.simulator.Simulator` has
one engine per node (endpoint = node), :class:`~smegmesh.sim.routesim.RouteSim`
one per (node, mesh).

Every message is encoded with ``smegmesh.core.wire.encode`` to count bytes
(``byte_sample=k`` encodes one message in k per type and uses the running
mean size for the others).
"""

from __future__ import annotations

import gc
import heapq
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from smegmesh.core.driver import EngineDriver
from smegmesh.core.engine import Call, Message
from smegmesh.core.meshnode import MeshNode, Out
from smegmesh.core.wire import decode, encode
from smegmesh.sim.overhead import (
    CONNECT_BYTES,
    DGRAM_MAX_BODY,
    DGRAM_UNANSWERED_SAVES,
    ChannelPool,
    model_of,
    reply_bytes,
    reply_falls_back,
    request_bytes,
)

__all__ = ["T0", "Driver", "NetParams", "TrafficBase"]

T0 = 1_700_000_000_000  # virtual epoch (ms): realistic timestamps for records

# Event kinds; subclasses use kinds >= _CUSTOM for their own events (:meth:`Driver._event`).
_TICK, _REQ, _REP, _TIMEOUT, _ACTION, _CUSTOM = range(6)


@dataclass(frozen=True)
class NetParams:
    latency_ms: float = 20.0  # median one-way latency
    node_sigma: float = 0.5  # spread of per-node distances (lognormal sigma)
    jitter_sigma: float = 0.2  # per-message jitter (lognormal sigma)
    loss: float = 0.01  # one-way message loss
    rpc_timeout_ms: int = 1_000  # a call without reply fails after this (unless it says)
    #: charge sim/overhead.py's per-message bytes on top: False (payload only),
    #: True or "stream" (every call over the stream), "datagram" (small calls as datagrams)
    wire_overhead: bool | str = False


@dataclass(slots=True)
class _Pending:
    caller: int  # endpoint
    epoch: int  # caller's epoch when it called
    to: int  # endpoint, -1 = unknown address
    msg: Any
    call: Any  # the engine's Call (or a subclass's marker, e.g. a join)
    dgram: bool = False  # wire overhead, datagram model: the request went as a datagram
    size: int = 0  # the request's payload bytes (wire overhead of a stream fallback)
    #: sent as one datagram that asks for no answer (``Call.unanswered``): the
    #: reply is not sent, and neither it nor a timeout goes back to the caller
    unanswered: bool = False


@dataclass
class TrafficBase:
    tx: list[int] = field(default_factory=list)  # bytes per host
    rx: list[int] = field(default_factory=list)
    msgs: int = 0
    #: with a wire overhead model: every model's totals from the same run (one
    #: behaviour, bytes counted both ways): name -> [tx, rx] over all hosts,
    #: "payload" included; and bytes sent per (message type, model)
    models: dict[str, list[int]] = field(default_factory=dict)
    type_models: dict[tuple[str, str], int] = field(default_factory=dict)


class _Wakeable(Protocol):
    wake_at: int | None


class Driver:
    """Event loop and RPC driver over endpoints; see the module docstring."""

    traffic: TrafficBase

    def __init__(
        self, *, seed: int, net: NetParams | None, byte_sample: int = 1, verify_sample: float = 0.0
    ) -> None:
        self.seed = seed
        #: share of delivered messages that go through the wire (encode, then
        #: decode: the receiver gets the decoded copy, as from a daemon's transport)
        self.verify_sample = verify_sample
        self.decoded = 0  # messages delivered as decoded bytes
        self._verify_rng = random.Random(f"verify/{seed}")  # not the network's: same metrics
        self.net = net or NetParams()
        self.byte_sample = max(1, byte_sample)
        self.rng = random.Random(f"net/{seed}")
        self.now = T0
        self.events = 0
        self._heap: list[tuple[int, int, int, Any]] = []
        self._seq = 0
        self._calls: dict[int, _Pending] = {}
        self._next_call = 0
        self._size_cache: dict[int, tuple[Any, int]] = {}
        self._type_stats: dict[type, list[int]] = {}  # type -> [seen, encoded, bytes]
        self._drivers: dict[int, EngineDriver] = {}
        self._model = model_of(self.net.wire_overhead)
        #: (model, caller's host) -> its warm stream channels (connection set-up)
        self._pools: dict[tuple[str, int], ChannelPool] = {}

    # ------------------------------------------------------------------ endpoint mapping

    def _engine(self, e: int) -> MeshNode:
        raise NotImplementedError

    def _slot(self, e: int) -> _Wakeable:
        """Where the endpoint's pending wake-up time is kept."""
        raise NotImplementedError

    def _host(self, e: int) -> int:
        """The host (latency, traffic counters) of an endpoint."""
        raise NotImplementedError

    def _alive(self, e: int) -> bool:
        raise NotImplementedError

    def _epoch(self, e: int) -> int:
        raise NotImplementedError

    def _key(self, e: int) -> bytes:
        raise NotImplementedError

    def _resolve(self, e: int, key: bytes) -> int:
        """The endpoint ``e`` reaches at public key ``key`` (-1: unknown address)."""
        raise NotImplementedError

    def _mesh_of(self, e: int) -> str:
        raise NotImplementedError

    def _latency_base(self, host: int) -> float:
        raise NotImplementedError

    def _can_talk(self, a: int, b: int) -> bool:
        return True

    def _count_type(self, msg: Any, size: int, request: Any = None) -> None:
        """Per-type traffic accounting of one sent message (``request``: a reply's)."""

    def _changed(self, e: int, keys: frozenset[bytes]) -> None:
        """Endpoint ``e``'s engine reported ``Changed(keys)``."""

    def _event(self, kind: int, payload: Any) -> None:
        """A subclass event (kind >= ``_CUSTOM``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ events

    def _push(self, t: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    def at(self, t: int, fn: Callable[[], None]) -> None:
        """Run ``fn`` at virtual time ``t`` (ms, absolute)."""
        self._push(t, _ACTION, fn)

    def _wake(self, e: int, t: int) -> None:
        s = self._slot(e)
        if s.wake_at is None or t < s.wake_at:
            s.wake_at = t
            self._push(t, _TICK, (e, self._epoch(e)))

    def _driver(self, e: int) -> EngineDriver:
        """The shared engine driver of endpoint ``e`` (a new one for a new engine)."""
        node = self._engine(e)
        d = self._drivers.get(e)
        if d is None or d.node is not node:
            d = self._drivers[e] = EngineDriver(node, _Port(self, e))
        return d

    def _reschedule(self, e: int) -> None:
        d = self._driver(e).next_wakeup(self.now)
        if d is not None:
            self._wake(e, d)

    def command(self, e: int, outs: Iterable[Out]) -> None:
        """Carry out the outputs of a local command of endpoint ``e``'s engine."""
        self._driver(e).dispatch(outs)
        self._reschedule(e)

    def run_until(self, t_end: int) -> None:
        """Process events up to ``t_end``.

        The cyclic garbage collector is paused meanwhile (young generations
        are collected every 20,000 events): a big simulation holds millions
        of long-lived objects (N nodes x O(N) views), and full collections
        triggered by the engine's O(N) temporaries scanned them all (at
        10,000 nodes a view rebuild took 1-7 s instead of ~0.3 s). The
        engine's behaviour does not depend on it.
        """
        was = gc.isenabled()
        gc.disable()
        try:
            self._run_until(t_end)
        finally:
            if was:
                gc.enable()

    def run_for(self, ms: int) -> None:
        self.run_until(self.now + ms)

    def _run_until(self, t_end: int) -> None:
        heap = self._heap
        since_gc = 0
        while heap and heap[0][0] <= t_end:
            since_gc += 1
            if since_gc >= 20_000:
                since_gc = 0
                gc.collect(1)
            t, _, kind, p = heapq.heappop(heap)
            self.now = t
            self.events += 1
            if kind == _TICK:
                e, epoch = p
                s = self._slot(e)
                if not self._alive(e) or self._epoch(e) != epoch or s.wake_at != t:
                    continue
                s.wake_at = None
                self._driver(e).timer(t)
                self._reschedule(e)
            elif kind == _REQ:
                self._deliver_request(p)
            elif kind == _REP:
                self._deliver_reply(*p)
            elif kind == _TIMEOUT:
                self._timeout(p)
            elif kind == _ACTION:
                p()
            else:
                self._event(kind, p)
        self.now = max(self.now, t_end)

    # ------------------------------------------------------------------ network

    def _latency(self, a: int, b: int) -> int:
        base = (self._latency_base(a) + self._latency_base(b)) / 2
        return max(1, int(base * math.exp(self.rng.gauss(0.0, self.net.jitter_sigma))))

    def _size(self, msg: Any) -> int:
        k = id(msg)
        hit = self._size_cache.get(k)
        if hit is not None and hit[0] is msg:
            return hit[1]
        st = self._type_stats.get(type(msg))
        if st is None:
            st = self._type_stats[type(msg)] = [0, 0, 0]
        st[0] += 1
        if self.byte_sample == 1 or st[0] % self.byte_sample == 1 or st[1] == 0:
            size = len(encode(msg))
            st[1] += 1
            st[2] += size
        else:
            size = st[2] // st[1]
        if len(self._size_cache) > 50_000:
            self._size_cache.clear()
        self._size_cache[k] = (msg, size)
        return size

    def _send(self, ea: int, eb: int, kind: int, payload: Any, msg: Any) -> None:
        """One-way message ea -> eb (request or reply), subject to loss and partitions."""
        ok = (
            self._alive(eb)
            and self._can_talk(ea, eb)
            and (self.net.loss <= 0 or self.rng.random() >= self.net.loss)
        )
        a = self._host(ea)
        b = self._host(eb)
        size = self._size(msg)
        tr = self.traffic
        if self._model is not None:
            size = self._charge(kind, payload, msg, size, ok)
        tr.tx[a] += size
        if ok:
            tr.rx[b] += size
        tr.msgs += 1
        c = self._calls.get(payload[0]) if kind == _REP else None
        self._count_type(msg, size, c.msg if c is not None else None)
        if ok:
            if self.verify_sample > 0 and self._verify_rng.random() < self.verify_sample:
                payload = self._through_wire(kind, payload, msg)
            self._push(self.now + self._latency(a, b), kind, payload)

    def _charge(self, kind: int, payload: Any, msg: Any, size: int, ok: bool) -> int:
        """Bytes of one message on the wire under the chosen transport model.

        Every model's bytes are totalled too (``traffic.models``), so one run
        gives the stream and datagram figures side by side. A message that
        goes over the stream to a member without a warm channel also pays for
        opening one (``overhead.ChannelPool``).
        """
        name = type(msg).__name__
        if kind == _REQ:
            dgram_extra, dgram = request_bytes("datagram", name, size)
            stream_extra = request_bytes("stream", name, size)[0]
            c = self._calls.get(payload)
            if c is not None:
                c.dgram, c.size = dgram, size
                dgram_extra -= DGRAM_UNANSWERED_SAVES if c.unanswered else 0
                stream_extra += self._connect("stream", c)
                if not dgram:
                    dgram_extra += self._connect("datagram", c)
        else:
            c = self._calls.get(payload[0])
            stream_extra = reply_bytes(name, size, 0, False)
            dgram_extra = stream_extra
            if c is not None:
                dgram_extra = reply_bytes(name, size, c.size, c.dgram)
                if reply_falls_back(name, size, c.dgram):  # the call again, over the stream
                    dgram_extra += self._connect("datagram", c)
        tr = self.traffic
        for model, extra in (("payload", 0), ("stream", stream_extra), ("datagram", dgram_extra)):
            tot = tr.models.get(model)
            if tot is None:
                tot = tr.models[model] = [0, 0]
            tot[0] += size + extra
            if ok:
                tot[1] += size + extra
            tk = (name, model)
            tr.type_models[tk] = tr.type_models.get(tk, 0) + size + extra
        return size + (dgram_extra if self._model == "datagram" else stream_extra)

    def _connect(self, model: str, c: _Pending) -> int:
        """Set-up bytes of call ``c`` over the stream in ``model`` (0: a warm channel)."""
        if c.to < 0:
            return 0
        k = (model, self._host(c.caller))
        pool = self._pools.get(k)
        if pool is None:
            pool = self._pools[k] = ChannelPool()
        return CONNECT_BYTES if pool.use((c.to, self._epoch(c.to)), self.now) else 0

    def _through_wire(self, kind: int, payload: Any, msg: Any) -> Any:
        """Deliver what decoding the message's bytes gives (as the daemon does)."""
        decoded = decode(encode(msg))
        self.decoded += 1
        if kind == _REQ:
            self._calls[payload].msg = decoded
            return payload
        return (payload[0], decoded)

    # ------------------------------------------------------------------ RPC

    def _call(
        self, caller: int, to: int, msg: Any, call: Any, timeout_ms: int | None = None
    ) -> None:
        """Call ``to`` (-1: unknown address, the call fails at the timeout)."""
        self._next_call += 1
        cid = self._next_call
        pending = self._calls[cid] = _Pending(caller, self._epoch(caller), to, msg, call)
        # as the daemon's transport: unanswered only if it is one datagram (a
        # stream, --wire-overhead stream, sends every request with its answer)
        if (
            getattr(call, "unanswered", False)
            and self._model != "stream"
            and self._size(msg) <= DGRAM_MAX_BODY
        ):
            pending.unanswered = True
        timeout = self.net.rpc_timeout_ms if timeout_ms is None else timeout_ms
        self._push(self.now + timeout, _TIMEOUT, cid)
        if to >= 0:
            self._send(caller, to, _REQ, cid, msg)

    def _outs(self, e: int, outs: Iterable[Out]) -> None:
        self._driver(e).dispatch(outs)

    def _deliver_request(self, cid: int) -> None:
        c = self._calls.get(cid)
        if c is None:
            return
        if not self._alive(c.to):
            return
        self._driver(c.to).request(self._key(c.caller), c.msg, self.now, cid)
        self._reschedule(c.to)

    def _respond(self, e: int, cid: int, msg: Message) -> None:
        """Endpoint ``e`` answers the request ``cid`` (gone already: dropped)."""
        c = self._calls.get(cid)
        if c is not None and c.unanswered:
            del self._calls[cid]  # it asked for none
        elif c is not None:
            self._send(e, c.caller, _REP, (cid, msg), msg)

    def _caller_gone(self, c: _Pending) -> bool:
        return not self._alive(c.caller) or self._epoch(c.caller) != c.epoch

    def _deliver_reply(self, cid: int, reply: Any) -> None:
        c = self._calls.pop(cid, None)
        if c is None or self._caller_gone(c):
            return  # timed out already, or the caller crashed since
        self._reply(c, reply)

    def _reply(self, c: _Pending, reply: Any) -> None:
        self._driver(c.caller).reply(c.call, reply, self.now)
        self._reschedule(c.caller)

    def _timeout(self, cid: int) -> None:
        c = self._calls.pop(cid, None)
        if c is None or self._caller_gone(c) or c.unanswered:
            return
        self._failed(c)

    def _failed(self, c: _Pending) -> None:
        self._driver(c.caller).failure(c.call, self.now)
        self._reschedule(c.caller)


class _Port:
    """The port of endpoint ``e``'s engine driver: the simulated network."""

    __slots__ = ("e", "sim")

    def __init__(self, sim: Driver, e: int) -> None:
        self.sim = sim
        self.e = e

    def send(self, call: Call) -> None:
        sim = self.sim
        sim._call(self.e, sim._resolve(self.e, call.to), call.msg, call, call.timeout_ms)

    def respond(self, request_id: int, msg: Message) -> None:
        self.sim._respond(self.e, request_id, msg)

    def changed(self, keys: frozenset[bytes]) -> None:
        self.sim._changed(self.e, keys)
