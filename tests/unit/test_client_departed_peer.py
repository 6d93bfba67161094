"""A client's view of a peer that left the mesh (or went silent): not online.

Found by review: a client whose peer ran ``smegctl leave-mesh`` showed that
peer as online in ``status``, ``get-mesh`` and the API, for ever when it was
the only peer. The tombstone of a leaver never reaches a client (a client
cannot be called; it pulls from its own peer, which is the one gone), and a
node's view shows a member ``suspect`` only when its failure detector
suspects it, which on a client watches no peer. Its pings are the client's
word on its peer: refused (the leaver's daemon has no such mesh any more) or
unanswered for a suspicion window, the peer is suspect in the client's view,
as long as it does not answer them again.
"""

from __future__ import annotations

from smegmesh.core.engine import Input, Out, RequestReceived, Respond
from smegmesh.core.identity import key_to_text
from smegmesh.core.meshnode import MeshNode
from smegmesh.core.messages import Refusal
from smegmesh.daemon import views
from smegmesh.daemon.api_models import StatusResponse
from smegmesh.daemon.status import build_status
from test_meshnode import MESH, Net, mesh_of


def _status(node: MeshNode, now_ms: int) -> StatusResponse:
    """``smegctl status`` of ``node`` as smegd builds it (daemon/localapi.py)."""
    detail = views.mesh_detail(
        node.mesh_id,
        "smeg0",
        node.live_records(),
        self_key=node.key,
        wg_peers={},
        last_heard={},
        suspects=set(node.suspects),
        now_ms=now_ms,
    )
    return build_status("test", key_to_text(node.key), [detail])


def _online(node: MeshNode, now_ms: int) -> set[bytes]:
    """The members ``node`` shows online (``status``: live, not itself)."""
    st = _status(node, now_ms).meshes[0]
    live = {m.public_key for m in st.members if m.status == "live" and not m.is_self}
    assert st.members_online == len(live) + 1  # itself
    return {r.wg_key for r in node.live_records() if key_to_text(r.wg_key) in live}


def _leave_and_refuse(net: Net, leaver: MeshNode) -> None:
    """``smegctl leave-mesh`` on ``leaver``: its tombstone goes out, then its daemon
    answers every call of that mesh with a Refusal (mesh unknown)."""
    net.handle_outs(leaver, leaver.leave(net.now))

    def refuse(inp: Input) -> list[Out]:
        if isinstance(inp, RequestReceived):
            return [Respond(inp.request_id, Refusal(MESH))]
        return []

    leaver.step = refuse  # type: ignore[method-assign]
    leaver.next_deadline = lambda: None  # type: ignore[method-assign]


def test_the_only_peer_that_left_is_not_online_in_its_clients_view() -> None:
    net, nodes = mesh_of(1, 1)
    client = nodes[-1]
    net.run_until(net.now + 3000)
    peer = client.my_peer()
    assert peer is not None and _online(client, net.now) == {peer}
    _leave_and_refuse(net, net.nodes[peer])
    net.run_until(net.now + 2 * client.liveness.suspicion_ms)
    assert client.mesh.live_record(peer) is not None  # no tombstone reaches the client
    assert _online(client, net.now) == set()
    assert peer in client.suspects
    net.run_until(net.now + 120_000)  # and so it stays: the peer never answers again
    assert _online(client, net.now) == set() and client.my_peer() == peer  # nowhere to go


def test_a_client_moves_off_a_peer_that_left_and_never_shows_it_online_after() -> None:
    """With other peers the client moves (it did before) and learns the tombstone
    from its new peer; meanwhile the peer that left is not online either."""
    net, nodes = mesh_of(3, 1)
    client = nodes[-1]
    net.run_until(net.now + 3000)
    peer = client.my_peer()
    assert peer is not None and peer in _online(client, net.now)
    _leave_and_refuse(net, net.nodes[peer])
    net.run_until(net.now + 2 * client.liveness.suspicion_ms)
    for _ in range(300):  # every 100 ms for 30 s
        assert peer not in _online(client, net.now)
        net.run_until(net.now + 100)
    assert client.my_peer() not in (None, peer)
    assert client.mesh.live_record(peer) is None  # the tombstone, from its new peer
    others = {n.key for n in nodes[:-1]} - {peer}
    assert _online(client, net.now) == others


def test_a_peer_silent_for_a_while_is_online_again_once_it_answers() -> None:
    net, nodes = mesh_of(1, 1)
    client = nodes[-1]
    net.run_until(net.now + 3000)
    peer = client.my_peer()
    assert peer is not None
    net.down.add(peer)
    net.run_until(net.now + 2 * client.liveness.suspicion_ms)
    assert _online(client, net.now) == set()
    net.down.discard(peer)
    net.run_until(net.now + 2 * client.liveness.probe_interval_ms)
    assert _online(client, net.now) == {peer} and client.suspects == frozenset()
