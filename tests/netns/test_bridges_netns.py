"""Issue 8 acceptance: bridging meshes with real ``smegd`` daemons in namespaces.

Real daemons (``wgBackend: userspace``, wireguard-go), bridges configured with
``advertiseRoute: true``; meshes formed through the real CLI. Tests run in file
order; the first three share one growing topology::

    chain:  A (m1) — B12 (m1, m2) — X (m2) — B23 (m2, m3) — C (m3)
    ring:   the chain plus B31 (m3, m1)

* one bridge: A <-> X ping, A's ``get-mesh --json`` shows m2's /64 via B12,
  path length 1;
* two bridges: A <-> C ping, path length 2 at both ends;
* ring: every node reaches the two other meshes at path length 1 (shortest),
  ``ping -6 -c 3`` succeeds without "Time exceeded"; then ``kill -9`` of B12
  (and its wireguard-go): m1 and m2 reach each other the long way round
  through m3 (length 2) within failure detection + 5 s;
* redundant bridges: two bridges between m1 and m2, 4 members on each side.
  Nodes split between the bridges; every cross pair pings both ways (the
  bridges masquerade, see docs/ROUTING.md); ``kill -9`` of one bridge (and its
  wireguard-go: a dead machine) moves every route to the other within
  failure detection + 5 s and the pings work again.

Timings: heartbeatInterval 2 s, syncInterval 1 s, pullInterval 5 s.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from smegmesh.core.addressing import mesh_prefix
from smegmesh.testbed.cluster import Cluster, CtlError, Daemon, Timings
from smegmesh.testbed.netns import Testbed, wait_until

pytestmark = pytest.mark.netns

TIMINGS = Timings(sync_interval=1, heartbeat_interval=2, pull_interval=5, timeout=2)
#: failure detection (suspicion + probes + gossip of the prune), as in test_e2e_netns
DETECT_S = 3 * TIMINGS.heartbeat_interval
ROUTE_MOVE_BOUND_S = DETECT_S + 5


# ----------------------------------------------------------------------------- helpers


def _pfx(mesh_id: str) -> str:
    return str(mesh_prefix(mesh_id))


def _daemons(cluster: Cluster, names: Sequence[str], bridges: set[str]) -> dict[str, Daemon]:
    """Peers named ``names``, those in ``bridges`` with ``advertiseRoute: true``; parallel start."""
    out = dict(zip(names, cluster.add_named(" ".join(names)), strict=True))
    for name in bridges:
        out[name].edit_config(base={"advertiseRoute": True})
    cluster.start(*out.values())
    return out


def _routes_to(d: Daemon, meshes: Sequence[str], dest: str) -> list[tuple[str, dict[str, Any]]]:
    """Every (mesh, route) ``d`` uses towards ``dest`` (exactly one when converged)."""
    out = []
    for m in meshes:
        r = d.route(m, dest)
        if r is not None:
            out.append((m, r))
    return out


def _ping(src: Daemon, address: str, count: int = 1) -> tuple[bool, str]:
    proc = src.node.run(
        ["ping", "-6", "-n", "-c", str(count), "-i", "0.2", "-W", "1", address],
        check=False,
        timeout=count + 10,
    )
    return proc.returncode == 0, proc.stdout + proc.stderr


def _wait_pings(
    cluster: Cluster, pairs: Sequence[tuple[Daemon, str]], timeout: float, what: str
) -> None:
    """Retry the failing (source, address) pings until all answer."""
    todo = list(pairs)

    def step() -> bool:
        nonlocal todo
        ok = cluster.map(lambda p: _ping(p[0], p[1])[0], todo)
        todo = [p for p, good in zip(todo, ok, strict=True) if not good]
        return not todo

    try:
        wait_until(step, timeout=timeout, interval=0.2, what=what)
    except TimeoutError as e:
        missing = ", ".join(f"{s.name}->{a}" for s, a in todo)
        _fail(cluster, f"{e}; no answer: {missing}")


def _fail(cluster: Cluster, msg: str) -> None:
    with cluster.logs_on_failure():
        pytest.fail(msg)


def _join(cluster: Cluster, d: Daemon, token: str) -> None:
    """``join-mesh``, retried when the bootstrap member did not answer in time (loaded CI)."""
    for attempt in range(3):
        try:
            cluster.join(d, token)
            return
        except CtlError as e:
            if attempt == 2 or "could be reached" not in e.stderr:
                raise
            sys.stderr.write(f"{d.name}: join-mesh retried: {e.stderr.strip()[:200]}\n")


def _form(cluster: Cluster, members: Sequence[Daemon]) -> str:
    """The first member creates a mesh and invites the others (one token), who join."""
    first, others = members[0], list(members[1:])
    mesh_id = cluster.new_mesh(first)
    token = cluster.invite(first, mesh_id, uses=len(others) + 2)  # + retries
    cluster.map(lambda d: _join(cluster, d, token), others)
    return mesh_id


# ----------------------------------------------------------------------------- fixtures


@dataclass
class Topo:
    cluster: Cluster
    d: dict[str, Daemon]
    m1: str
    m2: str
    m3: str
    keys: dict[str, str]

    def addr(self, name: str, mesh_id: str) -> str:
        a = self.d[name].overlay_address(mesh_id)
        assert a is not None, (name, mesh_id)
        return a


@pytest.fixture(scope="module")
def chain(bed: Testbed) -> Iterator[Topo]:
    with Cluster(bed, TIMINGS) as cluster, cluster.logs_on_failure():
        d = _daemons(cluster, ["A", "B12", "X", "B23", "C", "B31"], {"B12", "B23", "B31"})
        m1, m2, m3 = cluster.map(
            lambda ms: _form(cluster, [d[n] for n in ms]),
            [["A", "B12"], ["X", "B12", "B23"], ["C", "B23"]],
        )
        keys = {n: str(dm.public_key()) for n, dm in d.items() if n != "B31"}
        yield Topo(cluster, d, m1, m2, m3, keys)


# ----------------------------------------------------------------------------- chain / ring


def test_one_bridge(chain: Topo) -> None:
    t, c = chain, chain.cluster
    a, x = t.d["A"], t.d["X"]

    def routed() -> bool:
        ra = a.route(t.m1, _pfx(t.m2))
        rx = x.route(t.m2, _pfx(t.m1))
        return bool(ra and ra["gateway"] == t.keys["B12"] and rx and rx["gateway"] == t.keys["B12"])

    took = c.wait_for(routed, 30, "A and X route through B12")

    # B12 masquerades between its two overlay interfaces; A (one mesh) does not.
    # The table is installed by B12's apply loop, which may run after its route
    # advert has already reached A and X, so wait for it too.
    def nat_rules() -> str:
        proc = t.d["B12"].node.run(["nft", "list", "table", "ip6", "smegmesh"], check=False)
        return proc.stdout if proc.returncode == 0 else ""

    c.wait_for(lambda: nat_rules().count("masquerade") == 2, 15, "B12's masquerade table")
    # A, a peer, has the table too, for its forwarding guard only (docs/ROUTING.md)
    a_table = a.node.run(["nft", "list", "table", "ip6", "smegmesh"]).stdout
    assert "masquerade" not in a_table and "chain mesh-forward" in a_table
    # The real CLI: A's get-mesh --json shows m2's /64 via B12, path length 1.
    detail = a.ctl("get-mesh", "--meshid", t.m1)
    (r,) = [r for r in detail["routes"] if r["destination"] == _pfx(t.m2)]
    assert r["gateway"] == t.keys["B12"]
    assert r["path"] == [t.m2] and r["path_length"] == 1
    _wait_pings(c, [(a, t.addr("X", t.m2)), (x, t.addr("A", t.m1))], 30, "A <-> X across B12")
    sys.stderr.write(f"\none bridge: routes after {took:.1f}s\n")


def test_chain_of_three_meshes(chain: Topo) -> None:
    t, c = chain, chain.cluster
    a, cc = t.d["A"], t.d["C"]

    def routed() -> bool:
        ra = a.route(t.m1, _pfx(t.m3))
        rc = cc.route(t.m3, _pfx(t.m1))
        return bool(
            ra
            and ra["path_length"] == 2
            and rc
            and rc["path_length"] == 2
            and ra["gateway"] == t.keys["B12"]
            and rc["gateway"] == t.keys["B23"]
        )

    c.wait_for(routed, 30, "A and C route at length 2")
    detail = cc.ctl("get-mesh", "--meshid", t.m3)
    (r,) = [r for r in detail["routes"] if r["destination"] == _pfx(t.m1)]
    assert r["path"] == [t.m2, t.m1] and r["path_length"] == 2
    _wait_pings(
        c, [(a, t.addr("C", t.m3)), (cc, t.addr("A", t.m1))], 30, "A <-> C across two bridges"
    )


def test_client_reaches_across_a_bridge(chain: Topo) -> None:
    """A client behind NAT in m2 reaches A in m1 through its assigned peer and B12.

    The client has one WireGuard peer (its assigned peer in m2); routed prefixes
    go to that peer, which forwards them (to B12, or itself is B12); A's replies
    come back through B12 and the client's peer.
    """
    t, c = chain, chain.cluster
    a = t.d["A"]
    cl = c.add("client")
    _join(c, cl, c.invite(t.d["X"], t.m2))
    cl_addr = cl.overlay_address(t.m2)
    assert cl_addr is not None

    def one_peer() -> bool:  # any other entry would be a direct session with a client (/128)
        st = cl.wg_show(t.m2)
        wide = (
            [p for p in st.peers.values() if any(not a.endswith("/128") for a in p.allowed_ips)]
            if st
            else []
        )
        return len(wide) == 1

    c.wait_for(one_peer, 30, "the client's one WireGuard peer (its assigned peer)")
    _wait_pings(c, [(cl, t.addr("A", t.m1)), (a, cl_addr)], 40, "client in m2 <-> A in m1")


def test_ring_shortest_paths_no_loop(chain: Topo) -> None:
    t, c = chain, chain.cluster
    b31 = t.d["B31"]
    # Close the ring: B31 joins m3 (invited by C) and m1 (invited by A).
    _join(c, b31, c.invite(t.d["C"], t.m3))
    _join(c, b31, c.invite(t.d["A"], t.m1))
    t.keys["B31"] = str(b31.public_key())
    meshes = {t.m1, t.m2, t.m3}
    member_of = {
        "A": {t.m1},
        "X": {t.m2},
        "C": {t.m3},
        "B12": {t.m1, t.m2},
        "B23": {t.m2, t.m3},
        "B31": {t.m3, t.m1},
    }
    bad: list[str] = []

    def shortest_everywhere() -> bool:
        bad.clear()
        for name, mine in member_of.items():
            for far in meshes - mine:
                got = _routes_to(t.d[name], sorted(mine), _pfx(far))
                if len(got) != 1 or got[0][1]["path_length"] != 1 or got[0][1]["path"] != [far]:
                    bad.append(f"{name}->{far[:12]}: {got}")
        return not bad

    try:
        wait_until(shortest_everywhere, timeout=30, interval=0.2, what="ring: length 1 everywhere")
    except TimeoutError as e:
        _fail(c, f"{e}: {bad}")
    # The direct bridge is the one chosen where there is only one at length 1.
    assert t.d["A"].route(t.m1, _pfx(t.m3))["gateway"] == t.keys["B31"]  # type: ignore[index]
    assert t.d["C"].route(t.m3, _pfx(t.m1))["gateway"] == t.keys["B31"]  # type: ignore[index]
    pairs = [
        (t.d["A"], t.addr("C", t.m3)),
        (t.d["C"], t.addr("A", t.m1)),
        (t.d["A"], t.addr("X", t.m2)),
        (t.d["X"], t.addr("C", t.m3)),
        (t.d["C"], t.addr("X", t.m2)),
        (t.d["X"], t.addr("A", t.m1)),
    ]
    _wait_pings(c, pairs, 30, "ring connectivity")
    # Three pings each, no loop: every one answered, no "Time exceeded".
    results = c.map(lambda p: _ping(p[0], p[1], count=3), pairs)
    for (src, addr), (ok, out) in zip(pairs, results, strict=True):
        assert ok, f"{src.name} -> {addr}:\n{out}"
        assert "Time exceeded" not in out and "Hop limit" not in out, out
        assert " 0% packet loss" in out, out


def test_ring_bridge_dies_long_way_round(chain: Topo) -> None:
    """B12 dies: m1 and m2 reach each other through m3 (length 2, masqueraded twice)."""
    t, c = chain, chain.cluster
    a, x = t.d["A"], t.d["X"]
    b12 = t.d["B12"]
    b12.kill()
    b12.kill_wireguard()
    t0 = time.monotonic()

    def rerouted() -> bool:
        ra = a.route(t.m1, _pfx(t.m2))
        rx = x.route(t.m2, _pfx(t.m1))
        return bool(
            ra
            and ra["gateway"] == t.keys["B31"]
            and ra["path"] == [t.m3, t.m2]
            and rx
            and rx["gateway"] == t.keys["B23"]
            and rx["path"] == [t.m3, t.m1]
        )

    c.wait_for(rerouted, ROUTE_MOVE_BOUND_S + 15, "A and X route the long way round")
    move_s = time.monotonic() - t0
    _wait_pings(c, [(a, t.addr("X", t.m2)), (x, t.addr("A", t.m1))], 20, "A <-> X via m3")
    sys.stderr.write(
        f"ring: B12 killed, routes via m3 after {move_s:.1f}s, "
        f"pings after {time.monotonic() - t0:.1f}s\n"
    )
    assert move_s <= ROUTE_MOVE_BOUND_S, f"routes moved after {move_s:.1f}s"
    ok, out = _ping(a, t.addr("X", t.m2), count=3)
    assert ok and "Time exceeded" not in out, out


# ----------------------------------------------------------------------------- redundant bridges


@dataclass
class Pair:
    cluster: Cluster
    d: dict[str, Daemon]
    m1: str
    m2: str
    keys: dict[str, str]
    left: list[str]  # members of m1 only
    right: list[str]  # members of m2 only


def _choices(p: Pair) -> dict[str, str | None]:
    """member -> public key of the bridge it uses towards the other mesh."""
    out: dict[str, str | None] = {}
    for names, own, far in ((p.left, p.m1, p.m2), (p.right, p.m2, p.m1)):
        for n in names:
            r = p.d[n].route(own, _pfx(far))
            out[n] = r["gateway"] if r is not None else None
    return out


def _form_pair(cluster: Cluster, d: dict[str, Daemon], left: list[str], right: list[str]) -> Any:
    bridges = [d["BA"], d["BB"]]
    return cluster.map(
        lambda ms: _form(cluster, ms),
        [bridges + [d[n] for n in left], bridges[::-1] + [d[n] for n in right]],
    )


def _reform(p: Pair) -> None:
    """Everybody leaves both meshes and forms two new ones (new ids: new hashing)."""
    todo = [(n, p.m1) for n in ["BA", "BB", *p.left]] + [(n, p.m2) for n in ["BA", "BB", *p.right]]
    p.cluster.map(lambda nm: p.d[nm[0]].ctl("leave-mesh", "--meshid", nm[1], "--force"), todo)
    p.m1, p.m2 = _form_pair(p.cluster, p.d, p.left, p.right)


@pytest.fixture(scope="module")
def pair(bed: Testbed) -> Iterator[Pair]:
    left = [f"L{i}" for i in range(4)]
    right = [f"R{i}" for i in range(4)]
    with Cluster(bed, TIMINGS) as cluster, cluster.logs_on_failure():
        d = _daemons(cluster, ["BA", "BB", *left, *right], {"BA", "BB"})
        m1, m2 = _form_pair(cluster, d, left, right)
        keys = {n: str(dm.public_key()) for n, dm in d.items()}
        yield Pair(cluster, d, m1, m2, keys, left, right)


def test_redundant_bridges_split_then_failover(pair: Pair) -> None:
    p, c = pair, pair.cluster
    bridge_keys = {p.keys["BA"], p.keys["BB"]}
    members = [*p.left, *p.right]

    def converged() -> bool:
        # Every member routes through a bridge *and* has heard the other bridge's
        # advert (listed as the alternative): before that a member may pick the
        # only bridge it knows and switch later, and get-mesh (below) would not
        # list the alternative yet.
        for names, own, far in ((p.left, p.m1, p.m2), (p.right, p.m2, p.m1)):
            for n in names:
                r = p.d[n].route(own, _pfx(far))
                if r is None or r["gateway"] not in bridge_keys:
                    return False
                if set(r["alternatives"]) != bridge_keys - {r["gateway"]}:
                    return False
        return True

    # Rendezvous hashing of each member's rank key over (bridge key + mesh id): the
    # chance that all 8 members pick the same bridge is 1/128; then form two
    # new meshes (new ids, new hashing) rather than skip.
    for attempt in range(4):
        took = c.wait_for(converged, 40, "every member routes through a bridge, knowing both")
        chosen = _choices(p)
        by_bridge = {k: sorted(n for n in members if chosen[n] == k) for k in bridge_keys}
        sys.stderr.write(f"\nredundant bridges: routes after {took:.1f}s; split {by_bridge}\n")
        if all(by_bridge.values()):
            break
        assert attempt < 3, f"all members chose one bridge four times: {by_bridge}"
        _reform(p)
    # get-mesh lists the other bridge as an alternative at the same length.
    r = p.d[p.left[0]].ctl("get-mesh", "--meshid", p.m1)["routes"]
    (r0,) = [x for x in r if x["destination"] == _pfx(p.m2)]
    assert r0["path_length"] == 1 and len(r0["alternatives"]) == 1

    addrs = {n: p.d[n].overlay_address(p.m1 if n in p.left else p.m2) for n in members}
    cross = [(p.d[s], str(addrs[t])) for s in p.left for t in p.right]
    cross += [(p.d[s], str(addrs[t])) for s in p.right for t in p.left]
    before = {n: _overlay_rx_packets(p.d[n], (p.m1, p.m2)) for n in ("BA", "BB")}
    took = _wait_pings_timed(c, cross, 40, "all cross-mesh pairs (both bridges in use)")
    sys.stderr.write(f"redundant bridges: {len(cross)} cross pings ok after {took:.1f}s\n")
    # Both bridges carried some of that traffic: each forwarded at least the
    # echo requests of the members that chose it (one per target across).
    for n in ("BA", "BB"):
        users = len(by_bridge[p.keys[n]])
        got = _overlay_rx_packets(p.d[n], (p.m1, p.m2)) - before[n]
        assert got >= users * 4, f"{n} received {got} overlay packets, {users} members use it"

    # Kill the bridge most members use: the daemon (kill -9) and its wireguard-go.
    victim_key = max(bridge_keys, key=lambda k: len(by_bridge[k]))
    victim = next(p.d[n] for n in ("BA", "BB") if p.keys[n] == victim_key)
    survivor_key = next(iter(bridge_keys - {victim_key}))
    victim.kill()
    victim.kill_wireguard()
    t0 = time.monotonic()

    def moved() -> bool:
        ch = _choices(p)
        return all(ch[n] == survivor_key for n in members)

    try:
        wait_until(moved, timeout=ROUTE_MOVE_BOUND_S + 15, interval=0.2, what="routes moved")
    except TimeoutError as e:
        _fail(c, f"{e}: {_choices(p)}")
    move_s = time.monotonic() - t0
    _wait_pings(c, cross, 20, "cross-mesh pings after failover")
    ping_s = time.monotonic() - t0
    sys.stderr.write(
        f"redundant bridges: routes moved {move_s:.1f}s after kill -9 "
        f"(bound {ROUTE_MOVE_BOUND_S:g}s), pings ok after {ping_s:.1f}s\n"
    )
    assert move_s <= ROUTE_MOVE_BOUND_S, f"routes moved after {move_s:.1f}s"


def _overlay_rx_packets(d: Daemon, meshes: Sequence[str]) -> int:
    """Packets received on ``d``'s overlay interfaces of ``meshes`` (kernel counters)."""
    import json

    total = 0
    for mesh_id in meshes:
        st = d.wg_show(mesh_id)
        assert st is not None, (d.name, mesh_id)
        out = d.node.run(["ip", "-j", "-s", "link", "show", "dev", st.name]).stdout
        total += int(json.loads(out)[0]["stats64"]["rx"]["packets"])
    return total


