"""Issue 4: ``baseConfiguration.ipDiscovery`` end to end: real ``smegd`` + wireguard-go, netns.

No daemon here has ``publicEndpoint``; each finds the address it advertises
(the host of its record's WireGuard and control endpoints) itself:

* **A**, ``ipDiscovery: outgoing``, creates the mesh. The test bed's plain
  nodes have no default route (only the on-link /64), so the test gives A one
  (via the NAT router's public address) and a *decoy* global address on ``lo``
  (``lo`` is listed first, so the no-default-route fallback would pick the
  decoy): A's endpoint host, read on another node with ``smegctl get-mesh
  --json``, must be its ``eth0`` underlay address, the source of the default
  route.
* **C**, ``ipDiscovery: outgoing``, as the test bed leaves it: no default route.
  The daemon then advertises the first global address of the namespace
  (``outgoing_address`` in src/smegmesh/net/discovery.py), i.e. its underlay
  address; it joins with a token.
* **N**, ``ipDiscovery: public``, is a *peer behind the test bed's NAT66 router*
  (masquerade to the router's public address). The test adds port forwards on
  the router (TCP control port and N's UDP WireGuard port -> N), as a server
  behind a home router would have. N joins with a token; during the join it
  asks the bootstrap member (A) which address its calls come from (WhoAmI /
  YouAre). A sees the router's address, so N's endpoint in the mesh must be
  the router's public address, not N's private one.

Then every ordered pair of A, C, N pings over the overlay: the discovered
endpoints carry control traffic (gossip, liveness) and WireGuard traffic, also
through the NAT in both directions.

Timings: heartbeatInterval 2 s, syncInterval 1 s, pullInterval 5 s.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from envcheck import missing
from smegmesh.core.endpoint import split_host_port
from smegmesh.testbed.cluster import GRPC_PORT, Cluster, CtlError, Daemon, Timings
from smegmesh.testbed.netns import Node, Testbed, environment_problem, wait_until

pytestmark = pytest.mark.netns

TIMINGS = Timings(sync_interval=1, heartbeat_interval=2, pull_interval=5, timeout=2)
DEADLINE_S = 30.0
#: WireGuard listen port of the NATed peer (forwarded by the router)
NAT_WG_PORT = 51820
#: a global address nobody can reach, on A's ``lo`` (listed before ``eth0``)
DECOY = "2001:db8:ffff::d"


# ----------------------------------------------------------------------------- helpers


def _host(endpoint: str | None) -> str | None:
    return None if not endpoint else split_host_port(endpoint, default_port=0)[0]


def _discovering(d: Daemon, how: str) -> Daemon:
    """Rewrite ``d``'s config: no ``publicEndpoint``, ``ipDiscovery: how``."""
    d.edit_config(base={"publicEndpoint": None, "ipDiscovery": how})
    return d


def _nat_peer(cluster: Cluster, name: str) -> Daemon:
    """A *peer* daemon on a node behind the NAT66 router (Cluster.add NATs only clients)."""
    node = cluster.bed.add_node(nat=True)
    d = Daemon(node, "peer", cluster.timings, name=name)
    cluster.daemons.append(d)
    return d


def _router_public(bed: Testbed) -> str:
    return f"2001:db8:{bed.bed:x}::fe"


