"""Issue 17: NAT traversal with real daemons and wireguard-go in namespaces.

Both underlays: IPv6 with NAT66 and IPv4 with NAT44 (the overlay is IPv6). One
topology per underlay carries every check (daemons start once), with short
attempt/backoff timers (``directAttempt``, ``directBackoff``) so that nothing
waits long:

* NAT66: 3 public peers and 6 clients behind 3 cone NATs (2 + 2 + 1 clients)
  and 1 symmetric NAT (``masquerade random``, 1 client); the clients keep the
  mesh's default WireGuard port, so two clients behind one NAT share it (the
  NAT gives it to one; the other moves to a port of its own). Every pair of
  cone-NAT clients goes direct (same-NAT pairs over their local endpoints), the
  symmetric NAT's client stays relayed with backed-off attempts, every ordered
  pair reaches the other; then one direction of a direct path breaks on a NAT
  router: traffic falls back to the relay within 5 s, loses packets only in
  that window, and goes direct again after the repair.
* NAT44: 2 public peers, 2 clients behind one NAT (same port) and 1 behind
  another: the same checks, plus the relays' counters do not grow during a
  ping run over a direct path.

(Routers: nftables masquerade with port preservation, endpoint-independent
mapping; like a home router they drop unsolicited inbound traffic. No netem on
this machine: the relayed path is one hop longer, not slower by a set delay.)
Figures (time to go direct, fallback, RTTs) are printed (run with ``-s``) and
recorded in docs/NAT.md.
"""

from __future__ import annotations

import base64
import contextlib
import time
from typing import Any

import pytest

from smegmesh.core.identity import key_to_text
from smegmesh.testbed.cluster import Cluster, Daemon, Timings
from smegmesh.testbed.netns import Testbed, wait_until

pytestmark = pytest.mark.netns

TIMINGS = Timings(sync_interval=1, heartbeat_interval=2, pull_interval=5, timeout=2)


def _key(d: Daemon, mesh_id: str) -> bytes:
    return base64.b64decode(d.get_mesh(mesh_id)["self_key"])  # type: ignore[index]


#: Short attempt and backoff in these tests (defaults: 15 s, 5 s).
DIRECT = {"directPeers": 8, "directAttempt": 5, "directBackoff": 1}
#: The goal of issue 17: back on the relay within 5 s of a break.
FALLBACK_S = 5.0
PING_INTERVAL_S = 0.2


def _direct(a: Daemon, b_key: bytes, b_addr: str, mesh_id: str) -> bool:
    st = a.wg_show(mesh_id)
    p = st.peers.get(b_key) if st is not None else None
    return p is not None and p.last_handshake is not None and f"{b_addr}/128" in p.allowed_ips


def _routed_direct(a: Daemon, b_key: bytes, b_addr: str, mesh_id: str) -> bool:
    st = a.wg_show(mesh_id)
    p = st.peers.get(b_key) if st is not None else None
    return p is not None and f"{b_addr}/128" in p.allowed_ips


def _member(d: Daemon, address: str) -> dict[str, Any]:
    """What ``smegctl status`` shows for the member at ``address``."""
    st = d.api("GET", "/v1/status")
    assert isinstance(st, dict)
    for m in st["meshes"]:
        for mem in m["members"]:
            if mem["overlay_address"] == address:
                return dict(mem)
    return {"path": {"kind": "missing"}}


def _path(d: Daemon, address: str) -> str:
    return str(_member(d, address)["path"]["kind"])


def _rtt(d: Daemon, address: str, count: int = 10) -> float | None:
    """Average RTT (ms) of a quick ping run (0.1 s apart)."""
    proc = d.node.run(
        ["ping", "-6", "-n", "-q", "-c", str(count), "-i", "0.1", "-W", "1", address],
        check=False,
        timeout=count + 10,
    )
    for line in proc.stdout.splitlines():
        if "min/avg/max" in line:
            return float(line.split("=")[1].split("/")[1])
    return None


