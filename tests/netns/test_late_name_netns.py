"""Endpoint names that resolve only late, with real daemons and wireguard-go.

B and C publish their endpoints as names (``publicEndpoint``) that neither
knows of the other at first: each namespace has its own ``/etc/hosts`` and
``/etc/resolv.conf`` (``/etc/netns/<ns>/``, which ``ip netns exec`` bind-mounts
over the real ones; glibc reads them at each lookup) with a nameserver on
its loopback where none listens, so a lookup fails at once. Both reach A
(an IP endpoint), which knows both names, so the mesh forms, and B and C
each configure the other without an endpoint. Then the names start to
resolve (the hosts files are rewritten in place, the same files the daemons
see): the resolver looks a failed name up again after 30 s, the health check
applies again every 5 s, so the endpoints are set within about 40 s of the
first failure (wg/resolver.py, wg/reconcile.py; 40.0 s measured). The whole
test takes about 52 s.

Peers send no keepalive and nothing crosses the overlay (gossip runs on the
underlay), so nothing but the daemon starts a handshake between B and C once
the endpoints are set: the nudge a peer gets when its endpoint arrives late
(``ApplyOps._nudge_new_peers``). Without it there is none until something
is sent over the tunnel (the test waits 8 s for it, then pings).

A client D whose only peer B publishes a late name keeps B: its tunnel watch
waits for the endpoint before it expects a handshake. About 56 s.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import time
from collections.abc import Iterator

import pytest

from smegmesh.testbed.cluster import Cluster, Timings
from smegmesh.testbed.daemon import Daemon
from smegmesh.testbed.netns import Testbed, wait_until

pytestmark = pytest.mark.netns

TIMINGS = Timings(sync_interval=1, heartbeat_interval=2, pull_interval=3, timeout=2)
NAMES = {"B": "b-late.smeg.test", "C": "c-late.smeg.test"}
#: a failed name is looked up again by the first health check 30 s after the
#: failure, its answer used by the next one (checks come 5 to 7 s apart: the
#: reconcile loop wakes at least every 2 s, a check when 5 s have passed), and
#: slack for a loaded machine (measured: 40.0 s after the first failure)
ENDPOINT_BOUND_S = 30 + 7 + 7 + 6


def _write_hosts(d: Daemon, names: dict[str, str]) -> None:
    """``d``'s namespace's hosts file, rewritten in place (the bind mount follows)."""
    lines = "".join(f"{addr} {name}\n" for name, addr in names.items())
    with open(f"/etc/netns/{d.node.ns}/hosts", "w") as f:
        f.write(f"127.0.0.1 localhost\n::1 localhost\n{lines}")


@contextlib.contextmanager
def _resolver_files(*daemons: Daemon) -> Iterator[None]:
    """A hosts file and a resolv.conf of their own for ``daemons``' namespaces
    (made before the daemons start: ``ip netns exec`` mounts them then)."""
    try:
        for d in daemons:
            os.makedirs(f"/etc/netns/{d.node.ns}", exist_ok=True)
            _write_hosts(d, {})
            with open(f"/etc/netns/{d.node.ns}/resolv.conf", "w") as f:
                f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        yield
    finally:
        for d in daemons:
            shutil.rmtree(f"/etc/netns/{d.node.ns}", ignore_errors=True)


@pytest.fixture
def cluster(testbed: Testbed) -> Iterator[Cluster]:
    with Cluster(testbed, TIMINGS) as c:
        yield c


def test_late_names_get_their_endpoints_and_a_handshake(cluster: Cluster) -> None:
    a, b, c = cluster.add_named("A B C")
    for d in (b, c):
        d.edit_config(base={"publicEndpoint": NAMES[d.name]})
    with _resolver_files(a, b, c), cluster.logs_on_failure():
        _write_hosts(a, {NAMES["B"]: b.node.address, NAMES["C"]: c.node.address})
        cluster.start(a, b, c)
        mesh_id = cluster.new_mesh(a)
        cluster.join(b, cluster.invite(a, mesh_id))
        cluster.join(c, cluster.invite(a, mesh_id))
        keys = {n: base64.b64decode(k) for n, k in cluster.keys(mesh_id, [a, b, c]).items()}

        def entry(at: Daemon, of: str) -> tuple[bool, str | None, bool]:
            """(there, endpoint, handshake made) of ``of``'s peer entry at ``at``."""
            st = at.wg_show(mesh_id)
            peer = st.peers.get(keys[of]) if st is not None else None
            if peer is None:
                return False, None, False
            return True, peer.endpoint, peer.last_handshake is not None

        # Configured without an endpoint: the names do not resolve yet.
        wait_until(lambda: entry(b, "C")[0] and entry(c, "B")[0], timeout=15, what="B-C entries")
        assert entry(b, "C") == (True, None, False) and entry(c, "B") == (True, None, False)
        assert NAMES["C"] in b.log_text() and NAMES["B"] in c.log_text()  # the failure, warned

        t0 = time.monotonic()
        _write_hosts(b, {NAMES["C"]: c.node.address})
        _write_hosts(c, {NAMES["B"]: b.node.address})

        def endpoints_set() -> bool:
            return bool(entry(b, "C")[1] and entry(c, "B")[1])

        wait_until(endpoints_set, timeout=ENDPOINT_BOUND_S, interval=0.5, what="late endpoints")
        set_after = time.monotonic() - t0
        assert (entry(b, "C")[1] or "").startswith(f"[{c.node.address}]:")
        assert (entry(c, "B")[1] or "").startswith(f"[{b.node.address}]:")
        # No traffic and no keepalive: only the nudge starts it (a second or so).
        wait_until(
            lambda: entry(b, "C")[2] and entry(c, "B")[2],
            timeout=8,
            interval=0.2,
            what=f"B-C handshake (endpoints set {set_after:.1f} s after the names resolved)",
        )
        addr = cluster.addresses(mesh_id, [b, c])
        wait_until(lambda: b.node.ping(addr["C"]), timeout=10, what="B -> C over the overlay")
        wait_until(lambda: c.node.ping(addr["B"]), timeout=10, what="C -> B over the overlay")


