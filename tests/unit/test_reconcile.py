"""Reconciler over the in-memory backends."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

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


def test_check_brings_up_an_interface_set_down_outside_smegd(caplog: Any) -> None:
    """``ip link set wgX down`` by hand: the kernel drops the link's addresses and
    routes, and nothing was put back before the full read (every 300 s), while
    every tunnel of the mesh was dead and a client blamed its peer (after 235 s)."""
    wg, host = MemoryBackend(), MemoryHost()
    rec = Reconciler(wg, host)
    rec.apply(iface(3), HOST)
    assert rec.check() == []
    reads = host.reads
    assert host.is_up("wgr0") is True and host.reads == reads  # a cheap read
    # what the kernel does to an IPv6 link set down
    host.state["wgr0"] = replace(
        host.state["wgr0"], up=False, addresses=frozenset(), routes=frozenset()
    )
    with caplog.at_level(logging.WARNING, logger="smegmesh.wg.reconcile"):
        assert rec.check() == []  # not reported as created: the device stayed
    st = host.state["wgr0"]
    assert st.up and st.addresses == HOST.addresses and st.routes == HOST.routes
    assert "wgr0 was set down outside smegd" in caplog.text
    assert len(wg.devices["wgr0"].peers) == 3
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="smegmesh.wg.reconcile"):
        assert rec.check() == []
    assert caplog.text == ""  # once per time it is set down
    assert host.is_up("nope") is None


def test_check_leaves_down_an_interface_wanted_down() -> None:
    wg, host = MemoryBackend(), MemoryHost()
    rec = Reconciler(wg, host)
    rec.apply(iface(3), replace(HOST, up=False))
    assert host.state["wgr0"].up is False
    applied = len(host.applied)
    assert rec.check() == [] and len(host.applied) == applied


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


def test_an_interface_that_cannot_be_brought_up_is_warned_of_once(caplog: Any) -> None:
    """A bring-up that fails (or a link set down again at once) is retried at
    every check: the WARNING that it was set down came every 5 s with it."""

    class Stubborn(MemoryHost):
        def apply(self, interface: str, ops: Any) -> None:
            if self.state.get(interface) is not None and not self.state[interface].up:
                raise OSError("Operation not permitted")
            super().apply(interface, ops)

    wg, host = MemoryBackend(), Stubborn()
    rec = Reconciler(wg, host)
    rec.apply(iface(3), HOST)
    host.state["wgr0"] = replace(host.state["wgr0"], up=False)
    with caplog.at_level(logging.WARNING, logger="smegmesh.wg.reconcile"):
        for _ in range(5):
            rec.check()
    assert caplog.text.count("was set down outside smegd") == 1
    host.state["wgr0"] = replace(host.state["wgr0"], up=True)
    rec.check()
    host.state["wgr0"] = replace(host.state["wgr0"], up=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="smegmesh.wg.reconcile"):
        rec.check()
    assert caplog.text.count("was set down outside smegd") == 1  # a new occurrence
