"""Pure diff of WireGuard and host configuration."""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from smegmesh.core.wgconfig import (
    HostConfig,
    HostStatus,
    InterfaceConfig,
    PeerConfig,
    Route,
    empty_status,
    peer_config_of,
)
from smegmesh.core.wgdiff import (
    AddAddress,
    AddPeer,
    AddRoute,
    RemovePeer,
    RemoveRoute,
    SetForwarding,
    SetLinkUp,
    SetListenPort,
    SetMtu,
    SetPrivateKey,
    UpdatePeer,
    apply_host_ops,
    apply_ops,
    diff_host,
    diff_interface,
    public_key_of,
)


def key(i: int) -> bytes:
    return i.to_bytes(4, "big") * 8


def peer(i: int, **kw: object) -> PeerConfig:
    base: dict[str, object] = {
        "public_key": key(i),
        "endpoint": f"[2001:db8::{i:x}]:51820",
        "allowed_ips": frozenset({f"fd00::{i:x}/128"}),
        "keepalive": 0,
    }
    base.update(kw)
    return PeerConfig(**base)  # type: ignore[arg-type]


def config(n: int, **changes: PeerConfig) -> InterfaceConfig:
    peers = {key(i): peer(i) for i in range(1, n + 1)}
    for p in changes.values():
        peers[p.public_key] = p
    return InterfaceConfig("wgt0", private_key=b"\x11" * 32, listen_port=51820, peers=peers)


def converge(desired: InterfaceConfig) -> None:
    live = apply_ops(empty_status(desired.name), diff_interface(desired, empty_status("wgt0")))
    assert diff_interface(desired, live) == []
    assert {k: peer_config_of(p) for k, p in live.peers.items()} == dict(desired.peers)


def test_first_apply_builds_everything() -> None:
    desired = config(3)
    ops = diff_interface(desired, empty_status("wgt0"))
    assert ops[0] == SetPrivateKey(b"\x11" * 32)
    assert ops[1] == SetListenPort(51820)
    assert sum(isinstance(o, AddPeer) for o in ops) == 3
    converge(desired)


def _diff_cpu(desired: InterfaceConfig, live: Any) -> float:
    """The least CPU time of five ``diff_interface`` runs (no collection in between)."""
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            t = time.process_time()
            diff_interface(desired, live)
            best = min(best, time.process_time() - t)
    finally:
        gc.enable()
    return best


def test_one_changed_peer_among_3000_is_one_op() -> None:
    desired = config(3000)
    live = apply_ops(empty_status("wgt0"), diff_interface(desired, empty_status("wgt0")))
    assert diff_interface(desired, live) == []
    changed = peer(1234, allowed_ips=frozenset({"fd00::4d2/128", "fd01::/64"}))
    desired2 = config(3000, x=changed)
    ops = diff_interface(desired2, live)
    assert ops == [UpdatePeer(key(1234), allowed_ips=frozenset({"fd00::4d2/128", "fd01::/64"}))]
    # linear in peers: 10x the peers cost about 10x (quadratic: 100x), measured in
    # the same run against 300 peers (an absolute bound fails on a loaded machine)
    small = config(300)
    small_live = apply_ops(empty_status("wgt0"), diff_interface(small, empty_status("wgt0")))
    small2 = config(300, x=peer(123, allowed_ips=frozenset({"fd01::/64"})))
    big_s, small_s = _diff_cpu(desired2, live), _diff_cpu(small2, small_live)
    assert big_s < 30 * max(small_s, 1e-4), f"3,000 peers: {big_s:.4f} s, 300: {small_s:.4f} s"
    live2 = apply_ops(live, ops)
    assert diff_interface(desired2, live2) == []
    assert live2.peers[key(1233)] is live.peers[key(1233)]


