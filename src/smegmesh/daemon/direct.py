"""The daemon side of NAT traversal (issue 17, docs/NAT.md).

Only with ``directPeers > 0`` and only on client meshes. Every ``TICK_S``:

* every ``DISCOVER_S``, ask the assigned peer (``WhereAmI``) which endpoint it
  sees our WireGuard packets come from, and publish it with our local
  endpoints in our record (only when it changed);
* read our WireGuard status, advance the :class:`~smegmesh.core.direct.DirectTable`
  with the clients :func:`~smegmesh.core.direct.choose_direct` picks, and
  re-apply the WireGuard configuration when the sessions changed;
* send an ICMPv6 echo (:class:`~smegmesh.daemon.probe.Prober`) over every up
  session each tick (liveness both ways, round trip), and every ``SLOW_PROBE_S``
  to the chosen clients not (yet) direct and to the assigned peer (the round
  trip through the relay), shown by ``get-mesh`` / ``smegctl status``.

Several clients behind one NAT on the same WireGuard port (the default port
is the same for every node of a mesh): the NAT can give that port to only one
of them, the others get another port per destination, which no other client
can predict. A client whose assigned peer sees it on another port than it
listens on, and whose port was not chosen with ``--wgport``, moves once to a
port derived from its key (:func:`relocated_port`) and discovers again: the
NAT then keeps that port for it too. The NAT may also keep the port for both
(each talks to another relay): the mapping then clashes as soon as both send to
the same client. So a client also moves when another client behind the same
public address publishes a local endpoint on its port (of the two, the one
with the higher key moves). See docs/NAT.md.

The peer side answers ``WhereAmI`` from its WireGuard status
(:func:`observed_endpoint`): the caller is authenticated by the transport, so a
member learns only its own endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from smegmesh.core.desired import assigned_peer
from smegmesh.core.direct import DirectPeer, DirectTable, choose_direct, endpoint_for
from smegmesh.core.endpoint import join_host_port, split_host_port
from smegmesh.core.identity import key_to_text
from smegmesh.core.messages import Observed, WhereAmI
from smegmesh.core.record import MAX_LOCAL_ENDPOINTS, Role, check_endpoint
from smegmesh.core.wire import WireError, decode, encode
from smegmesh.daemon.probe import Prober

log = logging.getLogger(__name__)

TICK_S = 0.5
#: Discovery period once the endpoint is known, and while it is not yet (the
#: assigned peer has no handshake with us right after the join).
DISCOVER_S = 20.0
DISCOVER_RETRY_S = 2.0
STATUS_CACHE_S = 2.0
#: Round trip to the chosen clients not direct and to the assigned peer: this often.
SLOW_PROBE_S = 5.0
#: After moving to another port, the endpoint seen from outside is taken as it
#: is at the latest this long after the move (the relay learns the new port from
#: our next packet to it).
RELOCATE_SETTLE_S = 15.0
#: Ports a relocated client picks from (IANA dynamic range).
RELOCATE_LO, RELOCATE_HI = 49152, 65535


def observed_endpoint(status: Any, key: bytes) -> str | None:
    """The endpoint WireGuard last saw ``key``'s packets from (None: no handshake)."""
    if status is None:
        return None
    p = status.peers.get(key)
    if p is None or p.last_handshake is None or not p.endpoint:
        return None
    try:
        return check_endpoint(p.endpoint)
    except ValueError:
        return None


def local_endpoints(port: int, addresses: list[str]) -> tuple[str, ...]:
    """``host:port`` for the first few usable local addresses (bounded)."""
    out: list[str] = []
    for a in addresses:
        if len(out) >= MAX_LOCAL_ENDPOINTS:
            break
        with contextlib.suppress(ValueError):
            out.append(check_endpoint(join_host_port(a, port)))
    return tuple(out)


def relocated_port(mesh_id: str, key: bytes, taken: set[int], salt: int = 0) -> int:
    """A port derived from the mesh and this node's key (distinct w.h.p.), not in ``taken``."""
    span = RELOCATE_HI - RELOCATE_LO + 1
    digest = hashlib.blake2b(
        mesh_id.encode() + key + salt.to_bytes(4, "big"), digest_size=8, person=b"smeg-port"
    ).digest()
    h = int.from_bytes(digest, "big")
    for i in range(span):
        port = RELOCATE_LO + (h + i) % span
        if port not in taken:
            return port
    raise ValueError("no port free")


