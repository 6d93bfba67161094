"""How the test bed talks to a daemon: the real ``smegctl`` and the local API.

Shared by the namespace daemons (:mod:`.daemon`) and the loopback ones
(:mod:`.loopback`): the commands a test runs are the ones a user types, and the
API helper is what ``smegctl`` speaks, minus a Python start-up per call.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

import httpx

__all__ = ["SMEGCTL", "SMEGD", "run_smegctl", "unix_api"]

#: The daemon and the CLI as processes of this interpreter (no PATH lookup).
SMEGD = (sys.executable, "-m", "smegmesh.daemon.main")
SMEGCTL = (sys.executable, "-m", "smegmesh.cli.main")


def run_smegctl(
    socket: str | os.PathLike[str],
    args: Sequence[str],
    *,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``smegctl --socket SOCKET ARGS`` as a subprocess (``SMEG_SOCKET`` unset)."""
    e = {k: v for k, v in os.environ.items() if k != "SMEG_SOCKET"}
    e.update(env or {})
    return subprocess.run(
        [*SMEGCTL, "--socket", str(socket), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=e,
    )


def unix_api(socket: str | os.PathLike[str], timeout: float = 30.0) -> httpx.Client:
    """An HTTP client for the daemon's local API on its unix socket."""
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://smegd", timeout=timeout
    )