def test_a_client_whose_peer_has_a_late_name_keeps_it(cluster: Cluster) -> None:
    """A client's only peer publishes a name the client cannot resolve at first.

    The client's tunnel watch does not judge a peer entry without an endpoint
    (core/tunnel.py), and starts its 30 s for a first handshake when the
    endpoint is set: the handshake starts at once (the nudge), so the peer is
    not blamed. (A watch that judged the entry without an endpoint as one
    with no handshake blamed it: "no WireGuard handshake with our peer" in
    D's log. The late nudge is not what keeps it here: without it the
    client's keepalive has wireguard-go try again within seconds.)
    """
    a, b = cluster.add_named("A B")
    d = cluster.add("client", start=False)
    d.name = "D"
    b.edit_config(base={"publicEndpoint": NAMES["B"]})
    with _resolver_files(a, b, d), cluster.logs_on_failure():
        _write_hosts(a, {NAMES["B"]: b.node.address})
        cluster.start(a, b, d)
        mesh_id = cluster.new_mesh(a)
        cluster.join(b, cluster.invite(a, mesh_id))
        keys = {n: base64.b64decode(k) for n, k in cluster.keys(mesh_id, [a, b]).items()}
        cluster.join(d, cluster.invite(a, mesh_id))
        cluster.wait_members(mesh_id, [d], set(cluster.keys(mesh_id, [a, b, d]).values()))
        a.kill()  # D joined through A; B is the peer left to it

        def at_d() -> tuple[set[bytes], str | None, bool]:
            """(D's WireGuard peers, B's endpoint there, a handshake with B made)."""
            st = d.wg_show(mesh_id)
            if st is None:
                return set(), None, False
            peer = st.peers.get(keys["B"])
            if peer is None:
                return set(st.peers), None, False
            return set(st.peers), peer.endpoint, peer.last_handshake is not None

        wait_until(lambda: at_d()[0] == {keys["B"]}, timeout=20, what="D moved to B")
        assert at_d() == ({keys["B"]}, None, False)  # B's name does not resolve at D

        t0 = time.monotonic()
        _write_hosts(d, {NAMES["B"]: b.node.address})
        wait_until(lambda: at_d()[1], timeout=ENDPOINT_BOUND_S, interval=0.5, what="B's endpoint")
        set_after = time.monotonic() - t0
        assert (at_d()[1] or "").startswith(f"[{b.node.address}]:")
        wait_until(
            lambda: at_d()[2],
            timeout=8,
            interval=0.2,
            what=f"D-B handshake (endpoint set {set_after:.1f} s after the name resolved)",
        )
        addr = cluster.addresses(mesh_id, [b])
        wait_until(lambda: d.node.ping(addr["B"]), timeout=10, what="D -> B over the overlay")
        assert "no WireGuard handshake" not in d.log_text()
        assert at_d()[0] == {keys["B"]}  # still B's client
