"""The daemon's sponsored-device operations (issue 18): add, list, remove.

A mixin of :class:`smegmesh.daemon.node.Daemon`. A device (a phone, a router
without smegd) is listed in this peer's own record (see
:mod:`smegmesh.core.devices`); ``add_device`` returns a ``wg-quick``
configuration whose only peer is this node. The generated private key is
returned once and kept only with ``keep_key`` (``STATE/devices/``, mode 0600).
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from smegmesh.core.addressing import mesh_prefix, node_id_prefix, overlay_address
from smegmesh.core.devices import LiveDevice, live_devices, sponsor_device
from smegmesh.core.identity import InvalidKey, key_from_text, key_to_text
from smegmesh.core.record import MAX_DEVICES, RecordError, Role
from smegmesh.daemon import service as svc
from smegmesh.daemon import views
from smegmesh.daemon.api_models import AddDeviceResponse, DeviceInfo
from smegmesh.daemon.persist import atomic_write

if TYPE_CHECKING:
    from smegmesh.daemon.config import Config
    from smegmesh.daemon.runtime import MeshRuntime

log = logging.getLogger("smegmesh.daemon")

#: PersistentKeepalive of a device config (it is behind NAT more often than not)
DEVICE_KEEPALIVE = 25


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def render_wg_quick(
    *,
    private_key: str | None,
    address: str,
    prefix: str,
    dns: str | None,
    sponsor_key: str,
    endpoint: str,
    allowed_ips: list[str],
    comment: str,
) -> str:
    """A standard ``wg-quick`` file (``[Interface]`` + one ``[Peer]``)."""
    lines = [f"# {comment}", "[Interface]"]
    lines.append(
        f"PrivateKey = {private_key}"
        if private_key
        else "# PrivateKey = <the device's private key (you kept it)>"
    )
    lines.append(f"Address = {address}/128")
    if dns:
        lines.append(f"DNS = {dns}")
    lines += [
        "",
        "[Peer]",
        f"PublicKey = {sponsor_key}",
        f"Endpoint = {endpoint}",
        f"AllowedIPs = {', '.join([prefix, *allowed_ips])}",
        f"PersistentKeepalive = {DEVICE_KEEPALIVE}",
        "",
    ]
    return "\n".join(lines)


def parse_wg_quick(text: str) -> dict[str, dict[str, str]]:
    """The ``[Interface]`` and ``[Peer]`` settings of a one-peer ``wg-quick`` file."""
    out: dict[str, dict[str, str]] = {}
    section: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep or section is None:
            raise ValueError(f"not a wg-quick line: {raw!r}")
        section[key.strip()] = value.strip()
    return out


class DeviceOps:
    """Mixin: needs ``_get``, ``_emit``, ``identity``, ``config``, ``state_dir``, ``routing``."""

    if TYPE_CHECKING:
        identity: Any
        config: Config
        state_dir: Path
        routing: Any

        def _get(self, mesh_id: str) -> MeshRuntime: ...
        def _emit(self, rt: MeshRuntime, outs: list[Any]) -> None: ...

    # ------------------------------------------------------------------ views

    def _devices(self, rt: MeshRuntime) -> list[LiveDevice]:
        """The mesh's live sponsored devices (every member computes the same)."""
        mesh = rt.node.mesh
        return live_devices(
            rt.mesh_id, rt.node.live_records(), mesh.authority if mesh.admission else None
        )

    def _device_key_path(self, mesh_id: str, key: bytes) -> Path:
        return self.state_dir / "devices" / mesh_id / f"{key.hex()}.key"

    def _device_info(self, rt: MeshRuntime, d: LiveDevice) -> DeviceInfo:
        sp = rt.node.mesh.live_record(d.sponsor)
        mine = d.sponsor == self.identity.wg_public_key
        return DeviceInfo(
            public_key=key_to_text(d.wg_key),
            alias=d.alias,
            overlay_address=d.address,
            node_id=node_id_prefix(d.wg_key),
            sponsor=key_to_text(d.sponsor),
            sponsor_alias=sp.alias if sp is not None else "",
            added=d.issued_ms / 1000,
            key_kept=mine and self._device_key_path(rt.mesh_id, d.wg_key).exists(),
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
        if host in ("::", "0.0.0.0", "") or _same_ip(host, me.address):
            return str(me.address)
        return None

    async def add_device(
        self,
        mesh_id: str,
        name: str,
        public_key: str | None = None,
        keep_key: bool = False,
        via: str | None = None,
    ) -> AddDeviceResponse:
        rt = self._get(mesh_id)
        me = rt.node.record
        my_key = self.identity.wg_public_key
        if via is not None and via.strip() and not self._names_me(rt, via.strip()):
            raise svc.invalid_argument(
                "--via: only the sponsoring peer itself can add a device in this version; "
                "run add-device on that peer (smegctl --api URL of that peer)"
            )
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
        if not rt.node.may_admit(_now_ms()):
            raise svc.ServiceError(
                "forbidden",
                f"this node may not admit under the mesh's invite policy "
                f"({rt.node.mesh.authority.policy.value}); a device is admitted like any node",
                403,
            )
        alias = views.validate_alias(name)
        if not alias:
            raise svc.invalid_argument("name: a device needs a name")
        private: str | None = None
        if public_key is not None:
            try:
                dkey = key_from_text(public_key.strip())
            except InvalidKey as e:
                raise svc.invalid_argument(f"public_key: {e}") from None
            if keep_key:
                raise svc.invalid_argument("keep_key: there is no private key to keep")
        else:
            sk = X25519PrivateKey.generate()
            raw = sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            private = base64.b64encode(raw).decode("ascii")
            dkey = key_from_text(key_to_text(sk.public_key().public_bytes_raw()))
        mesh = rt.node.mesh
        if mesh.admission and mesh.authority.is_revoked(dkey):
            raise svc.ServiceError("forbidden", "that key was evicted from the mesh", 403)
        if mesh.record(dkey) is not None or dkey == my_key:
            raise svc.ServiceError("conflict", "that key is a member's own key", 409)
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
        views.check_alias_free(
            rt.node.live_records(), my_key, alias, mesh.authority if mesh.admission else None
        )
        if any(d.alias == alias for d in self._devices(rt)):
            raise svc.ServiceError("conflict", f"alias {alias!r} is already a device's", 409)
        now = _now_ms()
        entry = sponsor_device(self.identity, mesh_id, device_key=dkey, alias=alias, now_ms=now)
        try:
            outs = rt.node.update_self(now, devices=(*current, entry))
        except RecordError as e:
            raise svc.invalid_argument(f"{e.field}: {e}") from None
        self._emit(rt, outs)
        if keep_key and private is not None:
            path = self._device_key_path(mesh_id, dkey)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(path, base64.b64decode(private), mode=0o600)
        log.info("mesh %s: sponsoring device %s (%s)", mesh_id, alias, key_to_text(dkey)[:8])
        address = str(overlay_address(mesh_id, dkey))
        gw = self.routing.gateway_routes.get(mesh_id, ()) if self.routing else ()
        routes = sorted({r.destination for r in gw})
        cfg = render_wg_quick(
            private_key=private,
            address=address,
            prefix=str(mesh_prefix(mesh_id)),
            dns=self._dns_for_device(rt),
            sponsor_key=key_to_text(my_key),
            endpoint=me.wg_endpoint,
            allowed_ips=routes,
            comment=f"smegmesh device {alias} in mesh {mesh_id}, sponsored by "
            f"{me.alias or key_to_text(my_key)[:8]}",
        )
        info = DeviceInfo(
            public_key=key_to_text(dkey),
            alias=alias,
            overlay_address=address,
            node_id=node_id_prefix(dkey),
            sponsor=key_to_text(my_key),
            sponsor_alias=me.alias,
            added=now / 1000,
            key_kept=keep_key and private is not None,
        )
        return AddDeviceResponse(device=info, config=cfg, has_private_key=private is not None)

    async def remove_device(self, mesh_id: str, device: str) -> DeviceInfo:
        rt = self._get(mesh_id)
        me = rt.node.record
        mine = list(me.devices) if me is not None else []
        q = device.strip()
        found = [
            d
            for d in mine
            if d.alias == q.lower()
            or key_to_text(d.wg_key) == q
            or (_ip(q) is not None and _ip(q) == overlay_address(mesh_id, d.wg_key))
        ]
        if not found:
            raise svc.ServiceError(
                "unknown_device", f"this peer sponsors no device {device!r} (see list-devices)", 404
            )
        gone = found[0]
        now = _now_ms()
        outs = rt.node.update_self(now, devices=tuple(d for d in mine if d is not gone))
        self._emit(rt, outs)
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

    def _names_me(self, rt: MeshRuntime, node: str) -> bool:
        me = rt.node.record
        if me is None:
            return False
        mine = key_to_text(me.wg_key)
        return node in (mine, me.alias, str(me.address), node_id_prefix(me.wg_key)) or (
            _ip(node) is not None and _ip(node) == ipaddress.IPv6Address(me.address)
        )


def _ip(text: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def _same_ip(a: str, b: str) -> bool:
    ia, ib = _ip(a), _ip(b)
    return ia is not None and ia == ib
