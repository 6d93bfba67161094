"""Real WireGuard (wireguard-go) between network namespaces, driven by the reconciler."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from smegmesh.core.wgconfig import HostConfig, InterfaceConfig, PeerConfig, Route
from smegmesh.core.wgdiff import public_key_of
from smegmesh.net.host import HostNetwork
from smegmesh.testbed.netns import Node, Testbed, wait_until
from smegmesh.wg.reconcile import Reconciler, ReconcileResult
from smegmesh.wg.userspace import UserspaceBackend

pytestmark = pytest.mark.netns

PORT = 51820


@dataclass
class WgNode:
    node: Node
    name: str
    private_key: bytes
    overlay: str
    backend: UserspaceBackend
    host: HostNetwork
    rec: Reconciler

    @property
    def public_key(self) -> bytes:
        return public_key_of(self.private_key)

    def peer(self, extra: frozenset[str] = frozenset()) -> PeerConfig:
        return PeerConfig(
            self.public_key,
            f"[{self.node.address}]:{PORT}",
            frozenset({f"{self.overlay}/128"}) | extra,
        )

    def apply(
        self,
        peers: list[PeerConfig],
        routes: frozenset[Route] = frozenset(),
        forwarding: bool = False,
    ) -> ReconcileResult:
        return self.rec.apply(
            InterfaceConfig(self.name, self.private_key, PORT, {p.public_key: p for p in peers}),
            HostConfig(self.name, frozenset({f"{self.overlay}/64"}), routes, 1420, forwarding),
        )


@pytest.fixture
def wgnodes(testbed: Testbed) -> Iterator[list[WgNode]]:
    out: list[WgNode] = []
    try:
        for node in testbed.add_nodes(3):
            backend = UserspaceBackend(socket_dir=os.path.join(node.tmpdir, "wg"), netns=node.ns)
            host = HostNetwork(netns=node.ns)
            out.append(
                WgNode(
                    node,
                    node.wg_name(),
                    os.urandom(32),
                    f"fd00:5e:{testbed.bed:x}::{node.index:x}",
                    backend,
                    host,
                    Reconciler(backend, host),
                )
            )
        yield out
    finally:
        for n in out:
            n.rec.close()
            n.host.close()
            n.backend.close()


def full_mesh(nodes: list[WgNode]) -> None:
    for n in nodes:
        res = n.apply([m.peer() for m in nodes if m is not n])
        assert res.created


def test_three_nodes_ping_over_overlay(wgnodes: list[WgNode]) -> None:
    full_mesh(wgnodes)
    for n in wgnodes:
        again = n.apply([m.peer() for m in wgnodes if m is not n])
        assert not again.changed, again
    for a in wgnodes:
        for b in wgnodes:
            if a is not b:
                wait_until(lambda a=a, b=b: a.node.ping(b.overlay), 15, what=f"{a.name}->{b.name}")
    # the UAPI sockets are in the per-node directories, not in /var/run/wireguard
    for n in wgnodes:
        assert os.path.exists(n.backend.socket_path(n.name))
        assert n.backend.socket_path(n.name).startswith(n.node.tmpdir)
        assert not os.path.exists(f"/var/run/wireguard/{n.name}.sock")


def test_two_hop_route_through_forwarding_node(wgnodes: list[WgNode]) -> None:
    a, b, c = wgnodes
    b.apply([a.peer(), c.peer()], forwarding=True)
    a.apply(
        [b.peer(frozenset({f"{c.overlay}/128"}))],
        routes=frozenset({Route(f"{c.overlay}/128", b.overlay)}),
    )
    c.apply(
        [b.peer(frozenset({f"{a.overlay}/128"}))],
        routes=frozenset({Route(f"{a.overlay}/128", b.overlay)}),
    )
    assert b.node.run(["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout.strip() == "1"
    routes = a.node.run(["ip", "-6", "route", "show", "proto", str(0x5E)]).stdout
    assert f"{c.overlay} via {b.overlay}" in routes
    wait_until(lambda: a.node.ping(c.overlay), 15, what="A->C via B")
    trace = a.host.read(a.name)
    assert trace.routes == frozenset({Route(f"{c.overlay}/128", b.overlay)})


def test_remove_peer_removes_it_and_its_routes(wgnodes: list[WgNode]) -> None:
    a, b, c = wgnodes
    full_mesh(wgnodes)
    c_lan = Route("fd00:5e:ffff::/64", c.overlay)
    a.apply(
        [b.peer(), c.peer(frozenset({"fd00:5e:ffff::/64"}))],
        routes=frozenset({c_lan}),
    )
    wait_until(lambda: a.node.ping(c.overlay), 15)
    assert c_lan in a.host.read(a.name).routes
    # a route that is not ours must survive
    a.node.run(["ip", "-6", "route", "add", "fd00:5e:eeee::/64", "dev", a.name])
    res = a.apply([b.peer()])
    assert len(res.wg_ops) == 1 and len(res.host_ops) == 1
    live = a.backend.read(a.name)
    assert set(live.peers) == {b.public_key}
    assert a.host.read(a.name).routes == frozenset()
    shown = a.node.run(["ip", "-6", "route", "show", "dev", a.name]).stdout
    assert "fd00:5e:ffff::" not in shown and "fd00:5e:eeee::/64" in shown
    assert not a.node.ping(c.overlay)
    assert a.node.ping(b.overlay, count=1, timeout=2) or wait_until(
        lambda: a.node.ping(b.overlay), 10
    )


def test_killed_wireguard_go_is_detected_and_repaired(wgnodes: list[WgNode]) -> None:
    a, b, _ = wgnodes
    full_mesh(wgnodes)
    wait_until(lambda: a.node.ping(b.overlay), 15)
    assert a.rec.check() == []
    pid = a.backend.pid(a.name)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    repaired = wait_until(a.rec.check, 5, what="check() to notice the dead process")
    assert repaired[0].created
    assert a.backend.pid(a.name) != pid
    assert a.backend.restarts(a.name) == 1
    assert len(a.backend.read(a.name).peers) == 2
    wait_until(lambda: a.node.ping(b.overlay), 15, what="ping after repair")
    assert not a.apply([m.peer() for m in wgnodes if m is not a]).changed


def test_an_interface_set_down_by_hand_is_brought_up_by_the_health_check(
    wgnodes: list[WgNode],
) -> None:
    """``ip link set`` down: the kernel drops the link's addresses and routes, and
    smegd put them back only at its full read, every 300 s."""
    a, b, _ = wgnodes
    full_mesh(wgnodes)
    wait_until(lambda: a.node.ping(b.overlay), 15)
    a.node.run(["ip", "link", "set", a.name, "down"])
    assert f"{a.overlay}/64" not in a.host.read(a.name).addresses  # what the kernel did
    assert a.rec.check() == []
    live = a.host.read(a.name)
    assert live.up and live.addresses == frozenset({f"{a.overlay}/64"})
    wait_until(lambda: a.node.ping(b.overlay), 15, what="ping after the link came up")


def test_a_named_endpoint_whose_address_moves_is_followed_by_the_health_check(
    wgnodes: list[WgNode],
) -> None:
    """A peer's endpoint name that resolves to a new address: WireGuard kept the
    old one until the full read (300 s in smegd); the health check sends it now
    (``Reconciler._names_moved``), about a name's TTL after the change."""
    a, b, c = wgnodes
    answer = [c.node.address]  # the name's old address: nobody there for A

    def lookup(host: str, port: object, **_k: object) -> list[tuple[object, ...]]:
        return [(socket.AF_INET6, socket.SOCK_DGRAM, 0, "", (answer[0], int(str(port)), 0, 0))]

    resolver = a.backend._resolve  # the backend's own, as smegd has it; a short TTL
    resolver._lookup, resolver.ttl_s = lookup, 0.5
    a.apply([replace(b.peer(), endpoint=f"b-dyn.example:{PORT}")])
    b.apply([a.peer()])  # B sends nothing first: A must find it
    assert a.backend.read(a.name).peers[b.public_key].endpoint == f"[{c.node.address}]:{PORT}"
    assert not a.node.ping(b.overlay, count=1, timeout=2)
    answer[0] = b.node.address  # the member's address changed

    def followed() -> bool:
        a.rec.check()
        return a.backend.read(a.name).peers[b.public_key].endpoint == f"[{b.node.address}]:{PORT}"

    wait_until(followed, 10, what="the new address in WireGuard")
    wait_until(lambda: a.node.ping(b.overlay), 15, what="A->B at its new address")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_wireguard_go_outlives_the_daemon_that_started_it_and_is_adopted(
    testbed: Testbed,
) -> None:
    """What ``KillMode=process`` in packaging/systemd/smegd.service relies on: a
    daemon that exits without closing its backend (``Daemon.stop``) leaves its
    wireguard-go running (its log goes to /dev/null, not to the daemon's pipe,
    which is gone), and the next daemon's backend adopts it instead of starting
    another; removing the adopted interface ends it."""
    (node,) = testbed.add_nodes(1)
    sock_dir, name = os.path.join(node.tmpdir, "wg"), node.wg_name()
    script = (
        "import os\n"
        "from smegmesh.wg.userspace import UserspaceBackend\n"
        f"b = UserspaceBackend(socket_dir={sock_dir!r}, netns={node.ns!r})\n"
        f"b.ensure_interface({name!r})\n"
        f"print(b.pid({name!r}), flush=True)\n"
        "os._exit(0)\n"  # as smegd exits: no close()
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout)
    backend = UserspaceBackend(socket_dir=sock_dir, netns=node.ns)
    try:
        assert _running(pid)  # its daemon exited; it did not
        assert backend.ensure_interface(name) is False  # adopted, not started anew
        assert backend.pid(name) is None and backend.read(name).name == name
        assert backend.check(name) is False
        assert _running(pid)  # still, after being adopted and checked
    finally:
        backend.remove_interface(name)
    wait_until(lambda: not _running(pid), 10, what="the adopted wireguard-go to exit")