def _forward_ports(bed: Testbed, to: Node) -> None:
    """Port forwards on the router: TCP control port and UDP WireGuard port -> ``to``."""
    ruleset = (
        "table ip6 ipdfwd {\n"
        " chain pre {\n"
        "  type nat hook prerouting priority dstnat; policy accept;\n"
        f'  iifname "eth0" tcp dport {GRPC_PORT} dnat to {to.address}\n'
        f'  iifname "eth0" udp dport {NAT_WG_PORT} dnat to {to.address}\n'
        " }\n"
        "}\n"
    )
    proc = subprocess.run(
        ["ip", "netns", "exec", bed.router_ns, "nft", "-f", "-"],
        input=ruleset,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, f"nft port forwards: {proc.stderr.strip()}"


def _default_routes(node: Node) -> list[str]:
    out = node.run(["ip", "-6", "route", "show", "default"]).stdout
    return [line for line in out.splitlines() if line.strip()]


def _join(cluster: Cluster, d: Daemon, token: str, *args: str) -> str:
    """``join-mesh``, retried when the bootstrap member did not answer in time (loaded CI)."""
    for attempt in range(3):
        try:
            return cluster.join(d, token, *args)
        except CtlError as e:
            if attempt == 2 or "could be reached" not in e.stderr:
                raise
            sys.stderr.write(f"{d.name}: join-mesh retried: {e.stderr.strip()[:200]}\n")
    raise AssertionError("unreachable")


def _record(viewer: Daemon, mesh_id: str, key: str) -> dict[str, Any] | None:
    """``key``'s record as ``viewer``'s ``smegctl get-mesh --json`` shows it."""
    got = viewer.ctl("get-mesh", "--meshid", mesh_id, check=False)
    if not isinstance(got, dict):
        return None
    return next((n for n in got.get("nodes", []) if n["public_key"] == key), None)


def _fail(cluster: Cluster, msg: str) -> None:
    with cluster.logs_on_failure():
        pytest.fail(msg)


# ----------------------------------------------------------------------------- fixture


@dataclass
class World:
    bed: Testbed
    cluster: Cluster
    mesh_id: str
    a: Daemon  # outgoing, default route + decoy; creates the mesh
    c: Daemon  # outgoing, no default route
    n: Daemon  # public, behind the NAT router with port forwards
    keys: dict[str, str]
    a_routes_before: list[str]
    c_routes: list[str]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    problem = environment_problem()
    if problem is not None:
        missing(problem)
    with Testbed() as bed, Cluster(bed, TIMINGS) as cluster, cluster.logs_on_failure():
        a = _discovering(cluster.add("peer", start=False), "outgoing")
        a.name = "A"
        c = _discovering(cluster.add("peer", start=False), "outgoing")
        c.name = "C"
        n = _discovering(_nat_peer(cluster, "N"), "public")
        _forward_ports(bed, n.node)  # the router exists now (N is behind it)

        a_routes_before = _default_routes(a.node)
        a.node.run(["ip", "-6", "addr", "add", f"{DECOY}/128", "dev", "lo"])
        a.node.run(
            ["ip", "-6", "route", "add", "default", "via", _router_public(bed), "dev", "eth0"]
        )
        c_routes = _default_routes(c.node)

        cluster.start(a, c, n)

        mesh_id = cluster.new_mesh(a)
        token = cluster.invite(a, mesh_id, uses=6)  # 2 joiners + retries
        cluster.map(
            lambda jd: _join(cluster, *jd),
            [(c, token), (n, token, "--wgport", str(NAT_WG_PORT))],
        )
        keys = cluster.keys(mesh_id, [a, c, n])
        yield World(bed, cluster, mesh_id, a, c, n, keys, a_routes_before, c_routes)


def _wait_endpoint(w: World, viewer: Daemon, subject: Daemon, expect: str) -> dict[str, Any]:
    """``subject``'s record on ``viewer`` (get-mesh --json) with both endpoint hosts ``expect``."""
    last: list[dict[str, Any] | None] = [None]

    def ok() -> bool:
        rec = _record(viewer, w.mesh_id, w.keys[subject.name])
        last[0] = rec
        return (
            rec is not None
            and _host(rec.get("wg_endpoint")) == expect
            and _host(rec.get("control_endpoint")) == expect
        )

    try:
        wait_until(
            ok, timeout=DEADLINE_S, interval=0.3, what=f"{subject.name}'s endpoint on {viewer.name}"
        )
    except TimeoutError as e:
        _fail(w.cluster, f"{e}: expected host {expect}, last record: {last[0]}")
    assert last[0] is not None
    return last[0]


# ----------------------------------------------------------------------------- tests


def test_testbed_peers_have_no_default_route(world: World) -> None:
    """The situation the other tests start from: plain test-bed peers have no default route."""
    assert world.a_routes_before == []
    assert world.c_routes == []
    # N is behind the router, whose address is its default gateway.
    assert any("via" in r for r in _default_routes(world.n.node))


def test_outgoing_is_source_of_default_route(world: World) -> None:
    """A (creator): endpoint = eth0 underlay address, the default route's source, not the decoy."""
    a = world.a
    rec = _wait_endpoint(world, world.c, a, a.node.address)
    assert _host(rec["wg_endpoint"]) != DECOY
    # the same from the other joiner's point of view
    _wait_endpoint(world, world.n, a, a.node.address)


def test_outgoing_without_default_route_uses_global_address(world: World) -> None:
    """C: no default route in its namespace -> its (only) global address, the underlay one."""
    c = world.c
    _wait_endpoint(world, world.a, c, c.node.address)
    _wait_endpoint(world, world.n, c, c.node.address)


def test_public_is_address_bootstrap_member_sees(world: World) -> None:
    """N behind NAT: A (the bootstrap member) sees the router's address; that is N's endpoint."""
    n, seen = world.n, _router_public(world.bed)
    assert n.node.address != seen
    rec = _wait_endpoint(world, world.a, n, seen)
    assert rec["wg_endpoint"] == f"[{seen}]:{NAT_WG_PORT}"
    _wait_endpoint(world, world.c, n, seen)
    assert f"sees us as {seen}" in n.log_text(), n.log_tail()


def test_discovered_endpoints_carry_traffic(world: World) -> None:
    """Every ordered pair of A, C, N pings over the overlay (through the NAT both ways)."""
    members = [world.a, world.c, world.n]
    t0 = time.monotonic()
    try:
        world.cluster.wait_full_connectivity(world.mesh_id, members, timeout=DEADLINE_S)
    except TimeoutError as e:
        _fail(world.cluster, str(e))
    sys.stderr.write(f"full overlay connectivity after {time.monotonic() - t0:.1f}s\n")
    # wireguard-go on A sends to the discovered (router) endpoint of N
    st = world.a.wg_show(world.mesh_id)
    assert st is not None
    hosts = {_host(str(p.endpoint)) for p in st.peers.values() if p.endpoint}
    assert _router_public(world.bed) in hosts, hosts
