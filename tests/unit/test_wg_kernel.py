"""Kernel backend: message building and dump parsing without the module; live test if present."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import types
from typing import Any

import pytest
from pyroute2.netlink.generic.wireguard import AsyncWireGuard, wgmsg

from smegmesh.core.wgconfig import PeerConfig
from smegmesh.core.wgdiff import (
    AddPeer,
    RemovePeer,
    SetListenPort,
    SetPrivateKey,
    UpdatePeer,
    public_key_of,
)
from smegmesh.wg.base import BackendUnavailable
from smegmesh.wg.factory import create_backend, kernel_wireguard_available
from smegmesh.wg.kernel import SetRequest, build_set_requests, parse_dump
from smegmesh.wg.memory import MemoryBackend

K1, K2 = b"\x01" * 32, b"\x02" * 32
B1, B2 = base64.b64encode(K1).decode(), base64.b64encode(K2).decode()


def test_build_set_requests_matches_recorded_structures() -> None:
    ops = [
        SetPrivateKey(b"\x09" * 32),
        SetListenPort(51820),
        RemovePeer(K2),
        AddPeer(PeerConfig(K1, "[2001:db8::1]:51820", frozenset({"fd00::1/128", "fd01::/64"}), 25)),
        UpdatePeer(K2, keepalive=0),
        UpdatePeer(K1, endpoint="192.0.2.7:1234", allowed_ips=frozenset()),
    ]
    assert build_set_requests(ops) == [
        SetRequest(private_key=base64.b64encode(b"\x09" * 32).decode(), listen_port=51820),
        SetRequest(peer={"public_key": B2, "remove": True}),
        SetRequest(
            peer={
                "public_key": B1,
                "endpoint_addr": "2001:db8::1",
                "endpoint_port": 51820,
                "persistent_keepalive": 25,
                "replace_allowed_ips": True,
                "allowed_ips": ["fd00::1/128", "fd01::/64"],
            }
        ),
        SetRequest(peer={"public_key": B2, "update_only": True, "persistent_keepalive": 0}),
        SetRequest(
            peer={
                "public_key": B1,
                "update_only": True,
                "endpoint_addr": "192.0.2.7",
                "endpoint_port": 1234,
                "replace_allowed_ips": True,
                "allowed_ips": [],
            }
        ),
    ]


def _encode_with_pyroute2(peer: dict[str, Any]) -> wgmsg:
    """Run pyroute2's own message builder on our peer dict, encode and decode it."""
    fake = types.SimpleNamespace()
    fake._wg_test_key = lambda k: AsyncWireGuard._wg_test_key(fake, k)
    fake._wg_build_allowedips = lambda a: AsyncWireGuard._wg_build_allowedips(fake, a)
    msg = wgmsg()
    msg["cmd"] = 1
    msg["version"] = 1
    msg["attrs"].append(["WGDEVICE_A_IFNAME", "wgk0"])
    AsyncWireGuard._wg_set_peer(fake, msg, peer)
    msg.encode()
    out = wgmsg(msg.data)
    out.decode()
    return out


def test_peer_dicts_encode_through_pyroute2() -> None:
    (req,) = build_set_requests(
        [AddPeer(PeerConfig(K1, "[2001:db8::1]:51820", frozenset({"fd00::1/128"}), 25))]
    )
    assert req.peer is not None
    decoded = _encode_with_pyroute2(req.peer)
    status = parse_dump("wgk0", [decoded])
    peer = status.peers[K1]
    assert peer.endpoint == "[2001:db8::1]:51820"
    assert peer.allowed_ips == frozenset({"fd00::1/128"})
    assert peer.keepalive == 25


def _dump_part(peers: list[list[Any]], private: bytes | None = None) -> wgmsg:
    msg = wgmsg()
    msg["cmd"] = 0
    msg["version"] = 1
    attrs: list[Any] = [["WGDEVICE_A_IFNAME", "wgk0"]]
    if private is not None:
        attrs.append(["WGDEVICE_A_PRIVATE_KEY", base64.b64encode(private).decode()])
        attrs.append(["WGDEVICE_A_LISTEN_PORT", 51820])
    attrs.append(["WGDEVICE_A_PEERS", [{"attrs": p} for p in peers]])
    msg["attrs"] = attrs
    msg.encode()
    out = wgmsg(msg.data)
    out.decode()
    return out


def _aip(last: int) -> dict[str, Any]:
    return {
        "attrs": [
            ["WGALLOWEDIP_A_FAMILY", 10],
            ["WGALLOWEDIP_A_IPADDR", bytes.fromhex("fd00" + "00" * 13) + bytes([last])],
            ["WGALLOWEDIP_A_CIDR_MASK", 128],
        ]
    }


