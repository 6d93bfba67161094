"""The local API's read and self-update operations (``NodeService``): mesh
lists and details, alias/description/services, queries, status, ping, graph.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any

from smegmesh.core.addressing import mesh_prefix, overlay_address
from smegmesh.core.authority import copy_authority
from smegmesh.core.identity import key_to_text
from smegmesh.core.record import RecordError
from smegmesh.daemon import service as svc
from smegmesh.daemon import views
from smegmesh.daemon.api_models import MeshDetail, MeshSummary, PingResponse, StatusResponse
from smegmesh.daemon.base import DaemonBase
from smegmesh.daemon.config import VERSION
from smegmesh.daemon.direct import annotate as annotate_paths
from smegmesh.daemon.runtime import now_ms

log = logging.getLogger("smegd")


class LocalApiOps(DaemonBase):
    """Mixin of the daemon: the query and self-update half of ``NodeService``."""

    async def list_meshes(self) -> list[MeshSummary]:
        out = []
        for rt in self.meshes.values():
            out.append(
                MeshSummary(
                    mesh_id=rt.mesh_id,
                    interface=rt.ifname,
                    prefix=str(mesh_prefix(rt.mesh_id)),
                    role=rt.role.value,
                    overlay_address=str(overlay_address(rt.mesh_id, self.identity.wg_public_key)),
                    node_count=len(rt.node.live_records()),
                )
            )
        return out

    def _route_uses(self, mesh_id: str) -> list[tuple[str, str, bytes, int]]:
        if self.routing is None:
            return []
        return [
            (e.destination, e.mesh_id, e.gateway, e.length)
            for e in self.routing.table
            if e.mesh_id == mesh_id
        ]

    async def get_mesh(self, mesh_id: str) -> MeshDetail:
        rt = self._get(mesh_id)
        try:  # fresh handshake ages and counters (one UAPI/netlink read)
            status = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(
                    self._wg_pool, self.backend.read, rt.ifname
                ),
                timeout=2.0,
            )
            self.wg_status[mesh_id] = status
            self.handshakes.status(mesh_id, status, time.time(), self.member_events)
        except Exception:
            status = self.wg_status.get(mesh_id)
        records = rt.node.live_records()
        heard = {r.wg_key: t for r in records if (t := rt.node.last_heard(r.wg_key)) is not None}
        authority = copy_authority(rt.node.mesh.authority) if rt.node.mesh.admission else None
        # built in a thread from this snapshot (immutable records, copied maps):
        # at the largest state it takes long enough to stall DNS and gossip
        detail = await asyncio.to_thread(
            functools.partial(
                views.mesh_detail,
                rt.mesh_id,
                rt.ifname,
                list(records),
                self_key=self.identity.wg_public_key,
                wg_peers=dict(status.peers) if status is not None else {},
                last_heard=heard,
                suspects=set(rt.node.suspects),
                routes=self._route_uses(mesh_id),
                now_ms=now_ms(),
                authority=authority,
            )
        )
        # each member's path and round trip (NAT traversal, daemon/direct.py)
        detail = await asyncio.to_thread(annotate_paths, detail, self.direct.rtts(mesh_id))
        told = rt.node.evicted  # a member showed us our eviction (core.evicted)
        evicted_self = None if told is None else views.evicted_self(rt.mesh_id, rt.node.key, told)
        return detail.model_copy(
            update={"devices": self.device_infos(rt), "evicted_self": evicted_self}
        )

    async def _update(self, mesh_id: str, **changes: Any) -> None:
        rt = self._get(mesh_id)
        try:
            outs = rt.node.update_self(now_ms(), **changes)
        except RecordError as e:
            raise svc.invalid_argument(f"{e.field}: {e}") from None
        await self._commit(rt, outs)

    async def put_alias(self, mesh_id: str, alias: str) -> str:
        rt = self._get(mesh_id)
        alias = views.validate_alias(alias)
        views.check_alias_free(
            rt.node.live_records(),
            self.identity.wg_public_key,
            alias,
            rt.alias_authority,
            self._devices(rt),
        )
        await self._update(mesh_id, alias=alias)
        return alias

    async def put_description(self, mesh_id: str, description: str) -> None:
        self._get(mesh_id)
        await self._update(mesh_id, description=views.validate_description(description))

    async def set_service(self, mesh_id: str, key: str, value: str) -> None:
        rt = self._get(mesh_id)
        rec = rt.node.record
        services = dict(rec.services) if rec else {}
        views.validate_service(key, value, services)
        services[key] = value
        await self._update(mesh_id, services=services)

    async def delete_service(self, mesh_id: str, key: str) -> None:
        rt = self._get(mesh_id)
        rec = rt.node.record
        services = dict(rec.services) if rec else {}
        if key not in services:
            raise svc.ServiceError("unknown_service", f"no service {key!r} on this node", 404)
        del services[key]
        await self._update(mesh_id, services=services)

    async def query_mesh(self, mesh_id: str, expr: str) -> Any:
        detail = await self.get_mesh(mesh_id)
        # bounded in work and time (views.run_query), and off the event loop
        return await asyncio.to_thread(views.run_query, detail, expr)

    async def _details(self) -> list[MeshDetail]:
        out = []
        for mid in sorted(self.meshes):
            with contextlib.suppress(svc.ServiceError):  # left meanwhile
                out.append(await self.get_mesh(mid))
        return out

    async def get_status(self) -> StatusResponse:
        from smegmesh.daemon.status import build_status

        key = key_to_text(self.identity.wg_public_key)
        details = await self._details()
        return await asyncio.to_thread(  # linear, but thousands of members: off the loop
            build_status,
            VERSION,
            key,
            details,
            self.config.dns_listen,
            list(self.unrestored.values()),
            accept_defaults=self.config.accept_defaults,
        )

    async def ping(
        self, node: str, mesh_id: str | None, count: int, timeout_s: int
    ) -> PingResponse:
        from smegmesh.daemon.status import ping_node

        if mesh_id is not None:
            self._get(mesh_id)
        refuse = None
        if getattr(self.backend, "kind", None) == "memory":
            refuse = "this node runs without WireGuard (wgBackend: memory): no overlay to ping"
        return await ping_node(node, mesh_id, await self._details(), count, timeout_s, refuse)

    async def get_graph(self, mesh_id: str | None, fmt: Any) -> bytes:
        ids = [mesh_id] if mesh_id else sorted(self.meshes)
        graphs = []
        for mid in ids:
            rt = self._get(mid)
            graphs.append(
                views.GraphMesh(
                    mesh_id=mid,
                    records=tuple(rt.node.live_records()),
                    suspects=frozenset(rt.node.suspects),
                    routes=tuple(self._route_uses(mid)),
                )
            )
        dot = await asyncio.to_thread(
            functools.partial(views.graph_dot, graphs, self_key=self.identity.wg_public_key)
        )
        return await views.render_graph_async(dot, fmt)
