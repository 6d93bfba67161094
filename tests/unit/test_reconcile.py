"""Reconciler over the in-memory backends."""

from __future__ import annotations

from smegmesh.core.wgconfig import HostConfig, InterfaceConfig, PeerConfig, Route
from smegmesh.core.wgdiff import AddPeer, UpdatePeer
from smegmesh.net.host import MemoryHost
from smegmesh.wg.base import WgBackend, WgError
from smegmesh.wg.memory import MemoryBackend
from smegmesh.wg.reconcile import Reconciler


def key(i: int) -> bytes:
    return i.to_bytes(4, "big") * 8


def iface(n: int, changed: dict[int, PeerConfig] | None = None) -> InterfaceConfig:
    peers = {
        key(i): PeerConfig(key(i), f"[2001:db8::{i:x}]:51820", frozenset({f"fd00::{i:x}/128"}))
        for i in range(1, n + 1)
    }
    for i, p in (changed or {}).items():
        peers[key(i)] = p
    return InterfaceConfig("wgr0", b"\x22" * 32, 51820, peers)


HOST = HostConfig(
    "wgr0",
    addresses=frozenset({"fd00::ffff/64"}),
    routes=frozenset({Route("fd01::/64", "fd00::1")}),
    forwarding=True,
)


def test_memory_backend_is_a_backend() -> None:
    assert isinstance(MemoryBackend(), WgBackend)


def test_idempotent_and_incremental() -> None:
    wg, host = MemoryBackend(), MemoryHost()
    rec = Reconciler(wg, host)
    first = rec.apply(iface(3000), HOST)
    assert first.created and first.full_read
    assert sum(isinstance(o, AddPeer) for o in first.wg_ops) == 3000
    assert first.host_ops
    second = rec.apply(iface(3000), HOST)
    assert not second.changed and not second.full_read
    reads = wg.reads
    p = PeerConfig(key(7), "[2001:db8::7]:51820", frozenset({"fd00::7/128"}), keepalive=25)
    third = rec.apply(iface(3000, {7: p}), HOST)
    assert third.wg_ops == [UpdatePeer(key(7), keepalive=25)]
    assert third.host_ops == []
    assert wg.reads == reads  # no full dump for a one-peer change
    assert wg.applied[-1] == ("wgr0", (UpdatePeer(key(7), keepalive=25),))
    assert wg.devices["wgr0"].peers[key(7)].keepalive == 25
    assert third.seconds < 0.05


def test_error_forces_full_read_and_retry() -> None:
    wg, host = MemoryBackend(), MemoryHost()
    rec = Reconciler(wg, host)
    rec.apply(iface(3), HOST)
    wg.fail_next_apply = WgError("boom")
    res = rec.apply(iface(4), HOST)
    assert res.retried and res.full_read
    assert set(wg.devices["wgr0"].peers) == {key(i) for i in range(1, 5)}


def test_check_reapplies_lost_device() -> None:
    wg, host = MemoryBackend(), MemoryHost()
    rec = Reconciler(wg, host)
    rec.apply(iface(3), HOST)
    assert rec.check() == []
    wg.lose("wgr0")
    host.remove("wgr0")
    (res,) = rec.check()
    assert res.created and len(res.wg_ops) == 5
    assert len(wg.devices["wgr0"].peers) == 3
    assert host.state["wgr0"].addresses == HOST.addresses


def test_verify_interval_triggers_full_read() -> None:
    now = [0.0]
    wg, host = MemoryBackend(), MemoryHost()
    rec = Reconciler(wg, host, verify_interval=10, clock=lambda: now[0])
    rec.apply(iface(2), HOST)
    now[0] = 5
    assert not rec.apply(iface(2), HOST).full_read
    now[0] = 11
    assert rec.apply(iface(2), HOST).full_read


def test_remove() -> None:
    wg, host = MemoryBackend(), MemoryHost()
    rec = Reconciler(wg, host)
    rec.apply(iface(2), HOST)
    rec.remove("wgr0")
    assert "wgr0" not in wg.devices and "wgr0" not in host.state