def test_parse_multipart_dump_merges_split_peers() -> None:
    private = os.urandom(32)
    part1 = _dump_part(
        [
            [
                ["WGPEER_A_PUBLIC_KEY", B1],
                ["WGPEER_A_ENDPOINT", {"addr": "192.0.2.1", "port": 9}],
                ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 5],
                ["WGPEER_A_ALLOWEDIPS", [_aip(1), _aip(2)]],
            ]
        ],
        private,
    )
    # the kernel continues peer K1's allowed IPs in the next message, then K2
    part2 = _dump_part(
        [
            [["WGPEER_A_PUBLIC_KEY", B1], ["WGPEER_A_ALLOWEDIPS", [_aip(3)]]],
            [["WGPEER_A_PUBLIC_KEY", B2], ["WGPEER_A_ALLOWEDIPS", [_aip(9)]]],
        ]
    )
    status = parse_dump("wgk0", [part1, part2])
    assert status.private_key == private
    assert status.public_key == public_key_of(private)
    assert status.listen_port == 51820
    assert status.peers[K1].allowed_ips == frozenset({"fd00::1/128", "fd00::2/128", "fd00::3/128"})
    assert status.peers[K1].endpoint == "192.0.2.1:9"
    assert status.peers[K1].keepalive == 5
    assert status.peers[K2].allowed_ips == frozenset({"fd00::9/128"})
    assert status.peers[K2].endpoint is None


def test_factory() -> None:
    assert isinstance(create_backend("memory"), MemoryBackend)
    with pytest.raises(ValueError, match="wgBackend must be one of"):
        create_backend("bogus")
    with pytest.raises(BackendUnavailable, match="apt-get install"):
        create_backend("userspace", wireguard_go="no-such-wireguard-go")


def test_kernel_backend_live() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not kernel_wireguard_available():
        pytest.skip("kernel WireGuard module not available (ip link add type wireguard fails)")
    from smegmesh.core.wgconfig import InterfaceConfig, empty_status
    from smegmesh.core.wgdiff import diff_interface
    from smegmesh.wg.kernel import KernelBackend

    name = f"smk{os.getpid() % 100000}"
    wg = KernelBackend()
    try:
        assert wg.ensure_interface(name)
        desired = InterfaceConfig(
            name,
            os.urandom(32),
            None,
            {K1: PeerConfig(K1, "[2001:db8::1]:51820", frozenset({"fd00::1/128"}))},
        )
        wg.apply(name, diff_interface(desired, empty_status(name)))
        assert diff_interface(desired, wg.read(name)) == []
    finally:
        wg.remove_interface(name)
        wg.close()


def test_auto_prefers_userspace_without_module() -> None:
    if kernel_wireguard_available() or shutil.which("wireguard-go") is None:
        pytest.skip("needs: no kernel module, wireguard-go installed")
    backend = create_backend("auto", socket_dir="/tmp/smgauto-unused")
    try:
        assert backend.kind == "userspace"
    finally:
        backend.close()
        shutil.rmtree("/tmp/smgauto-unused", ignore_errors=True)


def test_kernel_probe_from_the_event_loop() -> None:
    """smegd chooses its backend (wgBackend: auto, the default) in its event loop, where
    pyroute2's sync IPRoute() raised "This event loop is already running": smegd
    with an empty config died with a traceback instead of falling back to userspace."""

    async def probe() -> bool:
        return kernel_wireguard_available()

    assert asyncio.run(probe()) == kernel_wireguard_available()


def test_the_kernel_backend_is_made_and_used_from_any_thread() -> None:
    """smegd makes its backend in its event loop and uses it in its WireGuard worker
    thread. pyroute2's sync sockets run an event loop of their own: made in the
    thread of a running loop they raised 'This event loop is already running',
    so ``wgBackend: kernel`` (or ``auto`` where the module is loaded) died at start
    (found beside the CLI review's probe fix). Here without the module: it is
    BackendUnavailable, never another error; with it, the worker thread reads."""
    from concurrent.futures import ThreadPoolExecutor

    from smegmesh.wg.kernel import KernelBackend

    async def main() -> None:
        try:
            backend = KernelBackend()
        except BackendUnavailable:
            if kernel_wireguard_available():
                raise
            return
        try:
            with ThreadPoolExecutor(1) as pool:
                assert pool.submit(backend._exists, "smegnone0").result() is False
        finally:
            backend.close()

    asyncio.run(main())
