"""The forwarding guard's ``mesh-sources`` chain with real daemons (docs/ROUTING.md).

N is a peer in two meshes: A, whose exit X (``advertiseDefaults``) N accepts
defaults from (``acceptDefaults``: X's peer entry on N's A interface holds
``::/0``), and B, whose other member is Y. X controls its own host: it adds
Y's overlay address in B to its A interface and sends N, over the A tunnel,
UDP datagrams from that address to N's overlay address in A. WireGuard on N
accepts them (``::/0`` covers every source) and Linux does no IPv6
reverse-path check, so without the guard N's socket received datagrams that
seemed to come from Y (docs/SECURITY.md, Sources through an exit).

* N's socket does not receive them; the ``mesh-sources`` counter on N's A
  interface shows the drops;
* honest traffic still arrives: X from its own A address, Y from its B
  address (and X again after the spoofed datagrams, so they had their chance).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from smegmesh.core.desired import interface_name
from smegmesh.testbed.cluster import Cluster, Daemon, Timings
from smegmesh.testbed.netns import Testbed

pytestmark = pytest.mark.netns

TIMINGS = Timings(sync_interval=1, heartbeat_interval=2, pull_interval=5, timeout=2)
PORT = 9998
#: N's listener: one line "source payload" a datagram
_LISTEN = f"""
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", {PORT}))
while True:
    data, addr = s.recvfrom(256)
    print(addr[0], data.decode(), flush=True)
"""
#: argv: source address, destination address, payload, count
_SEND = f"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for _ in range(int(sys.argv[4])):
    s.sendto(sys.argv[3].encode(), (sys.argv[2], {PORT}))
"""


def _send(d: Daemon, src: str, dst: str, payload: str, n: int = 1) -> None:
    d.node.run([sys.executable, "-c", _SEND, src, dst, payload, str(n)])


def _received(log: Path) -> list[tuple[str, str]]:
    """(source, payload) of every datagram N's listener got."""
    text = log.read_text() if log.exists() else ""
    return [(a, p) for a, p in (line.split(" ", 1) for line in text.splitlines())]


def _dropped(n: Daemon, ifname: str) -> int:
    """Packets the ``mesh-sources`` chain dropped on ``ifname`` (-1: no such rule)."""
    table = n.node.run(["nft", "list", "table", "ip6", "smegmesh"], check=False).stdout
    m = re.search(rf'iifname "{ifname}" ip6 saddr .* counter packets (\d+) .* drop', table)
    return -1 if m is None else int(m.group(1))


def _guarded(n: Daemon, interfaces: set[str]) -> bool:
    """N's ``mesh-forward`` chain names every one of ``interfaces``."""
    table = n.node.run(["nft", "list", "table", "ip6", "smegmesh"], check=False).stdout
    chain = table.partition("chain mesh-forward ")[2]
    return bool(chain) and all(f'"{i}"' in chain for i in interfaces)


def test_an_exit_cannot_send_from_another_meshs_addresses(bed: Testbed) -> None:
    with Cluster(bed, TIMINGS) as cluster, cluster.logs_on_failure():
        x, n, y = cluster.add_named("X N Y")
        x.edit_config(base={"advertiseDefaults": True})
        n.edit_config(acceptDefaults=True)
        cluster.start(x, n, y)
        mesh_a, mesh_b = cluster.new_mesh(x), cluster.new_mesh(y)
        cluster.join(n, cluster.invite(x, mesh_a))
        cluster.join(n, cluster.invite(y, mesh_b))
        if_a, if_b = interface_name(mesh_a), interface_name(mesh_b)
        x_a, n_a = str(x.overlay_address(mesh_a)), str(n.overlay_address(mesh_a))
        y_b, n_b = str(y.overlay_address(mesh_b)), str(n.overlay_address(mesh_b))

        # X is N's exit (::/0 in X's AllowedIPs on N) and the guard covers A
        xkey = str(x.public_key())
        cluster.wait_for(lambda: n.gateway(mesh_a, "::/0") == xkey, 40, "N's ::/0 via X")
        # N's guard covers both meshes (set in one transaction with mesh-sources;
        # waiting for mesh-forward leaves the spoofing check the first to fail)
        cluster.wait_for(lambda: _guarded(n, {if_a, if_b}), 20, "N's forwarding guard over A and B")

        log = Path(n.node.tmpdir) / "udp.log"
        with open(log, "w") as out:
            n.node.spawn([sys.executable, "-u", "-c", _LISTEN], stdout=out)

        # honest traffic arrives: X in A, Y in B
        cluster.wait_for(
            lambda: _send(x, x_a, n_a, "x-before") is None and (x_a, "x-before") in _received(log),
            30,
            "N receives X's datagram",
        )
        cluster.wait_for(
            lambda: _send(y, y_b, n_b, "y") is None and (y_b, "y") in _received(log),
            30,
            "N receives Y's datagram",
        )

        # X sends from Y's address in B through the A tunnel
        x.node.run(["ip", "-6", "addr", "add", f"{y_b}/128", "dev", if_a, "nodad"])
        _send(x, y_b, n_a, "spoofed", n=5)
        cluster.wait_for(
            lambda: _send(x, x_a, n_a, "x-after") is None and (x_a, "x-after") in _received(log),
            15,
            "N receives X's datagram after the spoofed ones",
        )
        got = _received(log)
        assert (y_b, "spoofed") not in got, f"N received datagrams from X as {y_b}: {got}"
        table = n.node.run(["nft", "list", "table", "ip6", "smegmesh"]).stdout
        assert _dropped(n, if_a) >= 5, table
        assert "with a source in another of this node's meshes" in n.log_text()
