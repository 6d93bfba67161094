"""Mesh hooks (``preUp``/``postUp``/``preDown``/``postDown``), wg-quick style."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import tempfile

from smegmesh.daemon.base import DaemonBase
from smegmesh.daemon.runtime import MeshRuntime
from smegmesh.daemon.textsafe import printable

log = logging.getLogger("smegd")


#: Seconds a hook's shell may run; a command it puts in the background is not waited for.
HOOK_TIMEOUT_S = 30

#: Bytes of a failing hook's error output that go to the log.
HOOK_OUTPUT_LOGGED = 200


def _one_line(text: str) -> str:
    """Output as one printable log line: lines joined by spaces, escapes escaped."""
    return printable(" ".join(text.split()))


def run_hooks(stage: str, commands: list[str], ifname: str, mesh_id: str) -> None:
    """Run wg-quick style hook commands; ``%i`` and ``$IFNAME`` name the interface.

    Each command's error output goes to a temporary file, not a pipe: a command
    the hook puts in the background (``agent &``) inherits it, and reading a pipe
    to its end would wait for that command too, holding the WireGuard worker.
    """
    for cmd in commands:
        line = cmd.replace("%i", ifname)
        env = {**os.environ, "IFNAME": ifname, "SMEG_MESH_ID": mesh_id}
        with tempfile.TemporaryFile() as err:
            try:
                res = subprocess.run(
                    ["/bin/sh", "-c", line],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    timeout=HOOK_TIMEOUT_S,
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                log.error("mesh %s: %s hook %r failed: %s", mesh_id, stage, line, e)
                continue
            err.seek(0)
            output = err.read(4 * HOOK_OUTPUT_LOGGED).decode("utf-8", "replace")
        if res.returncode != 0:
            log.error(
                "mesh %s: %s hook %r exited %d: %s",
                mesh_id,
                stage,
                line,
                res.returncode,
                _one_line(output)[:HOOK_OUTPUT_LOGGED],
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
