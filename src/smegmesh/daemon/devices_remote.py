"""The remote-sponsor side of sponsored devices (issue 18): ``--via`` and ``device-config``.

A mixin of :class:`smegmesh.daemon.node.Daemon` (through
:class:`~smegmesh.daemon.devices_ops.DeviceOps`). An admin makes another peer
sponsor a device (``add-device --via``, a :class:`SponsorRequest`); any member
asks a device's sponsor for its current settings (``device-config``, a
:class:`DeviceQuery`). ``device_rpc`` answers both on the sponsor.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from smegmesh.core.addressing import mesh_prefix, node_id_prefix
from smegmesh.core.device_messages import (
    MAX_DEVICE_ROUTES,
    MAX_ERROR_LEN,
    DeviceQuery,
    DeviceSettings,
    SponsorRequest,
    from_remote_sponsor,
)
from smegmesh.core.identity import key_from_text, key_to_text
from smegmesh.core.messages import Refusal
from smegmesh.core.record import NodeRecord, Role
from smegmesh.core.wire import WireError, decode, encode
from smegmesh.daemon import service as svc
from smegmesh.daemon.api_models import MeshDetail, NodeInfo
from smegmesh.daemon.ratelog import RateLog
from smegmesh.daemon.resolve import describe, resolve_node
from smegmesh.daemon.textsafe import printable
from smegmesh.daemon.transport import RpcError

if TYPE_CHECKING:
    from smegmesh.daemon.runtime import MeshRuntime

log = logging.getLogger("smegmesh.daemon")

#: deadline of a call to a sponsoring peer (add-device --via, device-config)
DEVICE_RPC_S = 15.0


class DeviceRemoteOps:
    """Mixin: needs ``identity``, ``rpc``, ``meshes`` and the local device operations."""

    if TYPE_CHECKING:
        identity: Any
        rpc: Any
        meshes: dict[str, MeshRuntime]

        # devices_ops.py
        def _publish_device(self, rt: MeshRuntime, dkey: bytes, alias: str) -> int: ...
        def _device_settings(self, rt: MeshRuntime) -> tuple[str | None, list[str]]: ...
        async def _save_device(self, rt: MeshRuntime, dkey: bytes) -> None: ...

    @functools.cached_property
    def _device_refusals(self) -> RateLog:
        return RateLog(
            log,
            "refused",
            unit="device requests",
            prep="from member",
            level=logging.WARNING,
        )

    # ------------------------------------------------------------------ --via (an admin)

    def _via_record(self, rt: MeshRuntime, via: str) -> NodeRecord | None:
        """The live peer ``via`` names (None: this node itself); checks that this node
        is an admin when it names another peer."""
        live = rt.node.live_records()
        nodes = [
            NodeInfo(
                public_key=key_to_text(r.wg_key),
                alias=r.alias,
                role=r.role.value,
                overlay_address=r.address,
                node_id=node_id_prefix(r.wg_key),
            )
            for r in live
        ]
        view = MeshDetail(
            mesh_id=rt.mesh_id,
            prefix=str(mesh_prefix(rt.mesh_id)),
            self_key=key_to_text(self.identity.wg_public_key),
            nodes=nodes,
        )
        found = resolve_node(via, [view], rt.mesh_id).node
        if found is None:
            raise svc.ServiceError(
                "unknown_node", f"--via: no live node of mesh {rt.mesh_id} is {via!r}", 404
            )
        key = key_from_text(found.public_key)
        if key == self.identity.wg_public_key:
            return None
        rec = rt.node.mesh.live_record(key)
        assert rec is not None
        if rec.role != Role.PEER:
            raise svc.ServiceError(
                "not_a_peer", f"--via: {describe(rt.mesh_id, found)} is a client, not a peer", 409
            )
        mesh = rt.node.mesh
        if not (mesh.admission and mesh.authority.is_admin(self.identity.wg_public_key)):
            raise svc.ServiceError(
                "forbidden",
                "--via: only an admin of the mesh can make another peer sponsor a device "
                "(run add-device on that peer instead)",
                403,
            )
        if not rec.control_endpoint or rec.tls_fp is None:
            raise svc.ServiceError(
                "sponsor_unreachable",
                f"--via: {describe(rt.mesh_id, found)} has no control endpoint",
                409,
            )
        return rec

    async def _sponsor_remote(
        self, rt: MeshRuntime, sponsor: NodeRecord, dkey: bytes, alias: str
    ) -> tuple[str | None, list[str]]:
        """Ask ``sponsor`` to sponsor ``dkey`` (it checks that we are an admin)."""
        reply = await self._device_call(rt, sponsor, SponsorRequest(rt.mesh_id, dkey, alias))
        log.info(
            "mesh %s: %s sponsors device %s (%s) at our request",
            rt.mesh_id,
            sponsor.alias or key_to_text(sponsor.wg_key)[:8],
            alias,
            key_to_text(dkey)[:8],
        )
        return reply.dns, list(reply.allowed_ips)

    async def _device_call(
        self, rt: MeshRuntime, sponsor: NodeRecord, msg: SponsorRequest | DeviceQuery
    ) -> DeviceSettings:
        name = sponsor.alias or key_to_text(sponsor.wg_key)[:12]
        if not sponsor.control_endpoint or sponsor.tls_fp is None:
            raise svc.ServiceError("sponsor_unreachable", f"{name} has no control endpoint", 409)
        try:
            reply = decode(
                await self.rpc.call(
                    sponsor.control_endpoint, sponsor.tls_fp, encode(msg), timeout=DEVICE_RPC_S
                )
            )
        except (RpcError, WireError) as e:
            raise svc.ServiceError(
                "sponsor_unreachable", f"the sponsoring peer {name} did not answer: {e}", 502
            ) from None
        if isinstance(reply, Refusal):
            raise svc.ServiceError(
                "forbidden", f"{name} refused: it does not know this node as a member (yet)", 403
            )
        if not isinstance(reply, DeviceSettings) or reply.mesh_id != rt.mesh_id:
            raise svc.ServiceError("sponsor_error", f"{name} answered something else", 502)
        if reply.error:
            raise svc.ServiceError("sponsor_refused", f"{name} refused: {reply.error}", 409)
        return from_remote_sponsor(reply, sponsor.address)  # mesh /64s, its own DNS

    async def device_rpc(self, src: bytes, msg: SponsorRequest | DeviceQuery) -> Any:
        """Answer a device request from ``src`` (authenticated by the transport)."""
        rt = self.meshes.get(msg.mesh_id)
        if rt is None or not rt.node.is_member(src):
            return Refusal(msg.mesh_id)

        def fail(text: str) -> DeviceSettings:
            line = printable(text, " ")  # as decode takes it
            return DeviceSettings(msg.mesh_id, line[:MAX_ERROR_LEN], None, ())

        if isinstance(msg, SponsorRequest):
            mesh = rt.node.mesh
            if not (mesh.admission and mesh.authority.is_admin(src)):
                # a member can send these on demand: one line per member per interval
                self._device_refusals.note(key_to_text(src)[:12], "not an admin")
                return fail("only an admin of the mesh can make a peer sponsor a device")
            try:
                self._publish_device(rt, msg.device_key, msg.alias)
            except svc.ServiceError as e:
                return fail(e.message)
            try:
                await self._save_device(rt, msg.device_key)  # on disk before the admin hears
            except svc.ServiceError:  # logged here; withdrawn
                return fail("the sponsor could not save the device (its disk): not added")
            log.info(
                "mesh %s: device %s added at the request of admin %s",
                msg.mesh_id,
                msg.alias,
                key_to_text(src)[:8],
            )
        else:
            me = rt.node.record
            if me is None or not any(d.wg_key == msg.device_key for d in me.devices):
                return fail("this peer does not sponsor that device")
        dns, routes = self._device_settings(rt)
        return DeviceSettings(msg.mesh_id, "", dns, tuple(routes[:MAX_DEVICE_ROUTES]))