def _wait_pings_timed(
    cluster: Cluster, pairs: Sequence[tuple[Daemon, str]], timeout: float, what: str
) -> float:
    t0 = time.monotonic()
    _wait_pings(cluster, pairs, timeout, what)
    return time.monotonic() - t0


def test_masquerade_can_be_turned_off(pair: Pair) -> None:
    """``bridgeMasquerade: false`` on the only bridge between two meshes.

    Runs after the failover test, which leaves one bridge alive (if it stopped
    early, one bridge is killed here). Restarted with the switch off, the bridge
    removes its nftables table, and cross-mesh traffic still flows: with one
    bridge the replies come back through it without translation.
    """
    p, c = pair, pair.cluster
    alive = [n for n in ("BA", "BB") if p.d[n].alive()]
    assert alive, "both bridges are down"
    bridge = p.d[alive[0]]
    for n in alive[1:]:
        p.d[n].kill()
        p.d[n].kill_wireguard()
    members = [*p.left, *p.right]
    c.wait_for(
        lambda: all(ch == p.keys[bridge.name] for ch in _choices(p).values()),
        ROUTE_MOVE_BOUND_S + 15,
        f"every member routes through {bridge.name}",
    )

    def nat_table() -> bool:
        proc = bridge.node.run(["nft", "list", "table", "ip6", "smegmesh"], check=False)
        return proc.returncode == 0 and "masquerade" in proc.stdout

    c.wait_for(nat_table, 15, f"{bridge.name}'s masquerade table (the default)")
    bridge.edit_config(bridgeMasquerade=False)
    bridge.restart(timeout=60)
    c.wait_for(lambda: not nat_table(), 15, f"{bridge.name}'s masquerade table removed")
    assert "bridgeMasquerade is off" in bridge.log_text()

    addrs = {n: p.d[n].overlay_address(p.m1 if n in p.left else p.m2) for n in members}
    cross = [(p.d[s], str(addrs[t])) for s in p.left for t in p.right]
    cross += [(p.d[s], str(addrs[t])) for s in p.right for t in p.left]
    _wait_pings(c, cross, 40, "cross-mesh pings through the bridge without masquerading")
    # ...and the destination sees the sender's own address, not the bridge's.
    src, dst = p.d[p.left[0]], p.d[p.right[0]]
    listener = dst.node.spawn(
        [sys.executable, "-c", _UDP_SOURCE_SCRIPT, str(addrs[dst.name])],
        stdout=subprocess.PIPE,
        text=True,
    )
    sender = [sys.executable, "-c", _UDP_SEND_SCRIPT, str(addrs[dst.name])]
    c.wait_for(
        lambda: src.node.run(sender, check=False) is not None and listener.poll() is not None,
        20,
        "a datagram across the bridge",
    )
    seen = (listener.stdout.read() if listener.stdout else "").strip()
    assert seen == str(addrs[src.name]), f"source {seen}, sender {addrs[src.name]}"


