"""The engine's I/O: a mesh's timer loop, its outputs (calls, changes), and the
node-to-node calls it receives (``Daemon._on_rpc``).

Per mesh a :class:`~smegmesh.core.meshnode.MeshNode` decides; this only moves
its messages through the transport and keeps time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time

from smegmesh.core.endpoint import split_host_port
from smegmesh.core.identity import key_to_text
from smegmesh.core.meshnode import Call, Changed, Out, Relay
from smegmesh.core.messages import Ack, Observed, Refusal, WhereAmI, WhoAmI, YouAre
from smegmesh.core.wire import WireError, decode, encode
from smegmesh.daemon.base import DaemonBase
from smegmesh.daemon.runtime import MeshRuntime, now_ms
from smegmesh.daemon.transport import Refused, RpcError, caller_address

log = logging.getLogger("smegd")


class EngineIO(DaemonBase):
    """Mixin of the daemon: drives each mesh's engine."""

    async def _mesh_loop(self, rt: MeshRuntime) -> None:
        node = rt.node
        while True:
            try:
                deadline = node.next_deadline()
                delay = 1.0 if deadline is None else max(0.0, (deadline - now_ms()) / 1000)
                rt.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(rt.wake.wait(), timeout=min(delay, 1.0))
                self._emit(rt, node.tick(now_ms()))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mesh %s: engine error (continuing)", rt.mesh_id)
                await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ engine outputs
    def _emit(self, rt: MeshRuntime, outs: list[Out]) -> None:
        for o in outs:
            if isinstance(o, Call):
                t = asyncio.create_task(self._do_call(rt, o))
                rt.calls.add(t)
                t.add_done_callback(rt.calls.discard)
            elif isinstance(o, Changed):
                rt.dirty_wg = rt.dirty_disk = True
                self._reconcile_wake.set()
                self.member_events.changed(rt.mesh_id, rt.node.mesh, o.keys)
                if log.isEnabledFor(logging.DEBUG):  # bench/calibrate.py reads this line
                    keys = ",".join(key_to_text(k)[:12] for k in o.keys)
                    log.debug("mesh %s: changed %s at %.6f", rt.mesh_id, keys, time.time())
        rt.wake.set()

    async def _do_call(self, rt: MeshRuntime, call: Call) -> None:
        node = rt.node
        rec = node.mesh.record(call.to)
        if rec is None or rec.control_endpoint is None or rec.tls_fp is None:
            self._emit(rt, node.handle_failure(call.to, call.ctx, now_ms()))
            return
        try:
            data = await self.rpc.call(rec.control_endpoint, rec.tls_fp, encode(call.msg))
            reply = decode(data)
        except (RpcError, WireError) as e:
            log.debug("mesh %s: call to %s failed: %s", rt.mesh_id, key_to_text(call.to)[:8], e)
            self._emit(rt, node.handle_failure(call.to, call.ctx, now_ms()))
            return
        self._emit(rt, node.handle_reply(call.to, call.ctx, reply, now_ms()))

    def _is_member_anywhere(self, key: bytes) -> bool:
        """The transport's member test: a caller known in any of our meshes."""
        return any(rt.node.is_member(key) for rt in self.meshes.values())

    def _clear_backoff(self, rt: MeshRuntime, src: bytes) -> None:
        """An authenticated call from ``src`` from the address of its control
        endpoint: that endpoint answers again, stop backing off from it."""
        if not len(self.rpc.backoff):
            return
        rec = rt.node.mesh.record(src)
        seen = caller_address.get()
        if rec is None or not rec.control_endpoint or rec.tls_fp is None or seen is None:
            return
        try:
            same = ipaddress.ip_address(split_host_port(rec.control_endpoint)[0]) == (
                ipaddress.ip_address(seen)
            )
        except ValueError:
            return
        if same:
            self.rpc.backoff.ok((rec.control_endpoint, rec.tls_fp))

    async def _on_rpc(self, src: bytes, body: bytes) -> bytes:
        try:
            msg = decode(body)
        except WireError as e:
            # Not logged per call (a flood on demand): the transport's rate-limited
            # refusal log counts it under "malformed message".
            log.debug("dropped malformed message from %s: %s", key_to_text(src)[:8], e)
            raise Refused("malformed message") from None
        mesh_id = getattr(msg, "mesh_id", None)
        if isinstance(msg, WhoAmI):
            # Only tells the caller its own address: nothing about any mesh.
            seen = caller_address.get()
            if seen is None:
                raise Refused("address unknown")
            return encode(YouAre(msg.mesh_id, seen))
        if isinstance(msg, WhereAmI):
            # NAT traversal: the caller's own WireGuard endpoint as we see it.
            wrt = self.meshes.get(msg.mesh_id)
            if wrt is None or not wrt.node.is_member(src):
                return encode(Refusal(msg.mesh_id))
            return encode(Observed(msg.mesh_id, await self.direct.observed(wrt, src)))
        rt = self.meshes.get(mesh_id) if isinstance(mesh_id, str) else None
        if rt is None:
            return encode(Refusal(mesh_id if isinstance(mesh_id, str) else "x"))
        rejected = rt.node.rejected
        reply, outs = rt.node.handle_request(src, msg, now_ms())
        self._emit(rt, outs)
        if rt.node.rejected > rejected:  # dropped items: logged per sender, rate-limited
            for reason in rt.node.last_rejects:
                self.dropped_items.note(key_to_text(src)[:12], reason)
        self._clear_backoff(rt, src)
        if isinstance(reply, Relay):
            reply = await self._relay(rt, reply)
        return encode(reply)

    async def _relay(self, rt: MeshRuntime, relay: Relay) -> Ack:
        """A ``PingReq``'s indirect probe: ping the target for the caller, answer ``Ack(ok)``."""
        target = rt.node.mesh.record(relay.target)
        ok = False
        if target is not None and target.control_endpoint and target.tls_fp:
            try:
                r = decode(
                    await self.rpc.call(
                        target.control_endpoint,
                        target.tls_fp,
                        encode(relay.msg),
                        timeout=self.liveness.probe_timeout_ms / 1000,
                    )
                )
                ok = isinstance(r, Ack) and r.ok
            except (RpcError, WireError):
                ok = False
        return Ack(rt.mesh_id, relay.msg.probe_id, ok)
