"""A client leaves a peer that handshakes and answers pings but forwards nothing.

Left by the tunnel watch's review: the client's pings of its peer go over the
underlay and its handshakes prove the tunnel, not the forwarding, so a peer
that dropped what it should forward kept its client with no way into the
mesh, for good. The client now pings other members through the tunnel now
and then (``core.datapath``). Each test failed before (no probe, no move).
"""

from __future__ import annotations

from smegmesh.core.datapath import FAILS_TO_MOVE, PROBE_EVERY_MS, RETRY_MS
from smegmesh.core.meshnode import MeshNode
from smegmesh.core.tunnel import AVOID_MS
from smegmesh.testbed.loopnet import _Event
from test_meshnode import Net, mesh_of

KEEPALIVE = 25


class PathNet(Net):
    """Calls through a tunnel (``Call.overlay``) fail where the path is cut."""

    def __init__(self) -> None:
        super().__init__()
        self.no_forward: set[bytes] = set()  # peers that forward nothing
        self.silent: set[bytes] = set()  # members whose control port the overlay does not reach
        self.probes: list[tuple[int, bytes, bytes]] = []  # (when, client, target)

    def _deliver(self, ev: _Event) -> None:
        call = ev.call
        if ev.kind == "req" and call.overlay:
            self.probes.append((self.now, ev.caller, call.to))
            peer = self.nodes[ev.caller].my_peer()
            forwarded = call.to != peer  # the peer's own address needs no forwarding
            if (forwarded and peer in self.no_forward) or call.to in self.silent:
                timeout = call.timeout_ms or self.rpc_timeout_ms
                self._push(max(0, timeout - self.latency_ms), "fail", ev.caller, call)
                return
        super()._deliver(ev)


def _client(n_peers: int = 4) -> tuple[PathNet, list[MeshNode], MeshNode, bytes]:
    net = PathNet()
    _, nodes = mesh_of(n_peers, 1, net=net)
    client = nodes[-1]
    net.run_until(net.now + 3000)
    peer = client.my_peer()
    assert peer is not None
    return net, nodes, client, peer


def _handshakes(net: PathNet, client: MeshNode, until: int) -> None:
    """Run to ``until``, WireGuard reporting a fresh handshake with the client's peer each 5 s."""
    while net.now < until:
        peer = client.my_peer()
        if peer is not None:
            assert client.tunnel_seen(net.now, peer, net.now, KEEPALIVE) is None
        net.run_until(min(until, net.now + 5000))


def test_a_peer_that_forwards_nothing_loses_its_client() -> None:
    net, _, client, peer = _client()
    net.no_forward.add(peer)
    start = net.now
    _handshakes(net, client, start + 60_000)
    assert client.my_peer() not in (None, peer)
    assert client._avoid[peer] >= net.now + AVOID_MS - 60_000
    move = client.take_path_move()
    assert move is not None and move.old == peer and move.new == client.my_peer()
    assert move.probes == FAILS_TO_MOVE and client.take_path_move() is None
    mine = [(t, to) for t, who, to in net.probes if who == client.key]
    through_old = [to for _, to in mine][: FAILS_TO_MOVE + 1]
    assert len(set(through_old[:FAILS_TO_MOVE])) == FAILS_TO_MOVE  # each to another member
    assert through_old[-1] == peer  # then the peer itself, which answered
    # the first probe waits RETRY_MS; each failure (1 s) another: about 20 s in all
    moved_at = mine[FAILS_TO_MOVE][0]
    assert moved_at - start <= RETRY_MS + FAILS_TO_MOVE * (RETRY_MS + 2_000)


def test_a_peer_that_forwards_keeps_its_client_and_probes_are_rare() -> None:
    net, _, client, peer = _client()
    start = net.now
    _handshakes(net, client, start + 300_000)
    assert client.my_peer() == peer and client.take_path_move() is None
    mine = [t for t, who, _ in net.probes if who == client.key]
    assert 300_000 // PROBE_EVERY_MS - 1 <= len(mine) <= 300_000 // PROBE_EVERY_MS + 1


def test_one_member_that_answers_no_probe_cannot_move_a_client() -> None:
    """A member that stays silent to probes (down for them, or lying) is one of several."""
    net, nodes, client, peer = _client(5)
    liar = next(n.key for n in nodes[:-1] if n.key != peer)
    net.silent.add(liar)
    _handshakes(net, client, net.now + 600_000)
    assert client.my_peer() == peer and client.take_path_move() is None
    assert any(to == liar for _, who, to in net.probes if who == client.key)


def test_no_probe_without_a_handshake_nor_while_the_peer_is_silent() -> None:
    """No tunnel seen (the memory backend, or before WireGuard is read): nothing to judge;
    a peer that stops answering pings is the ping's to judge, not the probes'."""
    net, _, client, peer = _client()
    net.no_forward.add(peer)
    net.run_until(net.now + 120_000)  # no handshake reported
    assert not net.probes and client.my_peer() == peer
    net.down.add(peer)  # the peer goes silent: its pings fail, and moves the client
    _handshakes(net, client, net.now + 3_000)
    assert all(to != peer for _, _, to in net.probes)
    assert client.take_path_move() is None


def test_with_one_other_peer_three_unanswered_probes_move_the_client() -> None:
    """Two peers: the other one is all there is to ask, three times (one lost datagram
    must not move a client)."""
    net, _, client, peer = _client(2)
    net.no_forward.add(peer)
    _handshakes(net, client, net.now + 60_000)
    move = client.take_path_move()
    assert move is not None and move.old == peer and move.probes == 1
    assert client.my_peer() == move.new != peer
    through_old = [to for _, who, to in net.probes if who == client.key][: FAILS_TO_MOVE + 1]
    assert through_old == [move.new] * FAILS_TO_MOVE + [peer]


def test_no_move_when_the_peer_itself_does_not_answer_on_the_overlay() -> None:
    """Every member's control port closed to the overlay (a firewall on the mesh
    interfaces) looks like a peer that forwards nothing, except that the peer's own
    overlay address does not answer either: nothing is proven, nobody moves."""
    net, nodes, client, peer = _client()
    net.silent.update(n.key for n in nodes[:-1])
    _handshakes(net, client, net.now + 300_000)
    assert client.my_peer() == peer and client.take_path_move() is None
    mine = [to for _, who, to in net.probes if who == client.key]
    assert peer in mine  # it was asked, after the others
    assert len(mine) <= 2 * (FAILS_TO_MOVE + 1) * 300_000 // PROBE_EVERY_MS  # and rarely
