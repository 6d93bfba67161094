"""A live client pruned refutes at its next ping, not its next pull (issue 14).

A client cannot be called (it has no control endpoint): it learnt that it was
pruned only from its own pulls, one every ``pullInterval`` (3 s), so a prune
of a live client stood up to seconds everywhere where a peer's is refuted in
milliseconds. Its peer, holding it as pruned, now says so in the ack of its
ping (``ok`` False, a field every node decodes and an older client ignores);
the client pulls from that peer at once, gets the signed prune and refutes.
"""

from __future__ import annotations

from collections.abc import Callable

from smegmesh.core.driver import Port
from smegmesh.core.engine import Call, Message
from smegmesh.core.exchange import HEAL_INTERVAL_MS
from smegmesh.core.meshnode import MeshNode
from smegmesh.core.messages import IN_REPLY, Ack, Ping
from smegmesh.core.sync import SyncStart
from smegmesh.core.wire import decode, encode
from test_meshnode import GOSSIP, LIVE, MESH, Net, settled_client

#: Phases of a prune against the client's ping and pull timers (ms apart).
OFFSETS = (0, 137, 411, 777, 1290, 1911, 2500, 2873)


def _pruned_for(net: Net, nodes: list[MeshNode], client: MeshNode, pruner: MeshNode) -> int:
    """``pruner`` prunes the live ``client``: ms until every node holds it live again."""
    t0 = net.now
    net.handle_outs(pruner, pruner._declare_dead(client.key, net.now))
    assert pruner.mesh.live_record(client.key) is None
    while any(n.mesh.live_record(client.key) is None for n in nodes):
        net.run_until(net.now + 10)
        assert net.now - t0 < 20_000
    return net.now - t0


def refute_times(
    *, by_own_peer: bool = False, old: Callable[[MeshNode, MeshNode], None] | None = None
) -> list[int]:
    """A prune of a live client at each of ``OFFSETS``, each by another pruner or
    31 s after the last (one pruner's prunes of a client are taken once in 30 s).

    ``old(client, peer)`` makes one of them act as a node from before the change.
    """
    net, nodes, client, _ = settled_client(4)
    if old is not None:
        for n in nodes[:-1]:
            old(client, n)
    out = []
    for i, off in enumerate(OFFSETS):
        net.run_until(net.now + off)
        peer = client.my_peer()
        others = [n for n in nodes[:-1] if n.key != peer]
        pruner = net.nodes[peer or b""] if by_own_peer else others[i % len(others)]
        out.append(_pruned_for(net, nodes, client, pruner))
        net.run_until(net.now + 31_000)
    return out


def test_a_pruned_client_is_live_again_everywhere_within_a_ping_period() -> None:
    """Before: 90-2,500 ms (mean 1,478) over the 8 phases, the wait for the
    client's next pull; now within one ping period and a few round trips."""
    times = refute_times()
    assert GOSSIP.pull_interval_ms == 3000 and LIVE.probe_interval_ms == 1000
    assert max(times) <= LIVE.probe_interval_ms + 200, times


def test_a_pruned_client_refutes_a_prune_by_its_own_peer_as_fast() -> None:
    """Its own peer (exempt from the prune budget) pruning it: the same."""
    assert max(refute_times(by_own_peer=True)) <= LIVE.probe_interval_ms + 200


def _old_client(client: MeshNode, peer: MeshNode) -> None:
    """The client of before: any ack of its ping is an answer, ``ok`` unread."""
    acked = client._peer_acked
    client._peer_acked = lambda p, now, reply: acked(p, now, None)  # type: ignore[method-assign]


def _old_peer(client: MeshNode, peer: MeshNode) -> None:
    """The peer of before: every ping acked ``ok``."""
    peer._ping_ack = lambda src, ping: Ack(IN_REPLY, ping.probe_id)  # type: ignore[method-assign]


def test_old_and_new_nodes_refute_as_before_when_mixed() -> None:
    """A new peer's ``ok`` False to an old client is an ack like any other (no
    ping failure, no move), and an old peer's ``ok`` to a new client changes
    nothing: either way the client refutes at its next pull, as before."""
    for old in (_old_client, _old_peer):
        times = refute_times(old=old)
        assert max(times) > LIVE.probe_interval_ms + 200, times  # the pull's wait
        assert max(times) <= GOSSIP.pull_interval_ms + 200, times


def test_a_peer_tells_a_pruned_client_in_the_ack_of_its_ping_and_sends_nothing() -> None:
    """``ok`` False only to a ping (id 0) of a caller held as pruned; O(1) and
    no call per ping, however many; the ack is the three fields every version
    decodes."""
    net, nodes, client, peer_key = settled_client(3)
    peer = net.nodes[peer_key]
    other = next(n for n in nodes[:-1] if n is not peer)
    ping = Ping(MESH, 0)
    assert peer.handle_request(client.key, ping, net.now) == (Ack(IN_REPLY, 0, True), [])
    peer._declare_dead(client.key, net.now)  # held by the peer alone
    for i in range(1000):
        assert peer.handle_request(client.key, ping, net.now + i) == (Ack(IN_REPLY, 0, False), [])
    # a probe's ping is acked ok, and so is a live member's
    assert peer.handle_request(client.key, Ping(MESH, 7), net.now)[0] == Ack(IN_REPLY, 7, True)
    assert peer.handle_request(other.key, ping, net.now)[0] == Ack(IN_REPLY, 0, True)
    wire = encode(Ack(IN_REPLY, 0, False))
    assert decode(wire) == Ack(IN_REPLY, 0, False)


class _Spy:
    """A port that keeps the calls it sends."""

    def __init__(self, port: Port) -> None:
        self.port, self.sent = port, list[Call]()

    def send(self, call: Call) -> None:
        self.sent.append(call)
        self.port.send(call)

    def respond(self, request_id: int, msg: Message) -> None:
        self.port.respond(request_id, msg)

    def changed(self, keys: frozenset[bytes]) -> None:
        self.port.changed(keys)


def _pulls_and_versions(lie: bool, seconds: int = 30) -> tuple[int, int]:
    """Sync sessions the client starts with its peer in ``seconds``, and its
    records signed meanwhile, its peer acking every ping ``ok`` False if ``lie``."""
    net, _, client, peer_key = settled_client(3)
    peer = net.nodes[peer_key]
    if lie:
        peer._ping_ack = lambda src, ping: Ack(IN_REPLY, ping.probe_id, False)  # type: ignore[method-assign]
    driver = net.drivers[client.key]
    spy = _Spy(driver.port)
    driver.port = spy
    own = client.mesh.record(client.key)
    net.run_until(net.now + seconds * 1000)
    now = client.mesh.record(client.key)
    assert own is not None and now is not None
    pulls = sum(1 for c in spy.sent if c.to == peer.key and isinstance(c.msg, SyncStart))
    return pulls, now.version - own.version


def test_a_peer_that_says_every_ping_is_pruned_costs_its_client_a_pull_per_interval() -> None:
    """A lying peer: no record signed (only a genuine prune is refuted) and at
    most one pull more per HEAL_INTERVAL_MS."""
    honest, lying = _pulls_and_versions(False), _pulls_and_versions(True)
    assert honest[1] == lying[1] == 0
    assert honest[0] < lying[0] <= honest[0] + 30_000 // HEAL_INTERVAL_MS + 1, (honest, lying)
