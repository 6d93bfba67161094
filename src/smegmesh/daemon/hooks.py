"""Mesh hooks (``preUp``/``postUp``/``preDown``/``postDown``), wg-quick style."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess

from smegmesh.daemon.base import DaemonBase
from smegmesh.daemon.runtime import MeshRuntime

log = logging.getLogger("smegd")


def run_hooks(stage: str, commands: list[str], ifname: str, mesh_id: str) -> None:
    """Run wg-quick style hook commands; ``%i`` and ``$IFNAME`` name the interface."""
    for cmd in commands:
        line = cmd.replace("%i", ifname)
        env = {**os.environ, "IFNAME": ifname, "SMEG_MESH_ID": mesh_id}
        try:
            res = subprocess.run(
                ["/bin/sh", "-c", line], env=env, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            log.error("mesh %s: %s hook %r failed: %s", mesh_id, stage, line, e)
            continue
        if res.returncode != 0:
            log.error(
                "mesh %s: %s hook %r exited %d: %s",
                mesh_id,
                stage,
                line,
                res.returncode,
                res.stderr.strip()[:200],
            )
        else:
            log.info("mesh %s: ran %s hook %r", mesh_id, stage, line)


class HookOps(DaemonBase):
    """Mixin of the daemon: runs a mesh's hooks in the WireGuard worker thread."""

    async def _run_hooks(self, rt: MeshRuntime, stage: str) -> None:
        """preUp/postUp/preDown/postDown of a mesh, in the WireGuard worker thread."""
        commands = rt.hooks.get(stage, [])
        if commands:
            await asyncio.get_running_loop().run_in_executor(
                self._wg_pool, run_hooks, stage, commands, rt.ifname, rt.mesh_id
            )
