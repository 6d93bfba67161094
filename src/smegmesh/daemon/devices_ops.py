"""The daemon's sponsored-device operations (issue 18): add, list, remove.

A mixin of :class:`smegmesh.daemon.node.Daemon`. A device (a phone, a router
without smegd) is listed in this peer's own record (see
:mod:`smegmesh.core.devices`); ``add_device`` returns a ``wg-quick``
configuration whose only peer is this node. The generated private key is
returned once and kept only with ``keep_key`` (``STATE/devices/``, mode 0600).

This module owns the local operations; the ``--via`` / ``device-config`` calls
to a sponsoring peer are in :mod:`smegmesh.daemon.devices_remote`, the
``wg-quick`` rendering in :mod:`smegmesh.daemon.devices_wgquick` (both
re-exported here).
"""

from __future__ import annotations

import base64
import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smegmesh.core.addressing import mesh_prefix, node_id_prefix, overlay_address
from smegmesh.core.device_messages import DeviceQuery, SponsorRequest
from smegmesh.core.devices import LiveDevice, contested_devices, live_devices, sponsor_device
from smegmesh.core.identity import key_from_text, key_to_text
from smegmesh.core.record import MAX_DEVICES, NodeRecord, RecordError, Role
from smegmesh.daemon import service as svc
from smegmesh.daemon import views
from smegmesh.daemon.api_models import AddDeviceResponse, DeviceInfo, MeshDetail, NodeInfo
from smegmesh.daemon.devices_remote import DEVICE_RPC_S, DeviceRemoteOps
from smegmesh.daemon.devices_wgquick import (
    DEFAULT_ROUTES,
    DEVICE_KEEPALIVE,
    device_key,
    device_routes,
    parse_wg_quick,
    render_wg_quick,
    same_ip,
)
from smegmesh.daemon.persist import PersistError, atomic_write
from smegmesh.daemon.ratelog import RateLog
from smegmesh.daemon.resolve import resolve_node
from smegmesh.daemon.runtime import now_ms

if TYPE_CHECKING:
    from smegmesh.daemon.config import Config
    from smegmesh.daemon.runtime import MeshRuntime

__all__ = [
    "DEFAULT_ROUTES",
    "DEVICE_KEEPALIVE",
    "DEVICE_REQUESTS",
    "DEVICE_RPC_S",
    "DeviceOps",
    "device_routes",
    "parse_wg_quick",
    "render_wg_quick",
]

log = logging.getLogger("smegmesh.daemon")

#: the node-to-node requests of sponsored devices (answered by ``device_rpc``)
DEVICE_REQUESTS = (SponsorRequest, DeviceQuery)


