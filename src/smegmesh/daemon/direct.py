"""The daemon side of NAT traversal (issue 17, docs/NAT.md).

Only with ``directPeers > 0`` and only on client meshes. Every ``TICK_S``:

* every ``DISCOVER_S``, ask the assigned peer (``WhereAmI``) which endpoint it
  sees our WireGuard packets come from, and publish it with our local
  endpoints in our record (only when it changed); in a task of its own, one
  per mesh at a time (a slow or hostile assigned peer holds no tick);
* read our WireGuard status, advance the :class:`~smegmesh.core.direct.DirectTable`
  with the clients :class:`~smegmesh.core.direct_choice.DirectChoice` picks, and
  re-apply the WireGuard configuration when the sessions changed;
* every ``SLOW_PROBE_S``, send an ICMPv6 echo (:class:`~smegmesh.daemon.probe.Prober`)
  to the chosen clients not (yet) direct and to the assigned peer (the round
  trip through the relay), shown by ``get-mesh`` / ``smegctl status``.

Apart from the ticks, every ``TICK_S``, an echo goes over every up session of
every mesh (liveness both ways, round trip): a tick waiting for the WireGuard
worker must not let the sessions of every mesh go stale.

Several clients behind one NAT on the same WireGuard port (the default port
is the same for every node of a mesh): the NAT can give that port to only one
of them, the others get another port per destination, which no other client
can predict. A client whose assigned peer sees it on another port than it
listens on, and whose port was not chosen with ``--wgport``, moves (once for
this reason) to a port derived from its key (:func:`relocated_port`) and
discovers again: the NAT then keeps that port for it too. The NAT may also keep the port for both
(each talks to another relay): the mapping then clashes as soon as both send to
the same client. So a client also moves when another client behind the same
public address publishes a local endpoint on its port (both move: mappings
the NAT made for one of them on the shared port would keep the other from
the partners it tried), some seconds after it first sees the
clash (``clash_move_delay_ms``), so that its record showing the clash
reaches the other first.
Derived ports that collide clash again: one more move, to the next salt's
port (:func:`port_clash`, ``DirectSchedule.may_move``). See docs/NAT.md.

The peer side answers ``WhereAmI`` from its WireGuard status
(:mod:`smegmesh.daemon.whereami`): the caller is authenticated by the transport, so a
member learns only its own endpoint.

The decisions (targets, port moves, when to discover and probe) are pure, in
:mod:`smegmesh.core.direct_plan` and :mod:`smegmesh.core.direct`; this module
does their I/O and reads the clock.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from typing import Any

from smegmesh.core.desired import assigned_peer
from smegmesh.core.direct import DirectPeer, DirectTable
from smegmesh.core.direct_choice import DirectChoice
from smegmesh.core.direct_plan import (
    DirectSchedule,
    DirectTargets,
    clash_move_delay_ms,
    direct_targets,
    local_endpoints,
    nat_moved_port,
    next_port,
    port_clash,
)
from smegmesh.core.identity import key_to_text
from smegmesh.core.messages import Observed, WhereAmI
from smegmesh.core.record import Role
from smegmesh.core.wire import WireError, decode, encode
from smegmesh.daemon.probe import Prober
from smegmesh.daemon.ratelog import RateLog
from smegmesh.daemon.whereami import StatusReads, observed_endpoint

__all__ = ["DirectManager", "annotate", "observed_endpoint"]

log = logging.getLogger(__name__)

TICK_S = 0.5
#: A mesh whose choice from scratch costs more keyed hashes than this
#: (records x (directPeers + 1)) has its choice brought up to date in a worker
#: thread: about 10 ms of CPU here, 3,000 clients with directPeers 64 ~0.1 s.
INLINE_HASHES = 20_000


def _now_ms() -> int:
    """The monotonic clock the schedules run on (ms)."""
    return int(time.monotonic() * 1000)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def annotate(detail: Any, rtts: Mapping[str, float]) -> Any:
    """Fill in each member's ``path`` and measured ``rtt_ms`` of ``detail`` (MeshDetail).

    In place (``detail`` is a view just built for one request) and linear in
    members: no copy per node (run it off the event loop for big meshes).
    """
    from smegmesh.daemon.status import member_paths

    paths = member_paths(detail)
    for n in detail.nodes:
        n.path = paths.get(n.public_key)
        n.rtt_ms = rtts.get(n.public_key)
    return detail


class DirectManager:
    """Direct sessions of this node's client meshes (one table per mesh)."""

    def __init__(self, node: Any, limit: int) -> None:
        self.node = node
        self.limit = limit
        self.tables: dict[str, DirectTable] = {}
        self.plans: dict[str, dict[bytes, DirectPeer]] = {}
        #: per mesh: when discovery and slow probes are due, the port move
        self.schedules: dict[str, DirectSchedule] = {}
        #: per mesh: (state version, chosen client -> endpoint) taken into account
        self._targets: dict[str, tuple[int, dict[bytes, str]]] = {}
        #: per mesh: the mutual choice, kept up to date (core.direct_choice)
        self._choices: dict[str, DirectChoice] = {}
        #: per mesh: (state version, the choice being brought up to date in a thread)
        self._choosing: dict[str, tuple[int, asyncio.Future[DirectTargets]]] = {}
        #: WireGuard status reads that answer WhereAmI (shared by the callers)
        self.status_reads = StatusReads(node)
        self.prober = Prober()
        #: per mesh: key -> overlay address of the nodes probed
        self.probed: dict[str, dict[bytes, str]] = {}
        #: per mesh: the discovery in flight (one at a time, not awaited by the tick)
        self._discovering: dict[str, asyncio.Task[None]] = {}
        #: a tick that raised, and a discovery without an answer: the first of
        #: each per mesh at once, then one summary a minute (a client whose
        #: direct sessions never start says why)
        self.errors = RateLog(log, "direct sessions:", unit="failed ticks", prep="in mesh")
        self.discovery = RateLog(log, "endpoint discovery:", unit="failures", prep="in mesh")
        cfg = getattr(node, "config", None)
        self.attempt_ms = int(getattr(cfg, "direct_attempt", 15.0) * 1000)
        self.backoff_base_ms = int(getattr(cfg, "direct_backoff", 5.0) * 1000)

    async def observed(self, rt: Any, key: bytes) -> str | None:
        """Answer ``WhereAmI`` from ``key`` (:meth:`StatusReads.observed`)."""
        return await self.status_reads.observed(rt, key)

    def plan(self, mesh_id: str) -> Mapping[bytes, DirectPeer]:
        return self.plans.get(mesh_id, {})

    def rtt_ms(self, mesh_id: str, key: bytes) -> float | None:
        """The measured round trip to ``key`` (None: not probed, or no answer yet)."""
        addr = self.probed.get(mesh_id, {}).get(key)
        return self.prober.rtt_ms(addr) if addr is not None else None

    def rtts(self, mesh_id: str) -> dict[str, float]:
        """Public key (base64) -> measured round trip, of the members probed in ``mesh_id``."""
        out = {}
        for k, addr in self.probed.get(mesh_id, {}).items():
            rtt = self.prober.rtt_ms(addr)
            if rtt is not None:
                out[key_to_text(k)] = rtt
        return out

    async def run(self) -> None:
        self.prober.open()
        try:
            await self._run()
        finally:
            self.prober.close()

    async def _run(self) -> None:
        """Tick every mesh in turn; echoes and discoveries go in tasks of their own.

        A tick waits for the one WireGuard worker (its status read), which a
        big mesh's apply or a slow read may hold: the echoes over the up
        sessions of every mesh must not wait with it (unanswered for
        ``PROBE_STALE_MS``, a session is dropped), nor for a slow ``WhereAmI``.
        """
        echoes = asyncio.create_task(self._echo_loop())
        try:
            while True:
                await asyncio.sleep(TICK_S)
                self._forget_left()
                self.errors.note_tick()
                self.discovery.note_tick()
                for rt in list(self.node.meshes.values()):
                    try:
                        await self._tick(rt)
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:
                        self.errors.note(rt.mesh_id, f"{type(e).__name__}: {e}")
        finally:
            tasks = [echoes, *self._discovering.values()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _forget_left(self) -> None:
        """Drop what is held for meshes left.

        ``schedules`` too: a rejoin starts on the default port again, and may
        have to move off it.
        """
        held: tuple[dict[str, Any], ...] = (
            self.tables,
            self.plans,
            self._targets,
            self.probed,
            self._choices,
            self._choosing,
            self.schedules,
        )
        for d in held:
            for mesh_id in [m for m in d if m not in self.node.meshes]:
                del d[mesh_id]
        for mesh_id in [m for m in self._discovering if m not in self.node.meshes]:
            self._discovering.pop(mesh_id).cancel()  # its discovery task
        self.prober.keep([a for p in self.probed.values() for a in p.values()])

    async def _echo_loop(self) -> None:
        """An echo over every up session of every mesh each ``TICK_S`` (liveness both ways)."""
        while True:
            await asyncio.sleep(TICK_S)
            for mesh_id, plan in list(self.plans.items()):
                addrs = self.probed.get(mesh_id, {})
                for k, p in plan.items():
                    if p.routed and k in addrs:
                        self.prober.send(addrs[k])

    async def _tick(self, rt: Any) -> None:
        me = rt.node.record
        # evicted, and told so: no member answers our discovery (core.evicted)
        quiet = rt.node.evicted is not None
        if me is None or me.role != Role.CLIENT or not rt.up or rt.joining or quiet:
            if self.plans.pop(rt.mesh_id, None):
                rt.dirty_wg = True
                self.node._reconcile_wake.set()
            sch = self.schedules.get(rt.mesh_id)
            if sch is not None:
                sch.paused()
            return
        if rt.mesh_id not in self._discovering and self._schedule(rt.mesh_id).discovery_due(
            _now_ms(), bool(me.nat_endpoint)
        ):
            self._start_discovery(rt, me)
        targets = self._sessions_with(rt, me)
        self._probe_slow(rt.mesh_id)
        table = self.tables.setdefault(
            rt.mesh_id,
            DirectTable(
                me=self.node.identity.wg_public_key,
                attempt_ms=self.attempt_ms,
                backoff_base_ms=self.backoff_base_ms,
            ),
        )
        if not targets and not table.sessions and not table.backoff:
            self.plans.pop(rt.mesh_id, None)
            return
        loop = asyncio.get_running_loop()
        status = await loop.run_in_executor(self.node._wg_pool, self.node.backend.read, rt.ifname)
        wg = {k: (p.last_handshake, p.rx_bytes) for k, p in status.peers.items() if k in targets}
        before = {k: table.state(k) for k in targets}
        addrs = self.probed.get(rt.mesh_id, {})
        replies = (
            {k: self.prober.reply_ms(addrs[k]) for k in targets if k in addrs}
            if self.prober.usable
            else None
        )
        plan = table.update(int(time.time() * 1000), targets, wg, replies)
        for k in targets:
            after = table.state(k)
            if after != before[k]:
                # one line per change of state: bounded by the backoff
                log.info(
                    "mesh %s: direct session with %s: %s",
                    rt.mesh_id,
                    key_to_text(k)[:12],
                    after if after != "backoff" else "down, retry later",
                )
        if plan != self.plans.get(rt.mesh_id, {}):
            self.plans[rt.mesh_id] = plan
            rt.dirty_wg = True
            self.node._reconcile_wake.set()

    def _sessions_with(self, rt: Any, me: Any, now_ms: int | None = None) -> dict[bytes, str]:
        """The clients to hold direct sessions with now (``DirectSchedule.sessions_allowed``)."""
        targets = self._choose(rt, me, now_ms)
        sch = self._schedule(rt.mesh_id)
        if not sch.sessions_allowed:  # a clash move is due: is it now?
            self._shared_port(rt, me, rt.node.live_records(), now_ms)
        return targets if sch.sessions_allowed else {}

    def _choose(self, rt: Any, me: Any, now_ms: int | None = None) -> dict[bytes, str]:
        """The chosen clients and their endpoints, as of the last mesh state taken into account.

        A new state version (any record changed: a member may re-sign its own
        at will) reads the candidates again, linear and without a hash; the
        mutual choice (:class:`DirectChoice`) is computed again only for the
        candidates that came or went. It was computed from scratch each time
        on the event loop: ``(directPeers + 1) x N`` keyed hashes (3,000
        clients, directPeers 64: ~0.3 s). In a big mesh (``INLINE_HASHES``)
        that runs in a worker thread, one at a time, and the choice before it
        holds until it is done.
        """
        mesh_id, version = rt.mesh_id, rt.node.mesh.version
        cached = self._targets.get(mesh_id)
        job = self._choosing.get(mesh_id)
        if job is not None:
            if not job[1].done():
                return cached[1] if cached is not None else {}
            del self._choosing[mesh_id]
            try:
                cached = self._took(mesh_id, job[0], job[1].result())
            except Exception:
                self._choices.pop(mesh_id, None)  # half updated: start over
                raise
        if cached is not None and cached[0] == version:
            return cached[1]
        records = rt.node.live_records()
        self._shared_port(rt, me, records, now_ms)
        choice = self._choices.get(mesh_id)
        if choice is None or choice.limit != self.limit:
            choice = self._choices[mesh_id] = DirectChoice(me.wg_key, self.limit)
        work = functools.partial(direct_targets, me, records, self.limit, choice)
        if len(records) * (self.limit + 1) > INLINE_HASHES and _loop_running():
            future = asyncio.get_running_loop().run_in_executor(None, work)
            self._choosing[mesh_id] = (version, future)
            return cached[1] if cached is not None else {}
        return self._took(mesh_id, version, work())[1]

    def _took(
        self, mesh_id: str, version: int, targets: DirectTargets
    ) -> tuple[int, dict[bytes, str]]:
        self.probed[mesh_id] = targets.probed
        cached = self._targets[mesh_id] = (version, targets.chosen)
        return cached

    def _schedule(self, mesh_id: str) -> DirectSchedule:
        return self.schedules.setdefault(mesh_id, DirectSchedule())

    def _probe_slow(self, mesh_id: str) -> None:
        if not self._schedule(mesh_id).slow_probe_due(_now_ms()):
            return
        plan = self.plans.get(mesh_id, {})
        for k, addr in self.probed.get(mesh_id, {}).items():
            if k not in plan or not plan[k].routed:
                self.prober.send(addr)

    def _relocate(self, rt: Any, seen: str) -> bool:
        """Move to a port of our own when the NAT did not keep ours (see module doc)."""
        if not nat_moved_port(seen, rt.listen_port):
            return False
        return self._move(rt, f"the NAT maps WireGuard port {rt.listen_port} to {seen}")

    def _shared_port(self, rt: Any, me: Any, records: Any, now_ms: int | None = None) -> bool:
        """Another client behind our NAT listens on our port: we move (so does it).

        Some seconds after we first see it (``DirectSchedule.clash_move_due``).
        """
        now = _now_ms() if now_ms is None else now_ms
        sch = self._schedule(rt.mesh_id)
        delay = clash_move_delay_ms(rt.node.gossip.pull_interval_ms)
        r = port_clash(me, records, rt.listen_port)
        first = sch.clash_ms is None
        due = sch.clash_move_due(now, r is not None, rt.opts.get("wgport") is not None, delay)
        if r is not None and first and sch.clash_ms is not None:  # seen now, a move is due
            log.info(
                "mesh %s: client %s behind the same NAT has WireGuard port %d: "
                "moving in %g s (it moves too)",
                rt.mesh_id,
                key_to_text(r.wg_key)[:12],
                rt.listen_port,
                delay / 1000,
            )
        if not due:
            return False
        return self._move(rt, "a client behind the same NAT had this port", clash=True)

    def _move(self, rt: Any, why: str, clash: bool = False) -> bool:
        sch = self._schedule(rt.mesh_id)
        if not sch.may_move(rt.opts.get("wgport") is not None, clash):
            return False  # bounded (see DirectSchedule.may_move); a port chosen by the user is kept
        # the ports of our other meshes are taken; ours is the one we leave
        taken = {m.listen_port for m in self.node.meshes.values() if m is not rt}
        key = self.node.identity.wg_public_key
        port = next_port(rt.mesh_id, key, taken, sch.moves, rt.listen_port)
        log.info("mesh %s: %s: moving WireGuard to port %d", rt.mesh_id, why, port)
        sch.moved(_now_ms())  # and discover the new mapping at once
        rt.listen_port = port
        rt.dirty_wg = True
        rt.dirty_disk = rt.save_soon = True  # our own choice: on disk within a second
        self.node._reconcile_wake.set()
        return True

    def _still_client(self, rt: Any) -> Any:
        """Our record in ``rt`` if direct sessions still apply to it (after an await)."""
        me = rt.node.record
        if self.node.meshes.get(rt.mesh_id) is not rt or not rt.up or rt.joining:
            return None  # left, down or rejoining meanwhile
        return me if me is not None and me.role == Role.CLIENT else None

    def _start_discovery(self, rt: Any, me: Any) -> None:
        """Ask in a task of its own: the tick (and every other mesh's) goes on meanwhile."""
        mesh_id = rt.mesh_id

        async def discover() -> None:
            try:
                await self._discover(rt, me)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.discovery.note(mesh_id, f"{type(e).__name__}: {e}")

        def done(task: asyncio.Task[None]) -> None:
            if self._discovering.get(mesh_id) is task:
                del self._discovering[mesh_id]

        task = self._discovering[mesh_id] = asyncio.create_task(discover())
        task.add_done_callback(done)

    async def _discover(self, rt: Any, me: Any) -> None:
        peers = {r.wg_key: r for r in rt.node.live_records() if r.role == Role.PEER}
        via = assigned_peer(me, peers)
        rec = peers.get(via) if via is not None else None
        if rec is None or not rec.control_endpoint or rec.tls_fp is None:
            self.discovery.note(rt.mesh_id, "no assigned peer with a control endpoint")
            return
        try:
            reply = decode(
                await self.node.rpc.call(
                    rec.control_endpoint, rec.tls_fp, encode(WhereAmI(rt.mesh_id))
                )
            )
        except (WireError, Exception) as e:
            self.discovery.note(rt.mesh_id, f"{type(e).__name__}: {e}")
            return
        me = self._still_client(rt)  # as it is now: the answer took its time
        if me is not None:
            await self._answered(rt, me, reply, peers)

    async def _answered(self, rt: Any, me: Any, reply: Any, peers: dict[bytes, Any]) -> None:
        """Act on the assigned peer's answer to ``WhereAmI``: move, wait, or publish."""
        if not isinstance(reply, Observed):
            self.discovery.note(rt.mesh_id, f"answered {type(reply).__name__}")
            return
        if reply.endpoint is None:
            if self._schedule(rt.mesh_id).no_handshake_yet_is_normal(_now_ms()):
                log.debug("mesh %s: the assigned peer has no handshake with us yet", rt.mesh_id)
            else:
                self.discovery.note(rt.mesh_id, "the assigned peer has no handshake with us yet")
            return
        if self._relocate(rt, reply.endpoint):
            return
        sch = self._schedule(rt.mesh_id)
        if sch.settling(_now_ms(), reply.endpoint, rt.listen_port, bool(me.nat_endpoint)):
            # the relay has not seen a packet from the new port yet: ask again soon
            if rt.mesh_id in self.probed:  # a packet to the relay from the new port
                via = assigned_peer(me, peers)
                if via is not None and via in self.probed[rt.mesh_id]:
                    self.prober.send(self.probed[rt.mesh_id][via])
            return
        from smegmesh.net.discovery import outgoing_address

        addr = await asyncio.to_thread(outgoing_address)
        me = self._still_client(rt)
        if me is None:
            return
        local = local_endpoints(rt.listen_port, [addr] if addr else [])
        if (me.nat_endpoint, me.local_endpoints) != (reply.endpoint, local):
            log.info(
                "mesh %s: WireGuard endpoint seen from outside: %s", rt.mesh_id, reply.endpoint
            )
            self.node._emit(
                rt,
                rt.node.update_self(
                    int(time.time() * 1000), nat_endpoint=reply.endpoint, local_endpoints=local
                ),
            )
