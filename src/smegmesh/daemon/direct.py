"""The daemon side of NAT traversal (issue 17, docs/NAT.md).

Only with ``directPeers > 0`` and only on client meshes. Every ``TICK_S``:

* every ``DISCOVER_S``, ask the assigned peer (``WhereAmI``) which endpoint it
  sees our WireGuard packets come from, and publish it with our local
  endpoints in our record (only when it changed);
* read our WireGuard status, advance the :class:`~smegmesh.core.direct.DirectTable`
  with the clients :func:`~smegmesh.core.direct.choose_direct` picks, and
  re-apply the WireGuard configuration when the sessions changed.

The peer side answers ``WhereAmI`` from its WireGuard status
(:func:`observed_endpoint`): the caller is authenticated by the transport, so a
member learns only its own endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from smegmesh.core.desired import assigned_peer
from smegmesh.core.direct import DirectPeer, DirectTable, choose_direct, endpoint_for
from smegmesh.core.endpoint import join_host_port
from smegmesh.core.identity import key_to_text
from smegmesh.core.messages import Observed, WhereAmI
from smegmesh.core.record import MAX_LOCAL_ENDPOINTS, Role, check_endpoint
from smegmesh.core.wire import WireError, decode, encode

log = logging.getLogger(__name__)

TICK_S = 0.5
#: Discovery period once the endpoint is known, and while it is not yet (the
#: assigned peer has no handshake with us right after the join).
DISCOVER_S = 20.0
DISCOVER_RETRY_S = 2.0
STATUS_CACHE_S = 2.0


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

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            for d in (self.tables, self.plans, self._discovered, self._targets):
                for mesh_id in [m for m in d if m not in self.node.meshes]:
                    del d[mesh_id]  # meshes left
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
        targets = cached[1]
        table = self.tables.setdefault(rt.mesh_id, DirectTable(rng=self.rng))
        if not targets and not table.sessions and not table.backoff:
            self.plans.pop(rt.mesh_id, None)
            return
        loop = asyncio.get_running_loop()
        status = await loop.run_in_executor(self.node._wg_pool, self.node.backend.read, rt.ifname)
        wg = {k: (p.last_handshake, p.rx_bytes) for k, p in status.peers.items() if k in targets}
        before = {k: table.state(k) for k in targets}
        plan = table.update(int(time.time() * 1000), targets, wg)
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
        from smegmesh.net.discovery import outgoing_address

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