class DeviceOps(DeviceRemoteOps):
    """Mixin: needs ``_get``, ``_emit``, ``identity``, ``config``, ``state_dir``, ``routing``."""

    if TYPE_CHECKING:
        identity: Any
        config: Config
        state_dir: Path
        routing: Any
        rpc: Any
        meshes: dict[str, MeshRuntime]

        def _get(self, mesh_id: str) -> MeshRuntime: ...
        def _emit(self, rt: MeshRuntime, outs: list[Any]) -> None: ...
        async def _save_mesh_off_loop(self, rt: MeshRuntime) -> None: ...
        async def _commit(self, rt: MeshRuntime, outs: list[Any]) -> None: ...

    # ------------------------------------------------------------------ views

    def _devices(self, rt: MeshRuntime) -> list[LiveDevice]:
        """The mesh's live sponsored devices (every member computes the same)."""
        mesh = rt.node.mesh
        self._contested(rt)  # logs a device cut off by a second sponsor
        return live_devices(
            rt.mesh_id,
            rt.node.live_records(),
            mesh.authority if mesh.admission else None,
            nodes=frozenset(mesh.node_keys()),
        )

    def _contested(self, rt: MeshRuntime) -> dict[bytes, tuple[bytes, ...]]:
        """Device keys listed by several sponsors (live for none), logged as found."""
        mesh = rt.node.mesh
        found = contested_devices(
            rt.node.live_records(),
            mesh.authority if mesh.admission else None,
            nodes=frozenset(mesh.node_keys()),
        )
        for k, by in found.items():
            self._device_contests.note(
                f"{rt.mesh_id}/{key_to_text(k)[:12]}",
                "listed by sponsors " + ", ".join(key_to_text(s)[:12] for s in by),
            )
        return found

    @functools.cached_property
    def _device_contests(self) -> RateLog:
        return RateLog(
            log,
            "device",
            unit="listings",
            prep="contested (live for neither sponsor):",
            level=logging.WARNING,
            interval_s=600.0,
        )

    def _device_key_path(self, mesh_id: str, key: bytes) -> Path:
        return self.state_dir / "devices" / mesh_id / f"{key.hex()}.key"

    def _device_info(self, rt: MeshRuntime, d: LiveDevice) -> DeviceInfo:
        sp = rt.node.mesh.live_record(d.sponsor)
        return DeviceInfo(
            public_key=key_to_text(d.wg_key),
            alias=d.alias,
            overlay_address=d.address,
            node_id=node_id_prefix(d.wg_key),
            sponsor=key_to_text(d.sponsor),
            sponsor_alias=sp.alias if sp is not None else "",
            added=d.issued_ms / 1000,
            key_kept=self._device_key_path(rt.mesh_id, d.wg_key).exists(),
        )

    def device_infos(self, rt: MeshRuntime) -> list[DeviceInfo]:
        return [self._device_info(rt, d) for d in self._devices(rt)]

    # ------------------------------------------------------------------ NodeService

    async def list_devices(self, mesh_id: str) -> list[DeviceInfo]:
        return self.device_infos(self._get(mesh_id))

    def _dns_for_device(self, rt: MeshRuntime) -> str | None:
        """The DNS server a device can use: this node's overlay address when our
        DNS listens on it (or on every address) on port 53."""
        addr = self.config.dns_listen_addr if self.config.dns_listen else None
        if addr is None:
            return None
        host, port = addr
        me = rt.node.record
        if me is None or port != 53:
            return None
        if host in ("::", "0.0.0.0", "") or same_ip(host, me.address):
            return str(me.address)
        return None

    def _check_sponsor(self, rt: MeshRuntime) -> NodeRecord:
        """This node's record, if it may sponsor a device (a peer with an endpoint that
        may admit under the mesh's invite policy); else a clear error."""
        me = rt.node.record
        if me is None or me.left or me.role != Role.PEER:
            raise svc.ServiceError(
                "not_a_peer", "only a peer (not a client) can sponsor devices", 409
            )
        if not me.wg_endpoint:
            raise svc.ServiceError(
                "no_endpoint",
                "this peer publishes no WireGuard endpoint the device could reach",
                409,
            )
        if not rt.node.may_admit(now_ms()):
            raise svc.ServiceError(
                "forbidden",
                f"this node may not admit under the mesh's invite policy "
                f"({rt.node.mesh.authority.policy.value}); a device is admitted like any node",
                403,
            )
        return me

    def _check_device_key(self, rt: MeshRuntime, dkey: bytes) -> None:
        mesh = rt.node.mesh
        if mesh.admission and mesh.authority.is_revoked(dkey):
            raise svc.ServiceError("forbidden", "that key was evicted from the mesh", 403)
        if mesh.record(dkey) is not None or dkey == self.identity.wg_public_key:
            raise svc.ServiceError("conflict", "that key is a member's own key", 409)
        me = self.identity.wg_public_key
        listed = {d.sponsor for d in self._devices(rt) if d.wg_key == dkey}
        listed.update(*(by for k, by in self._contested(rt).items() if k == dkey))
        if listed - {me}:
            others = ", ".join(sorted(key_to_text(k)[:8] for k in listed - {me}))
            raise svc.ServiceError(
                "conflict",
                f"another peer ({others}) sponsors that device: remove it there first "
                "(a key listed by two sponsors is live for neither)",
                409,
            )

    def _publish_device(self, rt: MeshRuntime, dkey: bytes, alias: str) -> int:
        """List ``dkey`` in this peer's record (after the checks); the time of its cert."""
        me = self._check_sponsor(rt)
        self._check_device_key(rt, dkey)
        mesh = rt.node.mesh
        my_key = self.identity.wg_public_key
        # evicted devices are dropped from our record when we publish it again
        current = [
            d for d in me.devices if not (mesh.admission and mesh.authority.is_revoked(d.wg_key))
        ]
        if any(d.wg_key == dkey for d in current):
            raise svc.ServiceError("conflict", "this device is already sponsored here", 409)
        if len(current) >= MAX_DEVICES:
            raise svc.ServiceError(
                "too_many_devices", f"a peer sponsors at most {MAX_DEVICES} devices", 409
            )
        if me.alias and alias.lower() == me.alias.lower():
            raise svc.ServiceError("conflict", f"{alias!r} is this node's own alias", 409)
        views.check_alias_free(
            rt.node.live_records(),
            my_key,
            alias,
            mesh.authority if mesh.admission else None,
            self._devices(rt),
        )
        now = now_ms()
        entry = sponsor_device(self.identity, rt.mesh_id, device_key=dkey, alias=alias, now_ms=now)
        try:
            outs = rt.node.update_self(now, devices=(*current, entry))
        except RecordError as e:
            raise svc.invalid_argument(f"{e.field}: {e}") from None
        self._emit(rt, outs)
        log.info("mesh %s: sponsoring device %s (%s)", rt.mesh_id, alias, key_to_text(dkey)[:8])
        return now

    async def _save_device(self, rt: MeshRuntime, dkey: bytes) -> None:
        """The device just published on disk; else withdrawn and ``not_saved`` (503).

        Withdrawn, not left in effect: its config (with the private key made
        here) is in the answer only, and a crash would drop the device anyway.
        """
        try:
            await self._save_mesh_off_loop(rt)
        except PersistError as e:
            me = rt.node.record
            if me is not None and any(d.wg_key == dkey for d in me.devices):
                kept = tuple(d for d in me.devices if d.wg_key != dkey)
                self._emit(rt, rt.node.update_self(now_ms(), devices=kept))
            log.info("mesh %s: device %s withdrawn (not saved)", rt.mesh_id, key_to_text(dkey)[:8])
            raise svc.not_saved(e.strerror or str(e), "the device was not added") from None

    def _device_settings(self, rt: MeshRuntime) -> tuple[str | None, list[str]]:
        """(DNS server, routed destinations) this sponsor offers its devices now."""
        return self._dns_for_device(rt), device_routes(rt.mesh_id, self.routing)

    def _render(
        self,
        rt: MeshRuntime,
        *,
        alias: str,
        dkey: bytes,
        private: str | None,
        sponsor: NodeRecord,
        dns: str | None,
        routes: list[str],
    ) -> str:
        return render_wg_quick(
            private_key=private,
            address=str(overlay_address(rt.mesh_id, dkey)),
            prefix=str(mesh_prefix(rt.mesh_id)),
            dns=dns,
            sponsor_key=key_to_text(sponsor.wg_key),
            endpoint=sponsor.wg_endpoint or "",
            allowed_ips=routes,
            comment=f"smegmesh device {alias} in mesh {rt.mesh_id}, sponsored by "
            f"{sponsor.alias or key_to_text(sponsor.wg_key)[:8]}",
        )

    def _keep_private(self, mesh_id: str, dkey: bytes, private: str) -> None:
        path = self._device_key_path(mesh_id, dkey)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, base64.b64decode(private), mode=0o600)

    async def add_device(
        self,
        mesh_id: str,
        name: str,
        public_key: str | None = None,
        keep_key: bool = False,
        via: str | None = None,
    ) -> AddDeviceResponse:
        rt = self._get(mesh_id)
        remote = self._via_record(rt, via) if via is not None and via.strip() else None
        sponsor_rec = self._check_sponsor(rt) if remote is None else remote
        alias = views.validate_alias(name, "name")
        if not alias:
            raise svc.invalid_argument("name: a device needs a name")
        dkey, private = device_key(public_key, keep_key)
        if remote is None:
            now = self._publish_device(rt, dkey, alias)
            await self._save_device(rt, dkey)  # on disk before the command answers
            dns, routes = self._device_settings(rt)
        else:
            self._check_device_key(rt, dkey)
            dns, routes = await self._sponsor_remote(rt, remote, dkey, alias)
            now = now_ms()
        if keep_key and private is not None:
            self._keep_private(mesh_id, dkey, private)
        cfg = self._render(
            rt,
            alias=alias,
            dkey=dkey,
            private=private,
            sponsor=sponsor_rec,
            dns=dns,
            routes=routes,
        )
        info = DeviceInfo(
            public_key=key_to_text(dkey),
            alias=alias,
            overlay_address=str(overlay_address(mesh_id, dkey)),
            node_id=node_id_prefix(dkey),
            sponsor=key_to_text(sponsor_rec.wg_key),
            sponsor_alias=sponsor_rec.alias,
            added=now / 1000,
            key_kept=keep_key and private is not None,
        )
        return AddDeviceResponse(device=info, config=cfg, has_private_key=private is not None)

    def _find_device(
        self, rt: MeshRuntime, devices: list[tuple[bytes, str]], query: str
    ) -> bytes | None:
        """The key of the device (key, name) ``query`` names as a NODE is named: its
        name, key, overlay address or a unique prefix of one (``ambiguous_node`` if
        several); None if none."""
        view = MeshDetail(
            mesh_id=rt.mesh_id,
            prefix=str(mesh_prefix(rt.mesh_id)),
            self_key=key_to_text(self.identity.wg_public_key),
            nodes=[
                NodeInfo(
                    public_key=key_to_text(k),
                    alias=alias,
                    role="client",
                    overlay_address=str(overlay_address(rt.mesh_id, k)),
                    node_id=node_id_prefix(k),
                )
                for k, alias in devices
            ],
        )
        try:
            found = resolve_node(query, [view], rt.mesh_id).node
        except svc.ServiceError as e:
            if e.code != "unknown_node":
                raise
            return None
        return key_from_text(found.public_key) if found is not None else None

    # ------------------------------------------------------------------ device-config

    async def device_config(self, mesh_id: str, device: str) -> AddDeviceResponse:
        rt = self._get(mesh_id)
        devices = self._devices(rt)
        key = self._find_device(rt, [(d.wg_key, d.alias) for d in devices], device)
        if key is None:
            raise svc.ServiceError(
                "unknown_device", f"no device {device!r} in mesh {mesh_id} (see list-devices)", 404
            )
        d = next(x for x in devices if x.wg_key == key)
        sponsor = rt.node.mesh.live_record(d.sponsor)
        if sponsor is None:
            raise svc.ServiceError("unknown_device", "the device's sponsor is gone", 404)
        if d.sponsor == self.identity.wg_public_key:
            dns, routes = self._device_settings(rt)
        else:
            reply = await self._device_call(rt, sponsor, DeviceQuery(mesh_id, d.wg_key))
            dns, routes = reply.dns, list(reply.allowed_ips)
        path = self._device_key_path(mesh_id, d.wg_key)
        private = base64.b64encode(path.read_bytes()).decode("ascii") if path.exists() else None
        cfg = self._render(
            rt,
            alias=d.alias,
            dkey=d.wg_key,
            private=private,
            sponsor=sponsor,
            dns=dns,
            routes=routes,
        )
        return AddDeviceResponse(
            device=self._device_info(rt, d), config=cfg, has_private_key=private is not None
        )

    async def remove_device(self, mesh_id: str, device: str) -> DeviceInfo:
        rt = self._get(mesh_id)
        me = rt.node.record
        mine = list(me.devices) if me is not None else []
        infos = {key_from_text(d.public_key): d for d in self.device_infos(rt)}
        # one lookup over every device seen here: an exact name elsewhere is not
        # taken as the prefix of one of ours (removed in its place)
        named = {k: d.alias for k, d in infos.items()} | {d.wg_key: d.alias for d in mine}
        key = self._find_device(rt, list(named.items()), device)
        elsewhere = infos.get(key) if key is not None else None
        if elsewhere is not None and all(d.wg_key != key for d in mine):
            d = elsewhere  # listed by list-devices here: say where it lives
            raise svc.ServiceError(
                "not_sponsor",
                f"device {d.alias} is sponsored by {d.sponsor_alias or d.sponsor[:12] + '…'}: "
                "run remove-device there (an admin can also evict it)",
                409,
            )
        if key is None:
            raise svc.ServiceError(
                "unknown_device", f"this peer sponsors no device {device!r} (see list-devices)", 404
            )
        gone = next(d for d in mine if d.wg_key == key)
        now = now_ms()
        outs = rt.node.update_self(now, devices=tuple(d for d in mine if d is not gone))
        await self._commit(rt, outs)
        self._device_key_path(mesh_id, gone.wg_key).unlink(missing_ok=True)
        log.info("mesh %s: no longer sponsoring device %s", mesh_id, gone.alias)
        assert me is not None
        return DeviceInfo(
            public_key=key_to_text(gone.wg_key),
            alias=gone.alias,
            overlay_address=str(overlay_address(mesh_id, gone.wg_key)),
            node_id=node_id_prefix(gone.wg_key),
            sponsor=key_to_text(me.wg_key),
            sponsor_alias=me.alias,
            added=gone.cert.issued_ms / 1000,
        )