#: Print the source address of the first datagram to [ADDR]:9999, then exit.
_UDP_SOURCE_SCRIPT = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
s.settimeout(30)
print(s.recvfrom(64)[1][0], flush=True)
"""
_UDP_SEND_SCRIPT = """
import socket, sys
socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b"hi", (sys.argv[1], 9999))
"""


def test_default_route_through_an_exit(bed: Testbed) -> None:
    """``advertiseDefaults`` on an exit E, ``acceptDefaults`` on a member M.

    E also holds 2001:db8:ee::1 on its loopback, an address nothing else routes
    to: M reaches it only through its ``::/0`` over the overlay to E. A peer
    without ``acceptDefaults`` (N) gets no default route from the mesh.
    """
    with Cluster(bed, TIMINGS) as cluster, cluster.logs_on_failure():
        e, m, n = cluster.add_named("E M N")
        e.edit_config(base={"advertiseDefaults": True})
        m.edit_config(acceptDefaults=True)
        cluster.start(e, m, n)
        e.node.run(["ip", "-6", "addr", "add", "2001:db8:ee::1/128", "dev", "lo"])
        mesh_id = _form(cluster, [e, m, n])
        ekey = str(e.public_key())

        def m_uses_exit() -> bool:
            r = m.route(mesh_id, "::/0")
            return r is not None and r["gateway"] == ekey

        cluster.wait_for(m_uses_exit, 30, "M routes ::/0 through E")
        default = m.node.run(["ip", "-6", "route", "show", "default"]).stdout
        assert "smeg" in default, default
        _wait_pings(cluster, [(m, "2001:db8:ee::1")], 30, "M -> E's off-overlay address")
        assert n.route(mesh_id, "::/0") is None
        assert "smeg" not in n.node.run(["ip", "-6", "route", "show", "default"]).stdout
        assert not _ping(n, "2001:db8:ee::1")[0], "N has no route there"
