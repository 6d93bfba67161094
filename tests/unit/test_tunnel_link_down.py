"""The daemon tells the tunnel watch that our own link was set down (``ApplyOps._every_5s``).

``ip link set wgX down`` beside smegd: the health check brings the link up
again within 5 s (``Reconciler.check``), and the tunnel watch ran after it in
the same round, so it never saw the link down; WireGuard kept its last
handshake time, and a client whose last handshake was old enough blamed its
peer for the silence (``core.tunnel``). The watch now reads the link first.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from daemon_inproc import by_hand, daemon_config
from smegmesh.core.wgconfig import InterfaceStatus
from smegmesh.daemon.config import MeshOptions
from smegmesh.daemon.node import Daemon
from smegmesh.wg import factory
from smegmesh.wg.memory import MemoryBackend


def test_the_watch_sees_a_link_set_down_that_the_health_check_brings_up(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = MemoryBackend()
    backend.kind = "userspace"  # type: ignore[misc]  # a data plane: tunnels are watched
    monkeypatch.setattr(factory, "create_backend", lambda *a, **kw: backend)

    async def main() -> None:
        d = by_hand(Daemon(daemon_config(root)))
        await d.start()
        try:
            rt = d.meshes[await d.new_mesh(MeshOptions())]
            await d._reconcile_pass()
            reads: list[bool] = []

            def read(now: int, status: InterfaceStatus, ka: int, link_up: bool = True) -> Any:
                reads.append(link_up)

            monkeypatch.setattr(rt.node, "tunnel_watched", lambda ka: True)
            monkeypatch.setattr(rt.node, "tunnel_read", read)
            host = d.reconciler.host.state  # type: ignore[attr-defined]  # a MemoryHost
            await d._every_5s()
            host[rt.ifname] = replace(host[rt.ifname], up=False)  # ip link set down
            await d._every_5s()
            await d._every_5s()
            assert reads == [True, False, True]
            assert host[rt.ifname].up  # brought up again by the health check
        finally:
            await d.stop()

    asyncio.run(main())
