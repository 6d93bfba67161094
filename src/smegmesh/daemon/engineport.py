"""The daemon's port of a mesh's engine driver (:mod:`smegmesh.core.driver`).

The daemon only adapts I/O: a ``Call`` becomes an asyncio task doing a gRPC
call (started by the daemon's ``start_call``), ``Changed`` marks the mesh
dirty (``on_changed``), and a ``Respond`` completes the request being
answered: :meth:`DaemonPort.request` hands a request to the driver and waits
for its reply, which may come later (a ``PingReq`` is answered when the
engine's relayed ping is).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from smegmesh.core.driver import EngineDriver
from smegmesh.core.engine import Call, Message
from smegmesh.core.exchange import ANSWERED_FOR_STRANGERS
from smegmesh.core.messages import WhoAmI, YouAre
from smegmesh.core.wire import encode
from smegmesh.daemon.rpc_common import Refused

__all__ = [
    "ANSWERED_FOR_STRANGERS",
    "REPLY_TIMEOUT_S",
    "DaemonPort",
    "answer_shows_caller_known",
    "answer_who_am_i",
    "reply_of",
]

#: A request whose reply has not come after this long gets none (the
#: engine's calls all end well before: their own timeouts are shorter).
REPLY_TIMEOUT_S = 30.0


class DaemonPort:
    """See the module docstring."""

    def __init__(
        self,
        start_call: Callable[[Call], None],
        on_changed: Callable[[frozenset[bytes]], None],
    ) -> None:
        self._start_call = start_call
        self._on_changed = on_changed
        self._ids = itertools.count(1)
        #: requests waiting for their reply (bounded by the transport's call limits)
        self._waiting: dict[int, asyncio.Future[Message]] = {}

    def send(self, call: Call) -> None:
        self._start_call(call)

    def respond(self, request_id: int, msg: Message) -> None:
        fut = self._waiting.pop(request_id, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def changed(self, keys: frozenset[bytes]) -> None:
        self._on_changed(keys)

    def request(
        self, driver: EngineDriver, src: bytes, msg: Message, now_ms: int
    ) -> asyncio.Future[Message]:
        """Give a request to ``driver`` now; the future is its reply (see :func:`reply_of`)."""
        rid = next(self._ids)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        fut.add_done_callback(lambda _f: self._waiting.pop(rid, None))
        driver.request(src, msg, now_ms, rid)
        return fut


async def reply_of(fut: asyncio.Future[Message]) -> Message | None:
    """The reply of a request (None: none came within :data:`REPLY_TIMEOUT_S`)."""
    if fut.done():
        return fut.result()
    try:
        return await asyncio.wait_for(fut, REPLY_TIMEOUT_S)
    except TimeoutError:
        return None


def answer_shows_caller_known(request: str | None, reply: str | None) -> bool:
    """Whether the engine's ``reply`` to ``request`` (message names) shows it knows the caller.

    Every other request of a caller it does not know is answered with a ``Refusal``,
    or, if it holds the caller as evicted, a ``Push`` of its evictions (``core.evicted``).
    """
    return request not in ANSWERED_FOR_STRANGERS and reply not in ("Refusal", "Push")


def answer_who_am_i(msg: WhoAmI, seen: str | None) -> bytes:
    """The encoded answer to a ``WhoAmI``: the caller's address as ``seen`` by the transport.

    Only tells the caller its own address: nothing about any mesh (asked
    before joining, to learn one's own endpoint). Refused if the address is unknown.
    """
    if seen is None:
        raise Refused("address unknown")
    return encode(YouAre(msg.mesh_id, seen))
