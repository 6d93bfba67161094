"""A client's probes through its assigned peer: the adapter of ``core.forwardwatch``.

Every 5 s (with the tunnel watch) the core may name a member to probe; the
daemon sends the authenticated ``Ping`` to that member's overlay address at
its control port (crossing the peer's forwarding) and to its control
endpoint (the underlay), one datagram exchange each and no fallback to the
stream (with ``datagrams: false``, one TLS connection each, opened for the
probe: ``RpcClient.probe``), and gives the core what answered. The core decides; a move for a
peer that forwards nothing is the event ``tunnel.blackhole``.
"""

from __future__ import annotations

import asyncio
import logging

from smegmesh.core.endpoint import join_host_port, split_host_port
from smegmesh.core.forwardwatch import PROBE_TIMEOUT_MS, ForwardMove
from smegmesh.core.identity import key_to_text
from smegmesh.core.messages import Ping
from smegmesh.core.wire import encode
from smegmesh.daemon.base import DaemonBase
from smegmesh.daemon.runtime import MeshRuntime, now_ms

log = logging.getLogger("smegd")


class ForwardProbeOps(DaemonBase):
    """Mixin of the daemon: a client's probes through its peer."""

    def _probe_forwarding(self, rt: MeshRuntime) -> None:
        """Start the probe the core asks for now, if any (a task of the mesh)."""
        target = rt.node.forward_probe(now_ms(), rt.keepalive)
        if target is None:
            return
        t = asyncio.create_task(self._forward_probe(rt, target))
        rt.calls.add(t)
        t.add_done_callback(rt.calls.discard)

    async def _forward_probe(self, rt: MeshRuntime, target: bytes) -> None:
        overlay = underlay = False
        rec = rt.node.mesh.record(target)
        dg = self.rpc.datagrams
        if rec is not None and rec.control_endpoint:
            # a name, as the control plane resolves it (no shared thread held)
            where = await self.control_names.resolve_async(rec.control_endpoint)
            try:
                host, port = split_host_port(where or rec.control_endpoint)
            except ValueError:
                host, port = "", 0
            body = encode(Ping(rt.mesh_id, 0))
            wait = PROBE_TIMEOUT_MS / 1000
            if dg is not None:
                through, direct = await asyncio.gather(
                    dg.probe(rec.address, port, target, body, wait, self.identity),
                    dg.probe(host, port, target, body, wait, self.identity),
                )
            elif rec.tls_fp is not None and host:
                # datagrams off here: a TLS connection each way, opened for the probe
                fp = rec.tls_fp
                through, direct = await asyncio.gather(
                    self.rpc.probe(join_host_port(rec.address, port), fp, body, wait, target),
                    self.rpc.probe(join_host_port(host, port), fp, body, wait, target),
                )
            else:
                through = direct = None
            overlay, underlay = through is not None, direct is not None
        log.debug(
            "mesh %s: probe of %s: through our peer %s, directly %s",
            rt.mesh_id,
            key_to_text(target)[:12],
            "answered" if overlay else "unanswered",
            "answered" if underlay else "unanswered",
        )
        if self.meshes.get(rt.mesh_id) is not rt:
            return
        move = rt.node.forward_result(now_ms(), target, overlay, underlay, rt.keepalive)
        if move is not None:
            self._forward_moved(rt, move)

    def _forward_moved(self, rt: MeshRuntime, move: ForwardMove) -> None:
        alias = self.member_events.alias_of
        self.events.publish(  # its line is the WARNING in the log
            "tunnel.blackhole",
            mesh=rt.mesh_id,
            node=move.old,
            alias=alias(rt.mesh_id, move.old),
            detail={
                "members": [key_to_text(k) for k in move.members],
                "member_aliases": [alias(rt.mesh_id, k) for k in move.members],
                "new": key_to_text(move.new) if move.new else None,
                "new_alias": alias(rt.mesh_id, move.new) if move.new else None,
            },
        )
        self._emit(rt, move.outs)
