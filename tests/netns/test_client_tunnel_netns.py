"""A client leaves a peer whose WireGuard port is blocked (core.tunnel), real daemons.

Peers A and B and a client C. Once C has a tunnel to its assigned peer X, X
drops every UDP datagram to its WireGuard port (its control plane still
answers: the control port is another one) and C's wireguard-go is killed, so
C's daemon creates its interface again and WireGuard must handshake anew.
Before, C kept X for good (it answered C's pings) with no data path; now C
moves to the other peer within about 30 s of its WireGuard peer coming back,
says so in its log, and reaches the new peer; once X's port is open again,
C reaches X through the new peer, and stays with it.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import replace

import pytest

from smegmesh.testbed.cluster import Cluster, Daemon, Timings
from smegmesh.testbed.netns import Testbed

pytestmark = pytest.mark.netns

TIMINGS = Timings(sync_interval=1, heartbeat_interval=2, pull_interval=5, timeout=2)


def _assigned(c: Daemon, mesh_id: str) -> str | None:
    detail = c.get_mesh(mesh_id) or {}
    me = next((n for n in detail.get("nodes", []) if n.get("is_self")), None)
    return None if me is None else me.get("assigned_peer")


def _client_of_two_peers(
    cluster: Cluster, *, datagrams: bool = True
) -> tuple[str, Daemon, Daemon, Daemon]:
    """Peers A and B, and a client C with a peer: (mesh, C, C's peer X, the other Y).

    ``datagrams``: C's ``datagrams`` setting (every call of C's on the stream if False)."""
    a, b = cluster.add_named("A B")
    cluster.start(a, b)
    mesh_id = cluster.new_mesh(a)
    token = cluster.invite(a, mesh_id, uses=5)
    cluster.join(b, token)
    c = cluster.add("client", start=False, nat=False)
    c.name = "C"
    if not datagrams:
        c.edit_config(datagrams=False)
    cluster.start(c)
    cluster.join(c, token)
    keys = {str(a.public_key()): a, str(b.public_key()): b}
    cluster.wait_for(lambda: _assigned(c, mesh_id) in keys, 40, "C has a peer")
    x = keys[str(_assigned(c, mesh_id))]
    return mesh_id, c, x, b if x is a else a


def _block_wireguard(d: Daemon, mesh_id: str) -> None:
    """Drop every datagram to ``d``'s WireGuard port (its control plane's port still answers)."""
    st = d.wg_show(mesh_id)
    assert st is not None and st.listen_port, "no WireGuard listen port"
    rules = f"""table inet blockwg {{
  chain in {{
    type filter hook input priority -10; policy accept;
    udp dport {st.listen_port} counter drop
  }}
}}
"""
    subprocess.run(
        ["ip", "netns", "exec", d.node.ns, "nft", "-f", "-"], input=rules, check=True, text=True
    )


def test_a_client_leaves_a_peer_whose_wireguard_port_is_blocked(bed: Testbed) -> None:
    with Cluster(bed, TIMINGS) as cluster:
        mesh_id, c, x, y = _client_of_two_peers(cluster)
        x_addr, y_addr = (str(d.overlay_address(mesh_id)) for d in (x, y))
        cluster.wait_for(lambda: c.ping(x_addr), 40, "C reaches its peer")

        _block_wireguard(x, mesh_id)
        c.kill_wireguard()  # its session with X goes; a new one cannot be made
        t0 = time.monotonic()
        cluster.wait_for(lambda: _assigned(c, mesh_id) == str(y.public_key()), 90, "C moves")
        moved_after = time.monotonic() - t0
        assert "no WireGuard handshake with our peer" in c.log_text()
        assert 25 < moved_after < 60, moved_after
        cluster.wait_for(lambda: c.ping(y_addr), 40, "C reaches its new peer")
        x.node.run(["nft", "delete", "table", "inet", "blockwg"])  # X's port open again
        cluster.wait_for(lambda: c.ping(x_addr), 40, "C reaches X through its new peer")
        assert _assigned(c, mesh_id) == str(y.public_key())  # and stays there


def _drop_forwarded(d: Daemon) -> None:
    """``d`` forwards nothing (its own control plane and WireGuard still answer)."""
    rules = """table inet blackhole {
  chain f {
    type filter hook forward priority -10; policy accept;
    counter drop
  }
}
"""
    subprocess.run(
        ["ip", "netns", "exec", d.node.ns, "nft", "-f", "-"], input=rules, check=True, text=True
    )


@pytest.mark.parametrize("datagrams", [True, False], ids=["datagrams", "stream"])
def test_a_client_leaves_a_peer_that_forwards_nothing(bed: Testbed, datagrams: bool) -> None:
    """C's peer X keeps answering C's pings and handshaking, and drops every
    packet it should forward. Before, C kept X for good, with no path into the
    mesh; now C's probes through X to Y (Y's overlay address, control port)
    go unanswered while Y answers directly, and C moves to Y. With C's
    ``datagrams: false`` the probes go over TLS (``RpcClient.probe``); before,
    such a client sent none and kept X."""
    with Cluster(bed, replace(TIMINGS, log_level="debug")) as cluster:
        mesh_id, c, x, y = _client_of_two_peers(cluster, datagrams=datagrams)
        x_addr, y_addr = (str(d.overlay_address(mesh_id)) for d in (x, y))
        cluster.wait_for(lambda: c.ping(y_addr), 40, "C reaches the mesh through its peer")
        answered = "through our peer answered, directly answered"
        cluster.wait_for(lambda: answered in c.log_text(), 60, "a probe through X answered")

        _drop_forwarded(x)
        assert not c.ping(y_addr)
        t0 = time.monotonic()
        cluster.wait_for(lambda: _assigned(c, mesh_id) == str(y.public_key()), 120, "C moves")
        moved_after = time.monotonic() - t0
        assert "forwarded none of our probes" in c.log_text()
        assert moved_after < 90, moved_after
        cluster.wait_for(lambda: c.ping(y_addr), 40, "C reaches the mesh through its new peer")
        assert c.ping(x_addr)  # X itself, through Y (it forwards nothing, it answers)
        print(f"moved after {moved_after:.1f} s")
