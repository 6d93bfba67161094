"""The forwarding guard with real daemons (docs/ROUTING.md, Forwarding guard).

Mesh m: an exit E (``advertiseDefaults``), a peer P with no flags, a peer M
with ``acceptDefaults``, and a client V with ``acceptDefaults`` whose assigned
peer is P. V routes ``::/0`` to P (on a client mesh every gateway is the
assigned peer) because E offers one. E and P each have an "uplink" ``out0``
(a veth holding 2001:db8:ffff::1/64): a datagram to 2001:db8:ffff::2 that a
node forwards out of the overlay is counted by a table of the test's own.

* P, no exit, does not forward V's datagrams out of the overlay (it did: an
  exit it never agreed to be); its nftables counter shows the drops;
* the real exit still works: M's datagrams leave through E's ``out0``;
* mesh traffic through P still works: V pings E's overlay address (V -> P -> E).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from smegmesh.testbed.cluster import Cluster, Daemon, Timings
from smegmesh.testbed.netns import Testbed

pytestmark = pytest.mark.netns

TIMINGS = Timings(sync_interval=1, heartbeat_interval=2, pull_interval=5, timeout=2)
OUTSIDE = "2001:db8:ffff::2"
_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.sendto(b"out", (sys.argv[1], 9999))
"""


def _uplink(d: Daemon) -> None:
    """``out0`` (one end of a veth pair), a neighbour for OUTSIDE, and a counter of what leaves."""
    for argv in (
        ["ip", "link", "add", "out0", "type", "veth", "peer", "name", "out0p"],
        ["ip", "link", "set", "out0", "up"],
        ["ip", "link", "set", "out0p", "up"],
        ["ip", "-6", "addr", "add", "2001:db8:ffff::1/64", "dev", "out0", "nodad"],
        ["ip", "-6", "neigh", "replace", OUTSIDE, "lladdr", "02:00:00:00:ff:02", "dev", "out0"],
    ):
        d.node.run(argv)
    subprocess.run(
        ["ip", "netns", "exec", d.node.ns, "nft", "-f", "-"], input=_PROBE, check=True, text=True
    )


#: a table of the test's own: counts the packets to OUTSIDE that leave by out0
_PROBE = f"""table ip6 probe {{
  chain out {{
    type filter hook postrouting priority 0; policy accept;
    oifname "out0" ip6 daddr {OUTSIDE} counter
  }}
}}
"""


def _tx(d: Daemon) -> int:
    out = d.node.run(["nft", "-j", "list", "chain", "ip6", "probe", "out"]).stdout
    for item in json.loads(out)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    raise AssertionError(out)


def _send(d: Daemon, n: int = 5) -> None:
    d.node.run([sys.executable, "-c", _SEND, OUTSIDE, str(n)])


def _client(cluster: Cluster) -> Daemon:
    """A client on the peers' own network (no NAT), so its ::/0 never takes its endpoint's route."""
    d = cluster.add("client", start=False, nat=False)
    d.edit_config(acceptDefaults=True)
    d.start()
    return d


def test_a_peer_that_is_no_exit_does_not_forward_a_clients_default(bed: Testbed) -> None:
    with Cluster(bed, TIMINGS) as cluster, cluster.logs_on_failure():
        e, p, m = cluster.add_named("E P M")
        e.edit_config(base={"advertiseDefaults": True})
        m.edit_config(acceptDefaults=True)
        cluster.start(e, p, m)
        mesh_id = cluster.new_mesh(e)
        token = cluster.invite(e, mesh_id, uses=20)
        cluster.map(lambda d: cluster.join(d, token), [p, m])
        ekey, pkey = str(e.public_key()), str(p.public_key())
        for d in (e, p):
            _uplink(d)

        v = None
        # a client whose assigned peer is P (rendezvous over E, P and M: 1/3 each;
        # none in 16 tries: 0.15 %)
        for _ in range(16):
            c = _client(cluster)
            cluster.join(c, token)
            cluster.wait_for(lambda c=c: c.gateway(mesh_id, "::/0") is not None, 40, "::/0")
            if c.gateway(mesh_id, "::/0") == pkey:
                v = c
                break
        assert v is not None, "no client was assigned to P"
        v.name = "V"
        cluster.wait_for(lambda: m.gateway(mesh_id, "::/0") == ekey, 40, "M's ::/0 via E")

        # mesh traffic through P still flows: V -> P -> E
        e_addr = str(e.overlay_address(mesh_id))
        cluster.wait_for(lambda: v.ping(e_addr), 40, "V pings E through P")

        # the real exit forwards M's datagrams out of its uplink
        before_e = _tx(e)
        cluster.wait_for(
            lambda: _send(m) is None and _tx(e) >= before_e + 5,
            30,
            "M's datagrams leave through E",
        )

        # P, no exit, does not forward V's
        before_p = _tx(p)
        for _ in range(4):
            _send(v)
            assert v.ping(e_addr)  # V's tunnel to P is up all along
        assert _tx(p) == before_p, "P forwarded V's default traffic out of its uplink"
        table = p.node.run(["nft", "list", "table", "ip6", "smegmesh"]).stdout
        dropped = re.search(r"oifname != .* counter packets (\d+) ", table)
        assert dropped is not None and int(dropped.group(1)) >= 20, table
        assert "forwarding guard" in p.log_text()
        # E forwards from its exit mesh: no forward rule there
        etable = e.node.run(["nft", "list", "table", "ip6", "smegmesh"], check=False)
        assert "mesh-forward" not in etable.stdout
