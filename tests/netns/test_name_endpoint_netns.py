"""A member that publishes its endpoint as a DNS name, with real daemons and wireguard-go.

Every test until now gave members IP endpoints. Here B's ``publicEndpoint`` is
a name that only A's resolver knows (``/etc/netns/<ns>/hosts``, which ``ip
netns exec`` puts in place of ``/etc/hosts``): A must reach B's control port
and set B's WireGuard endpoint through it, and the overlay must carry traffic
both ways. (A name that resolves *late* makes the member unreachable on the
control plane as well, which resolves the same name; the late WireGuard case
is a slow nameserver's, covered by tests/unit/test_wg_late_endpoint.py.)
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest

from smegmesh.testbed.cluster import Cluster, Timings
from smegmesh.testbed.daemon import Daemon
from smegmesh.testbed.netns import Testbed, wait_until

pytestmark = pytest.mark.netns

TIMINGS = Timings(sync_interval=1, heartbeat_interval=2, pull_interval=3, timeout=2)
NAME = "b-node.smeg.test"


@pytest.fixture
def cluster(testbed: Testbed) -> Iterator[Cluster]:
    with Cluster(testbed, TIMINGS) as c:
        yield c


@contextlib.contextmanager
def _hosts(d: Daemon, lines: str) -> Iterator[None]:
    """``/etc/hosts`` of ``d``'s namespace, for processes started from now on."""
    folder = f"/etc/netns/{d.node.ns}"
    os.makedirs(folder, exist_ok=True)
    try:
        with open(f"{folder}/hosts", "w") as f:
            f.write(f"127.0.0.1 localhost\n::1 localhost\n{lines}\n")
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_member_reached_by_name(cluster: Cluster) -> None:
    a, b = cluster.add_named("A B")
    b.edit_config(base={"publicEndpoint": NAME})
    with _hosts(a, f"{b.node.address} {NAME}"), cluster.logs_on_failure():
        cluster.start(a, b)
        mesh_id = cluster.new_mesh(a)
        cluster.join(b, cluster.invite(a, mesh_id))
        keys = cluster.keys(mesh_id, [a, b])
        cluster.wait_members(mesh_id, [a, b], set(keys.values()))
        bkey = base64.b64decode(keys["B"])

        def endpoint_at_a() -> str | None:
            st = a.wg_show(mesh_id)
            peer = st.peers.get(bkey) if st is not None else None
            return peer.endpoint if peer is not None else None

        wait_until(endpoint_at_a, timeout=15, what="B's endpoint at A")
        assert (endpoint_at_a() or "").startswith(f"[{b.node.address}]:")
        published = a.ctl("get-mesh", "--meshid", mesh_id)
        assert NAME in str(published)  # B's record carries the name, not an address
        addr = cluster.addresses(mesh_id, [a, b])
        wait_until(lambda: a.node.ping(addr["B"]), timeout=15, what="A -> B over the overlay")
        wait_until(lambda: b.node.ping(addr["A"]), timeout=15, what="B -> A over the overlay")