def _why_not_direct(
    clients: list[Daemon], keys: list[bytes], mesh_id: str, missing: list[tuple[int, int]]
) -> str:
    """For a failure message: what the clients of the pairs not direct saw and hold.

    Per client: its port moves, discoveries and events, its session lines about
    the partners it lacks (keys shown as client numbers), its view of the
    clients' records and its WireGuard entries.
    """
    names = {key_to_text(k)[:12]: f"client {j}" for j, k in enumerate(keys)}
    marks = ("moving", "seen from outside", "endpoint discovery", "pruned", "came back")
    out = []
    for i in sorted({i for pair in missing for i in pair}):
        lacking = {names[key_to_text(keys[j])[:12]] for pair in missing for j in pair if j != i}
        for ln in clients[i].log_text().splitlines():
            for prefix, name in names.items():
                ln = ln.replace(prefix, name)
            if any(m in ln for m in marks) or (
                "direct session with" in ln
                and ln.split("direct session with ")[1].split(":")[0] in lacking
            ):
                when, _, text = ln.partition(" INFO ")
                text = text.split(f"mesh {mesh_id}: ", 1)[-1]
                out.append(f"client {i} {when[11:]}: {text}")
        with contextlib.suppress(Exception):  # its view of the clients' records
            for n in clients[i].get_mesh(mesh_id)["nodes"]:  # type: ignore[index]
                k = base64.b64decode(n["public_key"])
                if k in keys:
                    out.append(
                        f"client {i} sees client {keys.index(k)}: {n['status']} "
                        f"v{n['record_version']} nat {n['nat_endpoint']} "
                        f"via {str(n['assigned_peer'])[:8]}"
                    )
        with contextlib.suppress(Exception):
            st = clients[i].wg_show(mesh_id)
            for k, p in (st.peers if st is not None else {}).items():
                who = f"client {keys.index(k)}" if k in keys else k.hex()[:12]
                out.append(
                    f"client {i} wg: {who} endpoint {p.endpoint} "
                    f"handshake {p.last_handshake} rx {p.rx_bytes}"
                )
    return "\n".join(out[-400:])


def _clients(cluster: Cluster, nodes: list[Any]) -> list[Daemon]:
    out = []
    for node in nodes:
        d = Daemon(node, "client", cluster.timings)
        cluster.daemons.append(d)
        d.edit_config(**DIRECT)
        out.append(d)
    cluster.start(*out)
    return out


class PingLog:
    """A background ``ping -D`` from one client to another: when replies came."""

    def __init__(self, src: Daemon, address: str) -> None:
        import subprocess

        argv = ["ping", "-6", "-n", "-D", "-i", str(PING_INTERVAL_S), "-W", "1", address]
        self.proc = src.node.spawn(argv, stdout=subprocess.PIPE, text=True)

    def stop(self) -> list[tuple[float, int]]:
        """(unix time, icmp_seq) of every reply."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        got = []
        for line in out.splitlines():
            if line.startswith("[") and "icmp_seq=" in line:
                ts = float(line[1 : line.index("]")])
                seq = int(line.split("icmp_seq=")[1].split()[0])
                got.append((ts, seq))
        return got


def _fallback(replies: list[tuple[float, int]], broke: float) -> tuple[float, int]:
    """Seconds from the break to the first reply after the lost ones, and the seqs lost later."""
    ts = dict((s, t) for t, s in replies)
    seqs = sorted(ts)
    missing = [s for s in range(seqs[0], seqs[-1] + 1) if s not in ts]
    if not missing:
        return 0.0, 0
    back = min(s for s in seqs if s > missing[0])
    assert ts[back] > broke, "packets lost before the break"
    return ts[back] - broke, sum(1 for s in missing if s > back)


def _attempts(d: Daemon) -> dict[str, int]:
    """Direct session attempts per partner (key prefix) in the daemon's log."""
    out: dict[str, int] = {}
    for line in d.log_text().splitlines():
        if ": trying" in line and "direct session with " in line:
            k = line.split("direct session with ")[1].split(":")[0]
            out[k] = out.get(k, 0) + 1
    return out


def _max_attempts(elapsed: float, attempt: float, base: float) -> int:
    """Most attempts within ``elapsed`` s: each lasts ``attempt``, waits >= 0.5 x base x 2^i
    (the first retry slot at least half a period after the failure: ``retry_slot_ms``)."""
    n, t = 0, 0.0
    while t <= elapsed:
        t += attempt + 0.5 * base * 2 ** max(0, n - 1) * (1 if n else 0)
        n += 1
    return n + 1  # slack: a tick either side


#: A ping run over a direct path: 20 echoes of 1,200 B, ~54 KB both ways if
#: the relays carried them. The relays' WireGuard entries of the two clients
#: also carry their control plane (gossip with their peers): after the port
#: moves a ping window saw 1,184-2,144 B of it, over the 1,000 B this limit
#: was when the pings were 64 B (~6 KB relayed).
_PING_RUN = ["ping", "-6", "-n", "-q", "-c", "20", "-i", "0.05", "-s", "1200"]
RELAYED_LIMIT = 8_000


