"""The apply step: the meshes' state becoming WireGuard and host configuration.

Routes over all meshes (``core.multimesh``), the desired configuration
(``core.desired``), the reconciler in the WireGuard worker thread
(``wg.reconcile``), and what follows an apply (hooks, handshake nudges,
``wg.peer.*`` events, DNS, bridge masquerading, the periodic health check).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import Any

from smegmesh.core.cert import Revocation
from smegmesh.core.desired import desired_config
from smegmesh.core.identity import key_to_text
from smegmesh.core.multimesh import MeshRouting, publish_adverts, routing_job
from smegmesh.core.record import MAX_PROOFS
from smegmesh.core.routing import RoutingResult
from smegmesh.core.wgdiff import AddPeer, UpdatePeer
from smegmesh.daemon.events import WG_PEER_EVENTS_MAX, route_events, wg_peer_events
from smegmesh.daemon.forward_probe import ForwardProbeOps
from smegmesh.daemon.metrics import WG_READ_TIMEOUT_S
from smegmesh.daemon.pacing import PassPacer
from smegmesh.daemon.ratelog import RateLog
from smegmesh.daemon.runtime import MeshRuntime, now_ms

log = logging.getLogger("smegd")


class ApplyOps(ForwardProbeOps):
    """Mixin of the daemon: the reconcile loop."""

    #: the last error of computing routes, logged once (None: the last pass did)
    _route_error: str | None = None
    #: endpoint names that did not resolve (written in the WireGuard worker only)
    _unresolved: RateLog

    def _start_wireguard(self) -> None:
        """The WireGuard backend (``wgBackend``) and the reconciler over it and the host."""
        from smegmesh.net.host import HostNetwork, MemoryHost
        from smegmesh.wg.factory import create_backend
        from smegmesh.wg.reconcile import Reconciler

        cfg = self.config
        kind = cfg.effective_wg_backend
        # Endpoint names of members that do not resolve: a member can publish a
        # new one with each version of its record, one failed lookup (and so a
        # WARNING) per reconcile pass. The first at once, then a summary a minute;
        # noted and flushed in the WireGuard worker only (_wg_health_check).
        self._unresolved = unresolved = RateLog(
            log, "unresolved", unit="endpoint names", prep="in", level=logging.WARNING
        )
        self.backend = create_backend(
            kind,
            socket_dir=str(cfg.effective_wg_socket_dir),
            report=lambda endpoint, why: unresolved.note("member records", f"{endpoint}: {why}"),
        )
        host = MemoryHost() if kind == "memory" else HostNetwork()
        self.reconciler = Reconciler(self.backend, host)
        if not cfg.bridge_masquerade:
            log.info(
                "bridgeMasquerade is off: a bridge forwards without address translation "
                "(replies through another bridge between the same meshes are dropped)"
            )
        log.info("WireGuard backend: %s", getattr(self.backend, "kind", kind))

    async def _reconcile_loop(self) -> None:
        last_check = time.monotonic()
        pacer = PassPacer()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_wake.wait(), timeout=2.0)
            wait = pacer.wait_s(time.monotonic())
            if wait > 0:  # a storm of changes: this pass takes those of the wait too
                await asyncio.sleep(wait)
            self._reconcile_wake.clear()
            cpu = time.thread_time()
            await self._reconcile_pass()
            pacer.done(time.monotonic(), time.thread_time() - cpu)
            if time.monotonic() - last_check > 5:
                last_check = time.monotonic()
                await self._every_5s()

    async def _every_5s(self) -> None:
        """The periodic checks. The tunnel watch reads our links before the health
        check brings one set down outside smegd up again: so it sees it was down."""
        await self._watch_tunnels()
        await self._health_check()
        await self._poll_handshakes()
        self._tell_evicted()

    def _tell_evicted(self) -> None:
        """Once per mesh: a member showed us our eviction (``core.evicted``), a WARNING."""
        for rt in list(self.meshes.values()):
            rev = rt.node.evicted
            if rev is None or rt.evicted_told:
                continue
            rt.evicted_told = True
            self.events.publish(
                "mesh.evicted",
                mesh=rt.mesh_id,
                node=key_to_text(rev.issuer),
                alias=self.member_events.alias_of(rt.mesh_id, rev.issuer),
                detail=_evicted_detail(rt.node.key, rev),
            )

    async def _reconcile_pass(self) -> None:
        """Routes, every changed mesh's WireGuard configuration, DNS, aliases, bridge NAT."""
        try:
            await self._recompute_routes()
            self._route_error = None
        except Exception as e:  # the rest of the pass, and the loop, go on
            if repr(e) != self._route_error:
                log.exception("cannot compute routes (kept the last ones)")
            self._route_error = repr(e)
        for rt in list(self.meshes.values()):
            # Skip a mesh left (or a join abandoned) while this pass awaited
            # another mesh's apply: applying it would re-create its interface
            # after leave-mesh removed it.
            if not rt.dirty_wg or rt.joining or self.meshes.get(rt.mesh_id) is not rt:
                continue
            rt.dirty_wg = False
            try:
                await self._apply_mesh(rt)
            except Exception as e:
                rt.dirty_wg = True
                log.error("mesh %s: cannot apply WireGuard configuration: %s", rt.mesh_id, e)
        self._update_dns()
        self._report_alias_clashes()
        await self._apply_bridge_nat()

    async def _apply_mesh(self, rt: MeshRuntime) -> None:
        """One mesh's desired configuration through the reconciler, with what follows."""
        iface, host = self._desired(rt)
        loop = asyncio.get_running_loop()
        if not rt.up and not rt.creating:
            # Up hooks go with the creation of the interface, not with an apply:
            # none at a restart that finds it up (stop runs no down hooks), one
            # preUp however often a failing apply is retried.
            exists = await loop.run_in_executor(self._wg_pool, self.reconciler.exists, rt.ifname)
            if not exists:
                rt.creating = True
                await self._run_hooks(rt, "preUp")
        res = await loop.run_in_executor(self._wg_pool, self.reconciler.apply, iface, host)
        rt.up = True
        if rt.creating:  # created now, or by an attempt that failed after
            rt.creating = False
            await self._run_hooks(rt, "postUp")
        if not res.created:
            self._nudge_new_peers(rt, res.wg_ops)
        self.metrics.reconcile.observe(res.seconds)
        self._wg_peer_events(rt, res.wg_ops)
        if res.changed:
            log.info(
                "mesh %s: %s updated (%d WireGuard ops, %d host ops, %.1f ms)",
                rt.mesh_id,
                rt.ifname,
                len(res.wg_ops),
                len(res.host_ops),
                res.seconds * 1000,
            )

    async def _health_check(self) -> None:
        """Repair WireGuard interfaces changed behind our back (``Reconciler.check``).

        An interface lost and created again by the backend is configured again
        there, and its mesh's postUp hooks run again with the next apply that
        succeeds (``_apply_mesh``, ``rt.creating``): what they set up on it went
        with it. Not preUp: the interface exists before we hear of the loss.
        """
        try:
            fixed, again = await asyncio.get_running_loop().run_in_executor(
                self._wg_pool, self._wg_health_check
            )
        except Exception as e:
            log.warning("WireGuard health check failed: %s", e)
            return
        # (No periodic status read: get-mesh reads handshakes and
        # counters when asked, so an idle daemon does not poll.)
        by_ifname = {rt.ifname: rt for rt in self.meshes.values()}
        for ifname, ops in again.items():  # endpoints resolved late: as after an apply
            if (rt := by_ifname.get(ifname)) is not None:
                self._nudge_new_peers(rt, ops)
        for r in fixed:
            rt = by_ifname.get(r.interface)
            log.warning(
                "WireGuard interface %s was lost: created and configured again (%d ops)%s",
                r.interface,
                len(r.wg_ops),
                "; its postUp hooks run again" if rt is not None and rt.hooks.get("postUp") else "",
            )
            if rt is not None:
                rt.creating = True
                rt.dirty_wg = True
                self._reconcile_wake.set()

    def _wg_health_check(self) -> tuple[list[Any], dict[str, list[Any]]]:
        """The health check's part in the WireGuard worker thread, every 5 s:
        also the summary of unresolved endpoint names, in the thread that notes them.
        (Interfaces created again, ops applied again per interface.)"""
        self._unresolved.note_tick()
        fixed: list[Any] = self.reconciler.check()
        return fixed, self.reconciler.take_applied_again()

    async def _read_status(self, rt: MeshRuntime) -> Any | None:
        """One WireGuard status read of ``rt``'s interface, kept in ``wg_status``
        (None: it failed, took over ``WG_READ_TIMEOUT_S``, or the mesh went meanwhile)."""
        try:
            status = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(
                    self._wg_pool, self.backend.read, rt.ifname
                ),
                WG_READ_TIMEOUT_S,
            )
        except Exception as e:
            log.debug("mesh %s: cannot read WireGuard status: %s", rt.mesh_id, e)
            return None
        if self.meshes.get(rt.mesh_id) is not rt:
            return None
        self.wg_status[rt.mesh_id] = status
        return status

    async def _link_up(self, rt: MeshRuntime) -> bool | None:
        """Whether ``rt``'s interface is up (None: no such link, or the read failed)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._wg_pool, self.reconciler.host.is_up, rt.ifname
            )
        except Exception as e:
            log.debug("mesh %s: cannot read the link state: %s", rt.mesh_id, e)
            return None

    async def _watch_tunnels(self) -> None:
        """A client's tunnel to its peer, every 5 s: a dead one moves it (``core.tunnel``).

        A status read where the core watches a tunnel, on a backend with a data
        plane (the memory backend makes no handshakes), and the link's state (a
        link set down outside smegd is no fault of the peer's); the core decides.
        Then the probe through the peer the core asks for, if any (``forward_probe``).
        """
        if self.backend.kind == "memory":
            return
        for rt in list(self.meshes.values()):
            if not rt.up or rt.joining or not rt.node.tunnel_watched(rt.keepalive):
                continue
            status = await self._read_status(rt)
            up = await self._link_up(rt)
            move = (
                None
                if status is None
                else rt.node.tunnel_read(now_ms(), status, rt.keepalive, link_up=up is not False)
            )
            if move is None:
                self._probe_forwarding(rt)  # and through it (core.forwardwatch)
                continue
            self.events.publish(  # its line is the WARNING in the log
                "tunnel.dead",
                mesh=rt.mesh_id,
                node=move.old,
                alias=self.member_events.alias_of(rt.mesh_id, move.old),
                detail={
                    "silent_s": round(move.silent_ms / 1000),
                    "new": key_to_text(move.new) if move.new else None,
                    "new_alias": self.member_events.alias_of(rt.mesh_id, move.new)
                    if move.new
                    else None,
                },
            )
            self._emit(rt, move.outs)

    #: Handshake state is read this often, only while an event stream is open.
    HANDSHAKE_POLL_S = 10.0

    async def _poll_handshakes(self) -> None:
        """handshake.up/down events: one status read per mesh, only while someone listens."""
        if not self.events.subscribers:
            return
        if time.monotonic() - self._handshakes_polled < self.HANDSHAKE_POLL_S:
            return
        self._handshakes_polled = time.monotonic()
        for rt in list(self.meshes.values()):
            if not rt.up or self.meshes.get(rt.mesh_id) is not rt:
                continue
            status = await self._read_status(rt)
            if status is not None:
                self.handshakes.status(rt.mesh_id, status, time.time(), self.member_events)

    def _wg_peer_events(self, rt: MeshRuntime, wg_ops: list[Any]) -> None:
        """wg.peer_added / wg.peer_removed for what the reconciler applied."""
        added, removed = wg_peer_events(wg_ops)
        for kind, keys in (("wg.peer_added", added), ("wg.peer_removed", removed)):
            if len(keys) > WG_PEER_EVENTS_MAX:
                self.events.publish(kind, mesh=rt.mesh_id, detail={"count": len(keys)})
                continue
            for key in keys:
                self.events.publish(
                    kind,
                    mesh=rt.mesh_id,
                    node=key,
                    alias=self.member_events.alias_of(rt.mesh_id, key),
                    detail={"address": self.member_events.address_of(rt.mesh_id, key)},
                )

    #: At most this many new peers are nudged per apply (a join adds one).
    NUDGE_MAX = 8

    def _nudge_new_peers(self, rt: MeshRuntime, wg_ops: list[Any]) -> None:
        """Start the WireGuard handshake with peers just added, or whose endpoint was just set.

        A joiner configures every member at once and its first packets make its
        WireGuard send handshake initiations; a member that has not heard of the
        joiner yet drops them, and WireGuard retries only after 5 s (REKEY_TIMEOUT).
        One empty datagram to the new peer's overlay address (discard port) when
        the member adds it makes the member initiate at once, so the joiner is
        reachable within the gossip delay. Peers with an endpoint only (a NATed
        client is unreachable until it calls in); never with the memory backend
        (no interface: the datagram would leave by the host's default route).

        An endpoint set later (its name resolved late, or it changed) gets the
        same: otherwise WireGuard starts the handshake only at its next retry
        or keepalive, and between peers with no keepalive not before something
        is sent (tests/netns/test_late_name_netns.py).
        """
        if getattr(self.backend, "kind", "memory") == "memory":
            return
        added = [
            op.peer.public_key if isinstance(op, AddPeer) else op.public_key
            for op in wg_ops
            if (isinstance(op, AddPeer) and op.peer.endpoint)
            or (isinstance(op, UpdatePeer) and op.endpoint)
        ]
        if not added or len(added) > self.NUDGE_MAX:
            return
        records = (rt.node.mesh.record(key) for key in added)
        send_nudges([rec.address for rec in records if rec is not None])

    async def _recompute_routes(self) -> None:
        """Path-vector routing over all our meshes (core.multimesh); publish our adverts.

        The computation runs in a thread: it is linear in records times routes,
        and members' records of many routes made it seconds of the event loop
        (100 records of 512 routes: 1.3 s). What it reads is a snapshot of
        immutable records; its adverts go only into the meshes still here.
        """
        nodes = {m: rt.node for m, rt in self.meshes.items()}
        opts = {
            m: MeshRouting(rt.advertise_routes, rt.advertise_defaults)
            for m, rt in self.meshes.items()
        }
        job = routing_job(nodes, opts, accept_defaults=self.config.accept_defaults)
        result = await asyncio.to_thread(job) if job is not None else None
        here = {m: n for m, n in nodes.items() if (rt := self.meshes.get(m)) and rt.node is n}
        outs = publish_adverts(here, opts, result, now_ms=now_ms()) if result else {}
        old = self.routing
        self.routing = result
        self._report_unprovable(old, result)
        if old is not result:
            for kind, mesh, gw, detail in route_events(old, result, self.member_events.alias_of):
                self.events.publish(kind, mesh=mesh, node=gw, detail=detail)
        for mesh_id, o in outs.items():
            self._emit(self.meshes[mesh_id], o)
        for rt in list(self.meshes.values()):
            before = old.gateway_routes.get(rt.mesh_id) if old else None
            after = result.gateway_routes.get(rt.mesh_id) if result else None
            if before != after:
                rt.dirty_wg = True

    @staticmethod
    def _report_unprovable(old: RoutingResult | None, new: RoutingResult | None) -> None:
        """One warning per mesh when the meshes left out of its adverts change.

        A record carries at most MAX_PROOFS membership proofs, and receivers
        drop an advert whose first mesh it does not prove: a bridge in more
        meshes advertises nothing through the ones left out (core.routing).
        """
        before = old.unprovable if old is not None else {}
        after = new.unprovable if new is not None else {}
        for mesh_id, left_out in sorted(after.items()):
            if before.get(mesh_id) != left_out:
                log.warning(
                    "mesh %s: no routes advertised through %s: a record proves at most "
                    "%d meshes (the first by id are kept)",
                    mesh_id,
                    ", ".join(left_out),
                    MAX_PROOFS,
                )

    def _desired(self, rt: MeshRuntime) -> Any:
        gw = self.routing.gateway_routes.get(rt.mesh_id, ()) if self.routing else ()
        return desired_config(
            gateway_routes=gw,
            mesh_id=rt.mesh_id,
            self_key=self.identity.wg_public_key,
            private_key=self.identity.wg_private_key,
            role=rt.role,
            listen_port=rt.listen_port,
            records=rt.node.live_records(),
            ifname=rt.ifname,
            keepalive=rt.keepalive,
            devices=[(d.wg_key, d.address, d.sponsor) for d in self._devices(rt)],
            direct=self.direct.plan(rt.mesh_id),
        )


def send_nudges(addresses: list[str]) -> None:
    """One empty datagram to each overlay address's discard port (failures ignored)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for address in addresses:
            with contextlib.suppress(OSError):
                s.sendto(b"", (address, 9))


def _evicted_detail(key: bytes, rev: Revocation) -> dict[str, object]:
    """The event ``mesh.evicted``'s detail: when, and (by cascade) through which admitter."""
    if rev.target == key:
        return {"time": rev.issued_ms / 1000, "cascade": rev.cascade}
    return {"time": rev.issued_ms / 1000, "cascade": True, "through": key_to_text(rev.target)}
