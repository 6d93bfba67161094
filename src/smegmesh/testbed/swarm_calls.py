"""A swarm process's calls between members: in the process, or over the network.

The calls a member's engine makes (``Call``) go to a member of the same process
without a socket (encoded and decoded as on the wire, answered on the next loop
turn), or over the real transport to another process or to a smegd; a call that
asks for no answer (``Call.unanswered``, a push along the tree) goes as smegd
sends it: one datagram, nothing fed back. A mixin of ``swarm_worker.Worker``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from smegmesh.core.driver import EngineDriver
from smegmesh.core.endpoint import split_host_port
from smegmesh.core.meshnode import Call
from smegmesh.core.wire import WireError, decode, encode
from smegmesh.daemon.dgram_wire import MAX_BODY as DGRAM_MAX_BODY
from smegmesh.daemon.engineport import reply_of
from smegmesh.daemon.rpc_dgram_client import DatagramClient
from smegmesh.daemon.runtime import now_ms
from smegmesh.daemon.transport import RpcClient, RpcError
from smegmesh.testbed.swarm_plan import CALL_TIMEOUT_S, Member, Plan, Stats

__all__ = ["CallsMixin"]


class CallsMixin:
    """The calls of a swarm process's members (see the module docstring)."""

    plan: Plan
    stats: Stats
    local: dict[bytes, Member]
    keys: dict[bytes, int]  # every swarm member's key -> its index
    fps: dict[bytes, int]
    peer_client: RpcClient
    datagrams: DatagramClient | None
    certificates: OrderedDict[bytes, bytes]
    _tasks: set[asyncio.Task[None]]

    if TYPE_CHECKING:

        @staticmethod
        def _drv(m: Member) -> EngineDriver: ...
        def _schedule(self, m: Member) -> None: ...
        async def _serve(self, m: Member, src: bytes, body: bytes, addr: str | None) -> bytes: ...

    def _send(self, m: Member, call: Call) -> None:
        """The port's ``send``: a call to a member of this process or over the network."""
        if call.to in self.local:  # no task: delivered on the next loop turn
            asyncio.get_running_loop().call_soon(self._local_call, m, call, m.epoch)
        else:
            self._spawn(self._do_call(m, call))

    def _local_call(self, m: Member, call: Call, epoch: int) -> None:
        """A call between two members of this process, encoded and decoded as on the wire."""
        self.stats.local_calls += 1
        self.stats.served += 1
        target = self.local[call.to]
        if m.epoch != epoch:
            return  # the caller crashed since
        body = encode(call.msg)
        # as one datagram that asks for no answer (daemon/rpc_dgram.py): nothing comes back
        quiet = call.unanswered and len(body) <= DGRAM_MAX_BODY
        try:
            if target.down:  # nothing listens: refused at once (a quiet one: lost)
                if quiet:
                    return
                raise WireError("member down")
            msg = decode(body)
        except WireError:
            self._drv(m).failure(call, now_ms())
            self._schedule(m)
            return
        assert target.port is not None
        pending = target.port.request(self._drv(target), m.identity.wg_public_key, msg, now_ms())
        self._schedule(target)
        if quiet:
            return
        if pending.done():  # answered at once (nearly always): no task, next loop turn
            asyncio.get_running_loop().call_soon(self._reply, m, call, pending.result(), epoch)
        else:  # a relayed ping: the answer comes later, or never
            self._spawn(self._deliver(m, call, pending, epoch))

    def _reply(self, m: Member, call: Call, reply: Any, epoch: int) -> None:
        """A local call's reply, as it would come off the wire (dropped if ``m`` crashed)."""
        if m.epoch == epoch:
            self._drv(m).reply(call, decode(encode(reply)), now_ms())
            self._schedule(m)

    async def _deliver(self, m: Member, call: Call, pending: Any, epoch: int) -> None:
        """The reply of a local call, when the target's engine gives it (a relay: later)."""
        reply = await reply_of(pending)
        if reply is None and m.epoch == epoch:
            self._drv(m).failure(call, now_ms())
            self._schedule(m)
        elif reply is not None:
            self._reply(m, call, reply, epoch)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ calls
    async def call_as(
        self, m: Member, to: bytes, body: bytes, timeout: float | None = None
    ) -> bytes:
        """Send ``body`` from member ``m`` to node ``to``; raises RpcError."""
        target = self.local.get(to)
        if target is not None:
            if target.down:
                raise RpcError("member down")
            self.stats.local_calls += 1
            await asyncio.sleep(0)  # as a socket would: the reply comes later
            return await self._serve(target, m.identity.wg_public_key, body, None)
        rec = m.node.mesh.record(to)
        if rec is None or rec.control_endpoint is None or rec.tls_fp is None:
            raise RpcError("no endpoint")
        proc = self.fps.get(rec.tls_fp)
        if proc is not None and to in self.keys:  # another swarm process: its shared channel
            self.stats.cross_calls += 1
            port = split_host_port(rec.control_endpoint)[1]
            return await self.peer_client.call(
                f"127.0.0.1:{port}", rec.tls_fp, body, timeout, to=to, identity=m.identity
            )
        self.stats.external_calls += 1
        if m.client is None:
            m.client = RpcClient(
                m.identity,
                timeout=CALL_TIMEOUT_S,
                channel_idle_s=self.plan.channel_idle_s,
                certificates=self.certificates,
                datagrams=self.datagrams,
            )
        return await m.client.call(rec.control_endpoint, rec.tls_fp, body, timeout, to=to)

    async def _send_unanswered(self, m: Member, call: Call) -> bool:
        """``call`` as one datagram asking no answer, as smegd's (False: cannot; not between
        swarm processes, whose shared channel speaks for many)."""
        rec = m.node.mesh.record(call.to)
        dg = m.client.datagrams if m.client is not None else None
        if rec is None or rec.control_endpoint is None or dg is None or call.to in self.keys:
            return False
        return await dg.send_unanswered(rec.control_endpoint, call.to, encode(call.msg), m.identity)

    async def _do_call(self, m: Member, call: Call) -> None:
        timeout = call.timeout_ms / 1000 if call.timeout_ms is not None else None
        epoch = m.epoch
        if call.unanswered and await self._send_unanswered(m, call):
            self.stats.external_calls += 1
            self._schedule(m)
            return
        try:
            reply = decode(await self.call_as(m, call.to, encode(call.msg), timeout))
        except (RpcError, WireError) as e:
            self.stats.failures += 1
            self.stats.extra["last_failure"] = str(e)[:200]
            if m.epoch == epoch:
                self._drv(m).failure(call, now_ms())
        else:
            if m.epoch == epoch:
                self._drv(m).reply(call, reply, now_ms())
        self._schedule(m)