def test_update_carries_only_changed_attributes() -> None:
    desired = config(2)
    live = apply_ops(empty_status("wgt0"), diff_interface(desired, empty_status("wgt0")))
    d2 = config(2, a=peer(2, keepalive=25))
    assert diff_interface(d2, live) == [UpdatePeer(key(2), keepalive=25)]
    d3 = config(2, a=peer(2, endpoint="[2001:db8::99]:1"))
    assert diff_interface(d3, live) == [UpdatePeer(key(2), endpoint="[2001:db8::99]:1")]


def test_remove_and_add() -> None:
    desired = config(3)
    live = apply_ops(empty_status("wgt0"), diff_interface(desired, empty_status("wgt0")))
    peers = dict(desired.peers)
    del peers[key(2)]
    peers[key(9)] = peer(9)
    d2 = InterfaceConfig("wgt0", desired.private_key, 51820, peers)
    ops = diff_interface(d2, live)
    assert ops == [RemovePeer(key(2)), AddPeer(peer(9))]
    assert diff_interface(d2, apply_ops(live, ops)) == []


def test_normalisation_and_learned_endpoint() -> None:
    desired = config(1)
    live = apply_ops(empty_status("wgt0"), diff_interface(desired, empty_status("wgt0")))
    same = config(
        1,
        a=peer(
            1,
            endpoint="[2001:0db8:0::1]:51820",
            allowed_ips=frozenset({"fd00:0:0::1/128"}),
        ),
    )
    assert diff_interface(same, live) == []
    # endpoint None = learned from handshakes: a live endpoint is left alone
    assert diff_interface(config(1, a=peer(1, endpoint=None)), live) == []


def test_private_key_compared_by_public_key_when_unreadable() -> None:
    desired = config(0)
    live = apply_ops(empty_status("wgt0"), diff_interface(desired, empty_status("wgt0")))
    from dataclasses import replace

    blind = replace(live, private_key=None)
    assert blind.public_key == public_key_of(desired.private_key)
    assert diff_interface(desired, blind) == []
    other = InterfaceConfig("wgt0", os.urandom(32), 51820, {})
    assert diff_interface(other, blind) == [SetPrivateKey(other.private_key)]


def test_allowed_ip_moves_between_peers() -> None:
    desired = config(2)
    live = apply_ops(empty_status("wgt0"), diff_interface(desired, empty_status("wgt0")))
    d2 = config(2, a=peer(2, allowed_ips=frozenset({"fd00::2/128", "fd00::1/128"})))
    peers = dict(d2.peers)
    peers[key(1)] = peer(1, allowed_ips=frozenset())
    d2 = InterfaceConfig("wgt0", desired.private_key, 51820, peers)
    live2 = apply_ops(live, diff_interface(d2, live))
    assert live2.peers[key(1)].allowed_ips == frozenset()
    assert diff_interface(d2, live2) == []


def test_host_diff_roundtrip() -> None:
    live = HostStatus("wgt0", up=False, mtu=1500)
    desired = HostConfig(
        "wgt0",
        addresses=frozenset({"fd00::1/64"}),
        routes=frozenset({Route("fd01::/64", "fd00::2"), Route("fd00::3/128")}),
        mtu=1420,
        forwarding=True,
    )
    ops = diff_host(desired, live)
    assert ops == [
        SetMtu(1420),
        AddAddress("fd00::1/64"),
        SetLinkUp(True),
        AddRoute(Route("fd00::3/128")),
        AddRoute(Route("fd01::/64", "fd00::2")),
        SetForwarding(True),
    ]
    live2 = apply_host_ops(live, ops)
    assert diff_host(desired, live2) == []
    fewer = HostConfig("wgt0", desired.addresses, frozenset({Route("fd00::3/128")}), 1420, True)
    assert diff_host(fewer, live2) == [RemoveRoute(Route("fd01::/64", "fd00::2"))]
    # equal after normalisation
    same = HostConfig(
        "wgt0",
        frozenset({"fd00:0::1/64"}),
        frozenset({Route("fd01:0::/64", "fd00:0::2"), Route("fd00::3/128")}),
        1420,
        True,
    )
    assert diff_host(same, live2) == []
