"""The engine's I/O: a mesh's timer loop, its outputs (calls, changes), and the
node-to-node calls it receives (``Daemon._on_rpc``).

Per mesh a :class:`~smegmesh.core.meshnode.MeshNode` decides, driven by the
driver the simulator uses too (:class:`~smegmesh.core.driver.EngineDriver`,
with the port :class:`~smegmesh.daemon.engineport.DaemonPort`); this only
moves its messages through the transport and keeps time. The engine relays
a ``PingReq`` itself: its reply comes when the relayed ping's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time

from smegmesh.core.endpoint import split_host_port
from smegmesh.core.identity import key_to_text
from smegmesh.core.meshnode import Call, Out
from smegmesh.core.meshtag import TAG_PREFIX
from smegmesh.core.messages import JoinReply, JoinRequest, Observed, Refusal, WhereAmI, WhoAmI
from smegmesh.core.wire import WireError, decode, encode
from smegmesh.daemon.base import DaemonBase
from smegmesh.daemon.devices_ops import DEVICE_REQUESTS
from smegmesh.daemon.engineport import answer_who_am_i, reply_of
from smegmesh.daemon.persist import PersistError
from smegmesh.daemon.runtime import MeshRuntime, now_ms
from smegmesh.daemon.transport import Refused, RpcError, caller_address, caller_address_verified

log = logging.getLogger("smegd")


class EngineIO(DaemonBase):
    """Mixin of the daemon: drives each mesh's engine."""

    async def _mesh_loop(self, rt: MeshRuntime) -> None:
        while True:
            try:
                deadline = rt.driver.next_wakeup(now_ms())
                delay = 1.0 if deadline is None else max(0.0, (deadline - now_ms()) / 1000)
                rt.wake.clear()
                asked = min(delay, 1.0)
                t0 = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(rt.wake.wait(), timeout=asked)
                # how much later than asked we got to run (a monotonic clock: a
                # stall of this process, not a clock step), which must not count
                # against others; woken early by input: not late
                late = int((time.monotonic() - t0 - asked) * 1000)
                rt.driver.timer(now_ms(), max(0, late))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mesh %s: engine error (continuing)", rt.mesh_id)
                await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ engine outputs
    def _emit(self, rt: MeshRuntime, outs: list[Out]) -> None:
        """Outputs of a local command: carried out by the engine's driver."""
        rt.save_soon = True  # on disk within a second (learned state waits longer)
        rt.driver.dispatch(outs)
        rt.wake.set()

    async def _commit(self, rt: MeshRuntime, outs: list[Out]) -> None:
        """Outputs of a command that changed the mesh: on disk before it answers.

        smegctl said "service web set", and a crash in the next second lost the
        change (the persist tick wrote a command's change within a second).
        A write that fails is the command's answer (``not_saved``, 503).
        """
        self._emit(rt, outs)
        await self._save_for_command(rt)

    def _start_call(self, rt: MeshRuntime, call: Call) -> None:
        """The port's ``send``: the call runs as a task of the mesh."""
        t = asyncio.create_task(self._do_call(rt, call))
        rt.calls.add(t)
        t.add_done_callback(rt.calls.discard)

    def _on_changed(self, rt: MeshRuntime, keys: frozenset[bytes]) -> None:
        """The port's ``changed``: reconcile WireGuard, persist, member events."""
        rt.dirty_wg = rt.dirty_disk = True
        if rt.node.key in keys:  # our own record (an admission we made, a refutation)
            rt.save_soon = True
        self._reconcile_wake.set()
        self.member_events.changed(rt.mesh_id, rt.node.mesh, keys)
        if log.isEnabledFor(logging.DEBUG):  # bench/calibrate.py reads this line
            text = ",".join(key_to_text(k)[:12] for k in keys)
            log.debug("mesh %s: changed %s at %.6f", rt.mesh_id, text, time.time())

    async def _do_call(self, rt: MeshRuntime, call: Call) -> None:
        rec = rt.node.mesh.record(call.to)
        if rec is None or rec.control_endpoint is None or rec.tls_fp is None:
            rt.driver.failure(call, now_ms())
            rt.wake.set()
            return
        dg = self.rpc.datagrams
        if (
            call.unanswered
            and dg is not None
            and await dg.send_unanswered(
                rec.control_endpoint, call.to, encode(call.msg), self.identity
            )
        ):
            return  # it asks for no answer: nothing goes back to the engine
        timeout = call.timeout_ms / 1000 if call.timeout_ms is not None else None
        try:
            data = await self.rpc.call(
                rec.control_endpoint, rec.tls_fp, encode(call.msg), timeout=timeout, to=call.to
            )
            reply = decode(data)
        except (RpcError, WireError) as e:
            log.debug(
                "mesh %s: %s to %s failed: %s",
                rt.mesh_id,
                type(call.msg).__name__,
                key_to_text(call.to)[:8],
                e,
            )
            rt.driver.failure(call, now_ms())
        else:
            rt.driver.reply(call, reply, now_ms())
        rt.wake.set()

    def _is_member_anywhere(self, key: bytes) -> bool:
        """The transport's member test: a caller known in any of our meshes."""
        return any(rt.node.is_member(key) for rt in self.meshes.values())

    def _members_anywhere_by_id(self, key_id: bytes, limit: int) -> list[bytes]:
        """The datagram server's member look-up: the keys a key id names in any
        of our meshes, at most ``limit``."""
        found: list[bytes] = []
        for rt in self.meshes.values():
            found.extend(k for k in rt.node.members_by_id(key_id, limit) if k not in found)
        return found[:limit]

    def _mesh_by_tag(self, tag: str, src: bytes) -> MeshRuntime | None:
        """The one mesh of ours that ``tag`` names and ``src`` is a member of (core.meshtag).

        None for none or two (a collision: the caller names the mesh in full
        after the refusal).
        """
        found = [
            rt for rt in self.meshes.values() if rt.node.tags.names(tag) and rt.node.is_member(src)
        ]
        return found[0] if len(found) == 1 else None

    def _clear_backoff(self, rt: MeshRuntime, src: bytes) -> None:
        """An authenticated call from ``src`` from the address of its control
        endpoint: that endpoint answers again, stop backing off from it.

        Only a call over the stream clears it: a datagram's source address can
        be forged (a member could name a victim's address as its control
        endpoint and clear our back-off from it with one spoofed datagram); a
        datagram only brings the next try within ``BACKOFF_HINT_S``.
        """
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
        if same and caller_address_verified.get():
            self.rpc.backoff.ok((rec.control_endpoint, rec.tls_fp))
        elif same:
            self.rpc.backoff.hint((rec.control_endpoint, rec.tls_fp))

    def _log_refused_items(self, rt: MeshRuntime, src: bytes, rejected: int, refuted: int) -> None:
        """What a request from ``src`` brought that the mesh refused, rate-limited per source.

        ``rejected``, ``refuted``: the engine's counts before the request. Items
        dropped (forged, no admission...) per sender; prunes of live members
        that their member refuted, per pruner (``core.refuted``).
        """
        node = rt.node
        if node.rejected > rejected:
            for reason in node.last_rejects:
                self.dropped_items.note(key_to_text(src)[:12], reason)
        if node.refuted.total > refuted:
            for pruner, member in node.refuted.last:
                self.refuted_prunes.note(
                    key_to_text(pruner)[:12],
                    f"mesh {rt.mesh_id}: a prune of {key_to_text(member)[:12]}, who is alive",
                )

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
            return answer_who_am_i(msg, caller_address.get())
        if isinstance(msg, WhereAmI):
            # NAT traversal: the caller's own WireGuard endpoint as we see it.
            wrt = self.meshes.get(msg.mesh_id)
            if wrt is None or not wrt.node.is_member(src):
                return encode(Refusal(msg.mesh_id))
            return encode(Observed(msg.mesh_id, await self.direct.observed(wrt, src)))
        if isinstance(msg, DEVICE_REQUESTS):  # sponsored devices (issue 18)
            return encode(await self.device_rpc(src, msg))
        rt = self.meshes.get(mesh_id) if isinstance(mesh_id, str) else None
        if rt is None and isinstance(mesh_id, str) and mesh_id.startswith(TAG_PREFIX):
            rt = self._mesh_by_tag(mesh_id, src)
        if rt is None:
            return encode(Refusal(mesh_id if isinstance(mesh_id, str) else "x"))
        counts = rt.node.rejected, rt.node.refuted.total
        pending = rt.port.request(rt.driver, src, msg, now_ms())  # the engine answers now...
        # a join's answer is at once: its reason, before another call can run
        refusal = rt.node.last_join_refusal if isinstance(msg, JoinRequest) else ""
        rt.wake.set()
        self._log_refused_items(rt, src, *counts)
        self._clear_backoff(rt, src)
        reply = await reply_of(pending)  # ...or after its relayed ping (a PingReq)
        if reply is None:
            raise Refused("no answer")
        if refusal and isinstance(reply, Refusal):
            self.refused_joins.note(key_to_text(src)[:12], f"mesh {rt.mesh_id}: {refusal}")
        if isinstance(reply, JoinReply):
            # The admission (a use of its token, in the token ledger) is on disk
            # before the joiner hears of it: after a crash, a one-use token
            # must not admit again. Not on disk: not answered; the joiner tries
            # again (an admission is per joiner) and hears once it is written.
            rt.dirty_disk = True
            try:
                await self._save_mesh_off_loop(rt)
            except PersistError:
                raise Refused("the admission could not be saved; try again later") from None
        return encode(reply)
