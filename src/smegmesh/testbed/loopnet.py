"""Engines on an instant in-memory network, driven by the daemon's driver.

For engine tests and fuzzing: every message goes through the wire codec
(``encode`` then ``decode``) after ``latency_ms``; a call to a node that is
down or unknown fails at the call's timeout. Each node has its own
:class:`~smegmesh.core.driver.EngineDriver`, exactly as in the daemon and the
simulator; this module is only its port (no protocol logic: the engine
relays ``PingReq`` itself).
"""

from __future__ import annotations

import heapq
import secrets
from dataclasses import dataclass, field

from smegmesh.core.driver import EngineDriver
from smegmesh.core.engine import Call, Message, Out
from smegmesh.core.invite import Bootstrap
from smegmesh.core.meshnode import MeshNode
from smegmesh.core.messages import JoinReply
from smegmesh.core.wire import decode, encode

__all__ = ["LoopNet"]


@dataclass(order=True)
class _Event:
    t: int
    seq: int
    kind: str = field(compare=False)  # "req" | "rep" | "fail"
    caller: bytes = field(compare=False)
    call: Call = field(compare=False)
    data: bytes = b""


class _LoopPort:
    __slots__ = ("key", "net")

    def __init__(self, net: LoopNet, key: bytes) -> None:
        self.net = net
        self.key = key

    def send(self, call: Call) -> None:
        self.net._push(self.net.latency_ms, "req", self.key, call, self.net._wire(call.msg))

    def respond(self, request_id: int, msg: Message) -> None:
        pending = self.net._requests.pop(request_id, None)
        if pending is not None:
            caller, call = pending
            self.net._push(self.net.latency_ms, "rep", caller, call, self.net._wire(msg))

    def changed(self, keys: frozenset[bytes]) -> None:
        self.net.changes.append((self.net.now, self.key, keys))


class LoopNet:
    """See the module docstring."""

    def __init__(self, *, latency_ms: int = 5, rpc_timeout_ms: int = 1000) -> None:
        self.latency_ms = latency_ms
        self.rpc_timeout_ms = rpc_timeout_ms
        self.nodes: dict[bytes, MeshNode] = {}
        self.drivers: dict[bytes, EngineDriver] = {}
        self.down: set[bytes] = set()
        self.now = 0
        self.changes: list[tuple[int, bytes, frozenset[bytes]]] = []
        self.wire: list[bytes] = []  # every message sent, encoded
        self._q: list[_Event] = []
        self._seq = 0
        self._requests: dict[int, tuple[bytes, Call]] = {}

    def attach(self, node: MeshNode) -> MeshNode:
        self.nodes[node.key] = node
        self.drivers[node.key] = EngineDriver(node, _LoopPort(self, node.key))
        return node

    def join(self, joiner: MeshNode, via: MeshNode) -> None:
        """``joiner`` joins through ``via`` by a one-use invitation, its reply absorbed."""
        token, outs = via.invite(
            self.now,
            ttl_ms=60_000,
            uses=1,
            bootstrap=[Bootstrap("x:1", bytes(32), via.key)],
            secret=secrets.token_bytes(16),
        )
        self.handle_outs(via, outs)
        req = joiner.join_request(token.secret, self.now)
        reply, outs = via.handle_request(joiner.key, decode(encode(req)), self.now)
        self.handle_outs(via, outs)
        assert isinstance(reply, JoinReply), reply
        self.handle_outs(joiner, joiner.absorb(reply.items, self.now))

    def handle_outs(self, node: MeshNode, outs: list[Out]) -> None:
        """Carry out the outputs of a local command of ``node``."""
        self.drivers[node.key].dispatch(outs)

    def _wire(self, msg: Message) -> bytes:
        data = encode(msg)
        self.wire.append(data)
        return data

    def _push(self, delay: int, kind: str, caller: bytes, call: Call, data: bytes = b"") -> None:
        self._seq += 1
        heapq.heappush(self._q, _Event(self.now + delay, self._seq, kind, caller, call, data))

    def _deliver(self, ev: _Event) -> None:
        if ev.caller in self.down:
            return
        if ev.kind == "rep":
            self.drivers[ev.caller].reply(ev.call, decode(ev.data), self.now)
        elif ev.kind == "fail":
            self.drivers[ev.caller].failure(ev.call, self.now)
        elif ev.call.to in self.down or ev.call.to not in self.nodes:
            timeout = ev.call.timeout_ms or self.rpc_timeout_ms
            self._push(max(0, timeout - self.latency_ms), "fail", ev.caller, ev.call)
        elif not self.nodes[ev.call.to].settings.control_endpoint:
            # a client: nothing to call (behind NAT); the daemon fails the call at once
            self._push(0, "fail", ev.caller, ev.call)
        else:
            self._seq += 1
            self._requests[self._seq] = (ev.caller, ev.call)
            self.drivers[ev.call.to].request(ev.caller, decode(ev.data), self.now, self._seq)

    def _due(self) -> int | None:
        times = [
            t
            for k, d in self.drivers.items()
            if k not in self.down and (t := d.next_wakeup(self.now)) is not None
        ]
        return min(times, default=None)

    def run_until(self, t_end: int) -> None:
        """Deliver messages and fire timers up to ``t_end`` (ms)."""
        while True:
            tick = self._due()
            nxt = min(t for t in (tick, self._q[0].t if self._q else None, t_end) if t is not None)
            if nxt >= t_end and not (self._q and self._q[0].t <= t_end):
                self.now = max(self.now, t_end)
                return
            self.now = max(self.now, nxt)
            if self._q and self._q[0].t <= self.now:
                self._deliver(heapq.heappop(self._q))
                continue
            for k, d in list(self.drivers.items()):
                w = d.next_wakeup(self.now)
                if k not in self.down and w is not None and w <= self.now:
                    d.timer(self.now)
