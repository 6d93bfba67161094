"""The driver of one engine, shared by the daemon and the simulator. No I/O.

:class:`EngineDriver` feeds typed inputs (:mod:`smegmesh.core.engine`) to a
:class:`~smegmesh.core.meshnode.MeshNode` and hands each output, in order, to a
:class:`Port`: the only part that differs between the daemon (gRPC over TLS,
asyncio) and the simulator (a virtual network and clock). A port transmits;
it decides nothing: every reply or failure goes back through
:meth:`EngineDriver.reply` / :meth:`EngineDriver.failure` with the ``Call``
it answers, every request through :meth:`EngineDriver.request`, and the
port's timer calls :meth:`EngineDriver.timer` at :meth:`EngineDriver.next_wakeup`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from smegmesh.core.engine import (
    Call,
    CallFailed,
    Changed,
    ClockStepped,
    Message,
    Out,
    ReplyReceived,
    RequestReceived,
    Respond,
    TimerFired,
)
from smegmesh.core.meshnode import MeshNode

__all__ = ["EngineDriver", "Port"]


class Port(Protocol):
    """The I/O side of a driver: carries out the engine's outputs."""

    def send(self, call: Call) -> None:
        """Send ``call.msg`` to member ``call.to``; later report the reply or the failure.

        A call that gets no reply within ``call.timeout_ms`` (or the port's
        own RPC timeout when None) fails.
        """

    def respond(self, request_id: int, msg: Message) -> None:
        """Send ``msg`` as the reply to the request ``request_id`` (drop it if that is gone)."""

    def changed(self, keys: frozenset[bytes]) -> None:
        """The state changed for ``keys``."""


class EngineDriver:
    """One engine and its port; see the module docstring."""

    __slots__ = ("node", "port")

    def __init__(self, node: MeshNode, port: Port) -> None:
        self.node = node
        self.port = port

    def dispatch(self, outs: Iterable[Out]) -> None:
        """Carry out outputs, in order (also those of local commands)."""
        port = self.port
        for o in outs:
            if isinstance(o, Call):
                port.send(self.node.named(o))
            elif isinstance(o, Respond):
                port.respond(o.request_id, o.msg)
            elif isinstance(o, Changed):
                port.changed(o.keys)

    def timer(self, now_ms: int, late_ms: int = 0) -> None:
        """The engine's deadline passed (``late_ms`` ago: see ``TimerFired``)."""
        self.dispatch(self.node.step(TimerFired(now_ms, late_ms)))

    def clock_stepped(self, delta_ms: int) -> None:
        """The wall clock was stepped by ``delta_ms`` (see ``ClockStepped``)."""
        self.dispatch(self.node.step(ClockStepped(delta_ms)))

    def request(self, src: bytes, msg: Message, now_ms: int, request_id: int) -> None:
        """A request from ``src``; its reply goes to ``port.respond(request_id, ...)``."""
        self.dispatch(self.node.step(RequestReceived(src, msg, now_ms, request_id)))

    def reply(self, call: Call, msg: Message, now_ms: int) -> None:
        """The reply to ``call``."""
        self.dispatch(self.node.step(ReplyReceived(call, msg, now_ms)))

    def failure(self, call: Call, now_ms: int) -> None:
        """``call`` got no reply."""
        self.dispatch(self.node.step(CallFailed(call, now_ms)))

    def next_wakeup(self, now_ms: int) -> int | None:
        """When to call :meth:`timer` next (None: only on new input).

        A deadline already past means now.
        """
        d = self.node.next_deadline()
        return None if d is None else max(d, now_ms)