def _host_of(endpoint: str | None) -> str | None:
    if not endpoint:
        return None
    try:
        return split_host_port(endpoint)[0]
    except (ValueError, TypeError):
        return None


def _port(endpoint: str) -> int | None:
    try:
        return int(split_host_port(endpoint)[1])
    except (ValueError, TypeError):
        return None


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

    def __init__(self, node: Any, limit: int, rng: random.Random | None = None) -> None:
        self.node = node
        self.limit = limit
        self.rng = rng or random.Random()
        self.tables: dict[str, DirectTable] = {}
        self.plans: dict[str, dict[bytes, DirectPeer]] = {}
        self._discovered: dict[str, float] = {}
        self._targets: dict[str, tuple[int, dict[bytes, str]]] = {}
        #: WireGuard status read to answer WhereAmI, per mesh: (monotonic time, status)
        self._status_cache: dict[str, tuple[float, Any]] = {}
        self.prober = Prober()
        #: per mesh: key -> overlay address of the nodes probed
        self.probed: dict[str, dict[bytes, str]] = {}
        self._slow_probe: dict[str, float] = {}
        #: meshes whose port was moved (once), and when
        self.relocated: dict[str, float] = {}
        cfg = getattr(node, "config", None)
        self.attempt_ms = int(getattr(cfg, "direct_attempt", 15.0) * 1000)
        self.backoff_base_ms = int(getattr(cfg, "direct_backoff", 5.0) * 1000)

    async def observed(self, rt: Any, key: bytes) -> str | None:
        """Answer ``WhereAmI`` from ``key`` (one status read per mesh per ``STATUS_CACHE_S``)."""
        cached = self._status_cache.get(rt.mesh_id)
        if cached is None or time.monotonic() - cached[0] > STATUS_CACHE_S:
            status = None
            with contextlib.suppress(Exception):
                status = await asyncio.get_running_loop().run_in_executor(
                    self.node._wg_pool, self.node.backend.read, rt.ifname
                )
            cached = self._status_cache[rt.mesh_id] = (time.monotonic(), status)
        return observed_endpoint(cached[1], key)

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
        while True:
            await asyncio.sleep(TICK_S)
            maps: tuple[dict[str, Any], ...] = (
                self.tables,
                self.plans,
                self._discovered,
                self._targets,
                self.probed,
                self._slow_probe,
            )
            for d in maps:
                for mesh_id in [m for m in d if m not in self.node.meshes]:
                    del d[mesh_id]  # meshes left
            self.prober.keep([a for p in self.probed.values() for a in p.values()])
            for rt in list(self.node.meshes.values()):
                try:
                    await self._tick(rt)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.debug("mesh %s: direct sessions: %s", rt.mesh_id, e)

    async def _tick(self, rt: Any) -> None:
        me = rt.node.record
        if me is None or me.role != Role.CLIENT or not rt.up or rt.joining:
            if self.plans.pop(rt.mesh_id, None):
                rt.dirty_wg = True
                self.node._reconcile_wake.set()
            return
        period = DISCOVER_S if me.nat_endpoint else DISCOVER_RETRY_S
        if time.monotonic() - self._discovered.get(rt.mesh_id, 0.0) >= period:
            self._discovered[rt.mesh_id] = time.monotonic()
            await self._discover(rt, me)
            me = rt.node.record
        targets = self._choose(rt, me)
        self._probe_slow(rt.mesh_id)
        table = self.tables.setdefault(
            rt.mesh_id,
            DirectTable(
                rng=self.rng, attempt_ms=self.attempt_ms, backoff_base_ms=self.backoff_base_ms
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
        for k, p in plan.items():  # liveness both ways over every up session
            if p.routed and k in addrs:
                self.prober.send(addrs[k])
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

    def _choose(self, rt: Any, me: Any) -> dict[bytes, str]:
        """The chosen clients and their endpoints (recomputed when the mesh state changed)."""
        # the choice is recomputed only when the mesh state changed
        version = rt.node.mesh.version
        cached = self._targets.get(rt.mesh_id)
        if cached is None or cached[0] != version:
            records = rt.node.live_records()
            by_key = {r.wg_key: r for r in records}
            chosen: dict[bytes, str] = {}
            for k in choose_direct(me.wg_key, records, self.limit):
                ep = endpoint_for(me, by_key[k])
                if ep is not None:
                    chosen[k] = ep
            cached = self._targets[rt.mesh_id] = (version, chosen)
            probed = {k: by_key[k].address for k in chosen}
            via = assigned_peer(me, {r.wg_key: r for r in records if r.role == Role.PEER})
            if via is not None:
                probed[via] = by_key[via].address
            self.probed[rt.mesh_id] = probed
            self._shared_port(rt, me, records)
        return cached[1]

    def _probe_slow(self, mesh_id: str) -> None:
        if time.monotonic() - self._slow_probe.get(mesh_id, 0.0) < SLOW_PROBE_S:
            return
        self._slow_probe[mesh_id] = time.monotonic()
        plan = self.plans.get(mesh_id, {})
        for k, addr in self.probed.get(mesh_id, {}).items():
            if k not in plan or not plan[k].routed:
                self.prober.send(addr)

    def _relocate(self, rt: Any, seen: str) -> bool:
        """Move to a port of our own when the NAT did not keep ours (see module doc)."""
        if _port(seen) in (None, rt.listen_port):
            return False
        return self._move(rt, f"the NAT maps WireGuard port {rt.listen_port} to {seen}")

    def _shared_port(self, rt: Any, me: Any, records: Any) -> bool:
        """Another client behind our NAT (same public address) listens on our port: of the
        two, the one with the higher key moves (both decide the same)."""
        host = _host_of(me.nat_endpoint)
        if host is None:
            return False
        for r in records:
            if (
                r.wg_key != me.wg_key
                and r.role == Role.CLIENT
                and not r.left
                and _host_of(r.nat_endpoint) == host
                and r.local_endpoints
                and _port(r.local_endpoints[0]) == rt.listen_port
                and me.wg_key > r.wg_key
            ):
                return self._move(
                    rt, f"client {key_to_text(r.wg_key)[:12]} behind the same NAT has this port"
                )
        return False

    def _move(self, rt: Any, why: str) -> bool:
        if rt.mesh_id in self.relocated or rt.opts.get("wgport") is not None:
            return False  # once; a port chosen by the user is kept
        taken = {m.listen_port for m in self.node.meshes.values()}
        port = relocated_port(rt.mesh_id, self.node.identity.wg_public_key, taken)
        log.info("mesh %s: %s: moving WireGuard to port %d", rt.mesh_id, why, port)
        self.relocated[rt.mesh_id] = time.monotonic()
        self._discovered[rt.mesh_id] = 0.0  # discover the new mapping at once
        rt.listen_port = port
        rt.dirty_wg = True
        rt.dirty_disk = True
        self.node._reconcile_wake.set()
        return True

    async def _discover(self, rt: Any, me: Any) -> None:
        peers = {r.wg_key: r for r in rt.node.live_records() if r.role == Role.PEER}
        via = assigned_peer(me, peers)
        rec = peers.get(via) if via is not None else None
        if rec is None or not rec.control_endpoint or rec.tls_fp is None:
            return
        try:
            reply = decode(
                await self.node.rpc.call(
                    rec.control_endpoint, rec.tls_fp, encode(WhereAmI(rt.mesh_id))
                )
            )
        except (WireError, Exception) as e:
            log.debug("mesh %s: endpoint discovery failed: %s", rt.mesh_id, e)
            return
        if not isinstance(reply, Observed) or reply.endpoint is None:
            return
        if self._relocate(rt, reply.endpoint):
            return
        moved = self.relocated.get(rt.mesh_id)
        if (
            moved is not None
            and _port(reply.endpoint) != rt.listen_port
            and time.monotonic() - moved < RELOCATE_SETTLE_S
        ):
            # the relay has not seen a packet from the new port yet: ask again soon
            if me.nat_endpoint:
                self._discovered[rt.mesh_id] = time.monotonic() - DISCOVER_S + DISCOVER_RETRY_S
            if rt.mesh_id in self.probed:  # a packet to the relay from the new port
                via = assigned_peer(me, peers)
                if via is not None and via in self.probed[rt.mesh_id]:
                    self.prober.send(self.probed[rt.mesh_id][via])
            return
        from smegmesh.daemon.node import outgoing_address

        addr = await asyncio.to_thread(outgoing_address)
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
