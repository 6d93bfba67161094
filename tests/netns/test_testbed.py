"""The namespace test bed itself: bridge, NAT66 router, teardown, stale cleanup."""

from __future__ import annotations

import os

import pytest

from smegmesh.core.wgconfig import HostConfig, InterfaceConfig, PeerConfig
from smegmesh.core.wgdiff import public_key_of
from smegmesh.net.host import HostNetwork
from smegmesh.testbed.netns import Testbed, cleanup_stale, list_netns, unique_prefix, wait_until
from smegmesh.wg.reconcile import Reconciler
from smegmesh.wg.userspace import UserspaceBackend

pytestmark = pytest.mark.netns


def test_nat_client_reaches_public_node_and_wireguard_works(testbed: Testbed) -> None:
    server = testbed.add_node()
    client = testbed.add_node(nat=True)
    assert client.ping(server.address)
    # the server sees the router's address, not the client's (masquerade)
    assert not server.ping(client.address, timeout=1)

    keys = {n.ns: os.urandom(32) for n in (server, client)}
    overlay = {server.ns: "fd00:5e:1::1", client.ns: "fd00:5e:1::2"}
    recs = []
    try:
        for n, other, endpoint, keepalive in (
            (server, client, None, 0),
            (client, server, f"[{server.address}]:51820", 1),
        ):
            backend = UserspaceBackend(socket_dir=os.path.join(n.tmpdir, "wg"), netns=n.ns)
            host = HostNetwork(netns=n.ns)
            rec = Reconciler(backend, host)
            recs.append(rec)
            pub = public_key_of(keys[other.ns])
            peer = PeerConfig(pub, endpoint, frozenset({f"{overlay[other.ns]}/128"}), keepalive)
            rec.apply(
                InterfaceConfig(n.wg_name(), keys[n.ns], 51820, {pub: peer}),
                HostConfig(n.wg_name(), frozenset({f"{overlay[n.ns]}/64"})),
            )
        # the client's keepalive opens the NAT mapping; then the server can reach it
        wait_until(lambda: server.ping(overlay[client.ns]), 15, what="server -> NATed client")
        learned = recs[0].backend.read(server.wg_name()).peers[public_key_of(keys[client.ns])]
        assert learned.endpoint is not None and "2001:db8:" in learned.endpoint
        assert f":{testbed.bed:x}::fe]" in learned.endpoint  # the router's public address
    finally:
        for rec in recs:
            rec.host.close()
            rec.backend.close()


def test_teardown_kills_processes_and_removes_namespaces(netns_env: None) -> None:
    with Testbed() as bed:
        node = bed.add_node()
        proc = node.spawn(["sleep", "600"])
        prefix = bed.prefix
    assert proc.poll() is not None
    assert not [ns for ns in list_netns() if ns.startswith(prefix)]


def test_cleanup_stale(netns_env: None) -> None:
    prefix = unique_prefix()
    bed = Testbed(prefix)
    bed.__enter__()
    node = bed.add_node()
    node.spawn(["sleep", "600"])
    bed._closed = True  # simulate a crash: no teardown
    removed = cleanup_stale(prefix)
    assert f"{prefix}n1" in removed and f"{prefix}br" in removed
    assert not [ns for ns in list_netns() if ns.startswith(prefix)]
    for p in node.procs:
        p.wait(timeout=5)