def _relay_bytes(peers: list[Daemon], keys: list[bytes], mesh_id: str) -> int:
    total = 0
    for p in peers:
        st = p.wg_show(mesh_id)
        assert st is not None
        for k in keys:
            if k in st.peers:
                total += st.peers[k].rx_bytes + st.peers[k].tx_bytes
    return total


def _nft(bed: Testbed, k: int, *args: str) -> Any:
    import subprocess

    return subprocess.run(
        ["ip", "netns", "exec", bed.nat_router(k), "nft", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _peers(cluster: Cluster, bed: Testbed, ipv4: bool) -> list[Daemon]:
    if not ipv4:
        return cluster.add_many(2, "peer")
    peers = [cluster.add("peer", start=False) for _ in range(2)]
    for p in peers:  # the underlay of the mesh is IPv4: peers publish an IPv4 endpoint
        p.edit_config(base={"publicEndpoint": bed.add_ipv4(p.node)})
        p.start()
    return peers


def _nat_port_kept(d: Daemon, mesh_id: str, key: bytes) -> tuple[int, int]:
    """(listen port, port of the published nat_endpoint) of client ``d``."""
    st = d.wg_show(mesh_id)
    assert st is not None
    nodes = d.get_mesh(mesh_id)["nodes"]  # type: ignore[index]
    nat = next(
        n["nat_endpoint"] for n in nodes if n["public_key"] == base64.b64encode(key).decode()
    )
    return st.listen_port, int(str(nat).rsplit(":", 1)[1])


def _break_and_recover(
    bed: Testbed,
    mesh_id: str,
    a: Daemon,
    b: Daemon,
    keys: tuple[bytes, bytes],
    addrs: tuple[str, str],
    b_router: int,
    a_public: str,
    ipv4: bool,
) -> tuple[float, float]:
    """Break one direction of a's and b's direct path (b's router drops everything
    from a's NAT), measure the fallback both ways, repair, wait for direct again."""
    ka, kb = keys
    aa, ab = addrs
    logs = [PingLog(a, ab), PingLog(b, aa)]
    wait_until(  # both pings running over the direct path
        lambda: a.ping(ab, count=1, timeout=1) and b.ping(aa, count=1, timeout=1),
        timeout=30,
        what="pings before the break",
    )
    _nft(bed, b_router, "insert", "rule", "inet", "smtnat", "forward",
         "ip" if ipv4 else "ip6", "saddr", a_public, "drop")  # fmt: skip
    broke = time.time()
    wait_until(
        lambda: not _routed_direct(a, kb, ab, mesh_id) and not _routed_direct(b, ka, aa, mesh_id),
        timeout=30,
        interval=0.2,
        what="both ends back on the relay",
    )
    assert _path(a, ab) == "peer" and _path(b, aa) == "peer"
    # keep pinging a little on the relay: no loss there
    time.sleep(1.0)  # a measurement window, not a wait for a condition
    results = [_fallback(log.stop(), broke) for log in logs]
    for fallback, lost_after in results:
        # the goal (5 s) plus one ping interval: the reply that shows it
        assert fallback <= FALLBACK_S + PING_INTERVAL_S, results
        assert lost_after == 0, results  # loss only in the fallback window
    # repaired: the direct path comes back (after the backoff)
    _nft(bed, b_router, "flush", "chain", "inet", "smtnat", "forward")
    _nft(bed, b_router, "add", "rule", "inet", "smtnat", "forward", "iifname", "eth1", "accept")
    _nft(bed, b_router, "add", "rule", "inet", "smtnat", "forward", "ct", "state",
         "established,related", "accept")  # fmt: skip
    repaired = time.monotonic()
    wait_until(
        lambda: _direct(a, kb, ab, mesh_id) and _direct(b, ka, aa, mesh_id),
        timeout=60,
        interval=0.2,
        what="direct again after the repair",
    )
    return max(r[0] for r in results), time.monotonic() - repaired


def test_nat66_six_clients_behind_four_nats(testbed: Testbed) -> None:
    """3 peers; 6 clients behind 3 cone NATs (2 + 2 + 1, default WireGuard port:
    shared behind one NAT) and 1 symmetric NAT (1). The closing note of issue 17."""
    bed = testbed
    with Cluster(bed, TIMINGS) as cluster:
        peers = cluster.add_many(3, "peer")
        nodes = [bed.add_node_behind_own_nat() for _ in range(3)]
        nodes[1:1] = [bed.add_node_behind_own_nat(behind=1)]
        nodes[3:3] = [bed.add_node_behind_own_nat(behind=2)]
        nodes.append(bed.add_node_behind_own_nat(random_ports=True))
        clients = _clients(cluster, nodes)  # routers: 1, 1, 2, 2, 3, 4 (symmetric)
        mesh_id, _ = cluster.form_mesh(peers)
        token = cluster.invite(peers[0], mesh_id, uses=len(clients))
        t0 = time.monotonic()
        cluster.map(lambda c: cluster.join(c, token), clients)  # all on the default port
        joined = time.monotonic()
        keys = [_key(c, mesh_id) for c in clients]
        addrs = [c.overlay_address(mesh_id) or "" for c in clients]
        pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
        cone = [(i, j) for i, j in pairs if j != 5]

        def direct(i: int, j: int) -> bool:
            return _direct(clients[i], keys[j], addrs[j], mesh_id) and _direct(
                clients[j], keys[i], addrs[i], mesh_id
            )

        try:
            wait_until(
                lambda: all(direct(i, j) for i, j in cone),
                timeout=120,
                interval=0.5,
                what="every pair of cone-NAT clients direct",
            )
        except TimeoutError as e:
            missing = [(i, j) for i, j in cone if not direct(i, j)]
            why = _why_not_direct(clients, keys, mesh_id, missing)
            raise AssertionError(f"{e}; not direct: {missing}\n{why}") from e
        t_direct = time.monotonic() - joined
        assert not any(direct(i, 5) for i in range(5))  # the symmetric NAT's client: relayed
        # two clients behind one NAT on one port: one or both moved to a port of its own,
        # and the NAT keeps every cone client's port (so others can reach it)
        ports = [_nat_port_kept(clients[i], mesh_id, keys[i]) for i in range(5)]
        assert all(listen == public for listen, public in ports), ports
        assert ports[0][0] != ports[1][0] and ports[2][0] != ports[3][0], ports
        # behind the same NAT the pair uses its local endpoints (no hairpin on the router)
        st = clients[0].wg_show(mesh_id)
        assert st is not None
        ep = st.peers[keys[1]].endpoint or ""
        assert ep.startswith(f"[{clients[1].node.address}]:"), ep
        # the relays carry nothing of a ping run between clients behind two NATs
        before = _relay_bytes(peers, [keys[0], keys[2]], mesh_id)
        assert clients[0].ping(addrs[2], count=1, timeout=2)
        assert clients[0].node.run([*_PING_RUN, addrs[2]]).returncode == 0
        relayed = _relay_bytes(peers, [keys[0], keys[2]], mesh_id) - before
        assert relayed < RELAYED_LIMIT, relayed
        # every ordered pair of clients reaches the other; the symmetric one relayed
        # (30 single pings at once on a loaded machine: a lost echo is retried,
        # up to three tries per pair; a pair that cannot reach the other fails all)
        ok = cluster.map(
            lambda ij: any(clients[ij[0]].ping(addrs[ij[1]], count=1, timeout=3) for _ in range(3)),
            [(i, j) for i in range(6) for j in range(6) if i != j],
        )
        assert all(ok)
        # status: the path and the measured round trip, direct and relayed
        wait_until(
            lambda: (
                _member(clients[0], addrs[2]).get("rtt_ms") is not None
                and _member(clients[0], addrs[5]).get("rtt_ms") is not None
            ),
            timeout=30,
            what="round trips measured",
        )
        m_direct, m_relayed = _member(clients[0], addrs[2]), _member(clients[0], addrs[5])
        assert m_direct["path"]["kind"] == "direct" and m_relayed["path"]["kind"] == "peer"
        view = clients[0].get_mesh(mesh_id)["nodes"]  # type: ignore[index]
        node5 = next(n for n in view if n["overlay_address"] == addrs[5])
        me = next(n for n in view if n["is_self"])  # relayed through our own assigned peer
        assert node5["path"]["kind"] == "peer" and node5["path"]["via"] == me["assigned_peer"]
        assert node5["rtt_ms"] is not None
        rtt = {
            kind: _rtt(clients[0], addrs[j], count=5)
            for kind, j in (("same NAT", 1), ("other NAT", 2), ("relayed", 5))
        }
        # one direction of a direct path breaks: router 3 (client 4) drops router 1's traffic
        fallback, back = _break_and_recover(
            bed, mesh_id, clients[0], clients[4], (keys[0], keys[4]), (addrs[0], addrs[4]),
            3, f"2001:db8:{bed.bed:x}::fe1", ipv4=False,
        )  # fmt: skip
        # the symmetric NAT's client never went direct, and its attempts backed off
        assert not any(direct(i, 5) for i in range(5))
        elapsed = time.monotonic() - joined
        tries = _attempts(clients[5])
        bound = _max_attempts(elapsed, DIRECT["directAttempt"], DIRECT["directBackoff"])
        assert tries and all(n <= bound for n in tries.values()), (tries, bound)
        print(
            f"\nNAT66, 3 peers, 6 clients, 3 cone + 1 symmetric NAT: {len(cone)}/{len(pairs)} "
            f"client pairs direct; join {joined - t0:.1f} s; all direct {t_direct:.1f} s after "
            f"the join; RTT ping from client 1: {rtt}; status RTT direct "
            f"{m_direct['rtt_ms']} ms, relayed {m_relayed['rtt_ms']} ms; fallback "
            f"{fallback:.1f} s; direct again {back:.1f} s after the repair; attempts of the "
            f"symmetric client per partner in {elapsed:.0f} s: {sorted(tries.values())} "
            f"(bound {bound})"
        )


def test_nat44_same_port_behind_one_nat_direct_fallback_recover(testbed: Testbed) -> None:
    """IPv4 underlay: 2 peers; clients 0 and 1 behind one NAT44 on the default
    port, client 2 behind another. All three pairs go direct; a break falls back."""
    bed = testbed
    with Cluster(bed, TIMINGS) as cluster:
        peers = [cluster.add("peer", start=False) for _ in range(2)]
        for p in peers:  # the underlay of the mesh is IPv4: peers publish an IPv4 endpoint
            p.edit_config(base={"publicEndpoint": bed.add_ipv4(p.node)})
            p.start(wait=False)
        nodes = [bed.add_node_behind_own_nat(ipv4=True)]
        nodes.append(bed.add_node_behind_own_nat(behind=1))
        nodes.append(bed.add_node_behind_own_nat(ipv4=True))
        clients = _clients(cluster, nodes)
        cluster.map(lambda p: p.wait_ready(60.0), peers)
        mesh_id, _ = cluster.form_mesh([*peers, *clients])
        joined = time.monotonic()
        keys = [_key(c, mesh_id) for c in clients]
        addrs = [c.overlay_address(mesh_id) or "" for c in clients]

        # the NAT: the relays see each client from its router's public IPv4 address
        def seen(k: bytes) -> set[str]:
            out = set()
            for p in peers:
                st = p.wg_show(mesh_id)
                if st is not None and k in st.peers and st.peers[k].endpoint:
                    out.add(str(st.peers[k].endpoint).rsplit(":", 1)[0])
            return out

        for k, router in zip(keys, (1, 1, 2), strict=True):
            wait_until(lambda k=k: bool(seen(k)), timeout=30, what="relay handshake")  # type: ignore[misc]
            assert seen(k) == {f"192.0.2.{200 + router}"}, seen(k)
        pairs = [(0, 1), (0, 2), (1, 2)]
        wait_until(
            lambda: all(
                _direct(clients[i], keys[j], addrs[j], mesh_id)
                and _direct(clients[j], keys[i], addrs[i], mesh_id)
                for i, j in pairs
            ),
            timeout=90,
            interval=0.2,
            what="all three client pairs direct",
        )
        t_direct = time.monotonic() - joined
        ports = [_nat_port_kept(clients[i], mesh_id, keys[i]) for i in range(3)]
        assert all(listen == public for listen, public in ports), ports
        assert ports[0][0] != ports[1][0], ports
        assert _path(clients[0], addrs[2]) == "direct"
        rtt_direct = _rtt(clients[0], addrs[2])
        # the relays carry nothing of a ping run over a direct path
        before = _relay_bytes(peers, [keys[0], keys[2]], mesh_id)
        assert clients[0].node.run([*_PING_RUN, addrs[2]]).returncode == 0
        relay_direct = _relay_bytes(peers, [keys[0], keys[2]], mesh_id) - before
        assert relay_direct < RELAYED_LIMIT, relay_direct
        # client 1 (same NAT, moved or not) also reaches client 2 directly, through the NAT
        assert _path(clients[1], addrs[2]) == "direct"
        fallback, back = _break_and_recover(
            bed, mesh_id, clients[0], clients[2], (keys[0], keys[2]), (addrs[0], addrs[2]),
            2, "192.0.2.201", ipv4=True,
        )  # fmt: skip
        print(
            f"\nNAT44, 2 clients behind one NAT (same port) + 1: all pairs direct "
            f"{t_direct:.1f} s after the join; RTT direct {rtt_direct} ms; relay bytes for "
            f"20 direct pings {relay_direct}; fallback {fallback:.1f} s; direct again "
            f"{back:.1f} s after the repair"
        )
