"""A member that adds a newly joined peer starts the WireGuard handshake itself.

Without it, a joiner's first handshake initiation to a member that had not yet
heard of it is dropped and WireGuard retries only after 5 s (REKEY_TIMEOUT):
join-to-full-connectivity then took 5.3 s in two of four bench trials. Here no
overlay traffic is sent at all (peers have no keepalive; gossip runs on the
underlay), so a handshake between B and the joiner C can only come from the
nudge B sends when it adds C.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from smegmesh.testbed.cluster import Cluster, Timings
from smegmesh.testbed.netns import Testbed, wait_until

pytestmark = pytest.mark.netns

TIMINGS = Timings(sync_interval=1, heartbeat_interval=2, pull_interval=3, timeout=2)


@pytest.fixture
def cluster(testbed: Testbed) -> Iterator[Cluster]:
    with Cluster(testbed, TIMINGS) as c:
        yield c


def test_member_initiates_handshake_with_a_new_peer(cluster: Cluster) -> None:
    a, b, c = cluster.add_many(3, "peer")
    with cluster.logs_on_failure():
        mesh_id = cluster.new_mesh(a)
        cluster.join(b, cluster.invite(a, mesh_id))
        cluster.wait_members(mesh_id, [a, b], set(cluster.keys(mesh_id, [a, b]).values()))
        cluster.join(c, cluster.invite(a, mesh_id))
        ckey = base64.b64decode(cluster.keys(mesh_id, [c])[c.name])

        def b_shook_hands_with_c() -> bool:
            st = b.wg_show(mesh_id)
            peer = st.peers.get(ckey) if st is not None else None
            return peer is not None and peer.last_handshake is not None

        # The nudge follows B learning of C by gossip (about a second); a
        # handshake from WireGuard's own retry would need overlay traffic.
        wait_until(b_shook_hands_with_c, timeout=15, interval=0.2, what="B-C handshake")
