"""remove-device names a device as every command names a NODE (SPEC §5): its name,
public key, overlay address, or a unique prefix of one of them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from daemon_inproc import running_daemon
from smegmesh.daemon import service as svc
from smegmesh.daemon.config import MeshOptions


def test_remove_device_takes_a_unique_prefix_as_device_config_and_evict_do(root: Path) -> None:
    """`smegctl remove-device KEYPREFIX` said 'this peer sponsors no device' while
    `device-config KEYPREFIX` and `evict KEYPREFIX` found the same device."""

    async def main() -> None:
        async with running_daemon(root) as d:
            mesh = await d.new_mesh(MeshOptions())
            phone = (await d.add_device(mesh, "phone")).device
            tablet = (await d.add_device(mesh, "tablet")).device
            assert (await d.device_config(mesh, phone.public_key[:10])).device.alias == "phone"
            gone = await d.remove_device(mesh, phone.public_key[:10])
            assert gone.alias == "phone"
            addr = tablet.overlay_address
            # an address prefix, and a name prefix
            assert (await d.remove_device(mesh, addr[: len(addr) - 4])).alias == "tablet"
            await d.add_device(mesh, "laptop")
            await d.add_device(mesh, "lamp")
            with pytest.raises(svc.ServiceError) as e:
                await d.remove_device(mesh, "la")  # two devices: nothing removed
            assert e.value.code == "ambiguous_node" and "laptop" in e.value.message
            assert (await d.remove_device(mesh, "lap")).alias == "laptop"
            assert [x.alias for x in await d.list_devices(mesh)] == ["lamp"]
            with pytest.raises(svc.ServiceError) as e:
                await d.remove_device(mesh, "nosuch")
            assert e.value.code == "unknown_device"

    asyncio.run(main())
