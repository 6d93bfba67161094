"""A real :class:`~smegmesh.daemon.node.Daemon` in the test's own event loop.

Memory WireGuard backend, bound to ``::1``, on a short state directory: no
process, no root. For what a unit test needs of a whole daemon (start-up from
a prepared state directory, a command's answer when the disk fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from smegmesh.daemon.config import parse_config
from smegmesh.daemon.node import Daemon
from smegmesh.testbed.ports import free_port


def daemon_config(root: Path, **extra: Any) -> Any:
    """A daemon's configuration with ``root/state`` as its state directory."""
    cfg: dict[str, Any] = {
        "stubWg": True,
        "stateDir": str(root / "state"),
        "controlSocket": str(root / "s.sock"),
        "gRPCPort": free_port(),
        "bindAddress": "::1",
        "baseConfiguration": {"publicEndpoint": "::1"},
    }
    cfg.update(extra)
    return parse_config(cfg)


def by_hand(d: Daemon) -> Daemon:
    """``d`` with a reconcile loop that does nothing: the test runs the passes
    (``_reconcile_pass``, ``_health_check``, ...) when it chooses."""

    async def no_loop() -> None:
        await asyncio.Event().wait()

    d._reconcile_loop = no_loop  # type: ignore[method-assign]
    return d


@contextlib.asynccontextmanager
async def running_daemon(root: Path, **extra: Any) -> AsyncIterator[Daemon]:
    """A started daemon on ``root`` (keep ``root`` short: a unix socket lives there)."""
    d = Daemon(daemon_config(root, **extra))
    try:
        await d.start()
        yield d
    finally:
        await d.stop()


async def until(cond: Callable[[], object], timeout: float = 20.0) -> None:
    """Until ``cond()`` is true; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {cond}"
        await asyncio.sleep(0.02)
