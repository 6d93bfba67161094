"""leave-mesh forgets the mesh on disk: its state, and the device keys kept for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from daemon_inproc import running_daemon
from smegmesh.daemon.config import MeshOptions


def test_leaving_a_mesh_deletes_its_kept_device_keys(root: Path) -> None:
    """docs/DEVICES.md: a key kept with --keep-key lives in STATE/devices/MESH/
    until remove-device deletes it. leave-mesh removed the mesh's state only: the
    private keys stayed on disk for ever, and no command could reach them (the
    mesh is gone)."""

    async def main() -> None:
        async with running_daemon(root) as d:
            mesh = await d.new_mesh(MeshOptions())
            other = await d.new_mesh(MeshOptions())
            for m in (mesh, other):
                await d.add_device(m, "phone", keep_key=True)
            keys = d.state_dir / "devices" / mesh
            assert len(list(keys.glob("*.key"))) == 1
            await d.leave_mesh(mesh)
            assert not (d.state_dir / "meshes" / f"{mesh}.json").exists()
            assert not keys.exists(), f"left behind: {list(keys.iterdir())}"
            # the other mesh's key is its own
            assert len(list((d.state_dir / "devices" / other).glob("*.key"))) == 1

    asyncio.run(main())
