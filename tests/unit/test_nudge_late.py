"""A peer whose endpoint is set late gets a handshake nudge, as a new peer does.

The nudge (``ApplyOps._nudge_new_peers``: one empty datagram to the peer's
overlay address, so this side's WireGuard starts a handshake at once) went
only to peers just added with an endpoint. A peer entry made while its name
did not resolve has none; when the health check (or an apply) set it later,
the handshake waited for WireGuard's next retry or keepalive (wireguard-go
with a keepalive: 4.0 s for an endpoint set 100 s after the entry, a probe
not kept), and between peers with no keepalive not before the first packet
sent (tests/netns/test_late_name_netns.py: none within 8 s without the nudge).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from daemon_inproc import by_hand, daemon_config
from smegmesh.core.wgconfig import PeerConfig
from smegmesh.core.wgdiff import AddPeer, RemovePeer, UpdatePeer
from smegmesh.daemon import apply
from smegmesh.daemon.config import MeshOptions
from smegmesh.daemon.node import Daemon
from smegmesh.wg import factory
from smegmesh.wg.memory import MemoryBackend


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The overlay addresses nudged (nothing leaves the test)."""
    backend = MemoryBackend()
    backend.kind = "userspace"  # type: ignore[misc]  # a data plane: nudges are sent
    monkeypatch.setattr(factory, "create_backend", lambda *a, **kw: backend)
    out: list[str] = []
    monkeypatch.setattr(apply, "send_nudges", out.extend)
    return out


def test_a_peer_whose_endpoint_the_health_check_set_is_nudged(
    root: Path, sent: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        d = by_hand(Daemon(daemon_config(root, baseConfiguration={"publicEndpoint": "::1"})))
        await d.start()
        try:
            rt = d.meshes[await d.new_mesh(MeshOptions())]
            await d._reconcile_pass()
            me = d.identity.wg_public_key  # the only record there is: ours
            address = rt.node.mesh.record(me).address  # type: ignore[union-attr]
            late = {rt.ifname: [UpdatePeer(me, endpoint="gw.example.net:51820")]}
            monkeypatch.setattr(d.reconciler, "take_applied_again", lambda: late)
            sent.clear()
            await d._health_check()
            assert sent == [address]
            # an endpoint set by an apply pass, and a new peer: nudged; others not
            sent.clear()
            peer = PeerConfig(me, "gw.example.net:51820", frozenset())
            ops: list[Any] = [
                UpdatePeer(me, endpoint="[2001:db8::7]:51820"),
                UpdatePeer(me, allowed_ips=frozenset()),
                RemovePeer(me),
                AddPeer(peer),
            ]
            d._nudge_new_peers(rt, ops)
            assert sent == [address, address]
        finally:
            await d.stop()

    asyncio.run(main())
