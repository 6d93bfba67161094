"""A client's peer or another member turned bad (review of the client role).

Each finding was reproduced first as a test that failed. A client cannot be
called (it has no control endpoint): it learns that it was pruned only from
its own pulls, one every ``pullInterval`` (3 s), so a prune of a live client
stands seconds where a peer's is refuted in milliseconds.
"""

from __future__ import annotations

from smegmesh.core.meshnode import MeshNode
from smegmesh.core.prune_budget import BURST, CLIENT_PRUNE_GAP_MS, PruneBudget
from smegmesh.core.record import NodeRecord, Role
from smegmesh.core.state_gate import OVER_PRUNE_BUDGET
from smegmesh.testbed.founded import ident
from test_gossip_hostile import CountingVerifier, _members, _state
from test_meshnode import Net, join, settled_client


def _prune_whenever_live(
    net: Net, bad: MeshNode, client: MeshNode, seconds: int
) -> tuple[float, bool]:
    """``bad`` prunes ``client`` whenever it holds it live, for ``seconds``.

    Returns the share of (honest peer, 100 ms) samples that held the client
    pruned, and whether the client ended up assigned to ``bad``.
    """
    honest = [n for n in net.nodes.values() if n.key not in (bad.key, client.key)]
    t0, down, samples = net.now, 0, 0
    while net.now < t0 + seconds * 1000:
        if bad.mesh.live_record(client.key) is not None:
            net.handle_outs(bad, bad._declare_dead(client.key, net.now))
        net.run_until(net.now + 100)
        samples += len(honest)
        down += sum(1 for h in honest if h.mesh.live_record(client.key) is None)
    return down / samples, client.my_peer() == bad.key


def test_a_member_cannot_keep_a_live_client_pruned() -> None:
    """Any member pruned a live client again as soon as it refuted: within the
    prune budget (one a second) that kept the client pruned at every other
    peer 97 % of the time (it refutes only after its next pull). A pruner's
    prunes of one client are now taken at most once in CLIENT_PRUNE_GAP_MS."""
    net, nodes, client, peer = settled_client()
    bad = next(n for n in nodes[:-1] if n.key != peer)
    share, _ = _prune_whenever_live(net, bad, client, 60)
    assert share < 0.2


def _prune_in_turn(
    net: Net, bad: MeshNode, keys: list[MeshNode], client: MeshNode, seconds: int
) -> tuple[float, int]:
    """Whenever ``bad`` holds ``client`` live, the next of ``keys`` that does prunes it.

    Returns the share of (honest peer, 100 ms) samples that held the client
    pruned, and the distinct prunes of it an honest peer held.
    """
    honest = [n for n in net.nodes.values() if n is not client and n is not bad]
    honest = [n for n in honest if n not in keys]
    t0, down, samples, turn, seen = net.now, 0, 0, 0, set()
    while net.now < t0 + seconds * 1000:
        if bad.mesh.live_record(client.key) is not None:
            for _ in keys:
                k, turn = keys[turn % len(keys)], turn + 1
                if k.mesh.live_record(client.key) is not None:
                    net.handle_outs(k, k._declare_dead(client.key, net.now))
                    break
        net.run_until(net.now + 100)
        samples += len(honest)
        down += sum(1 for h in honest if h.mesh.live_record(client.key) is None)
        pr = honest[0].mesh.get_prune(client.key)
        if pr is not None:
            seen.add((pr.by_wg_key, pr.target_version))
    return down / samples, len(seen)


def test_throwaway_keys_cannot_keep_a_live_client_pruned() -> None:
    """The gap above was per pruner: a member allowed to admit (policy ``peers``)
    admitted 10 throwaway keys and pruned a live client with each in turn,
    each once a CLIENT_PRUNE_GAP_MS, keeping it pruned at the other peers
    42 % of the time (60 s; an honest peer took 20 prunes of it). Prunes of one client
    by members other than its judge are now taken at most once a gap in all,
    whoever the pruner."""
    net, nodes, client, peer = settled_client()
    bad = next(n for n in nodes[:-1] if n.key != peer)
    keys = []
    for i in range(10):
        keys.append(net.add(30 + i))
        join(net, keys[-1], bad)
        net.run_until(net.now + 200)
    net.run_until(net.now + 3000)
    share, taken = _prune_in_turn(net, bad, keys, client, 60)
    assert client.my_peer() == peer  # its judge stayed the same honest peer
    assert share < 0.1 and taken <= 2


def test_a_pruners_prunes_of_one_client_are_taken_once_a_gap() -> None:
    """Whoever prunes a client (its own peer too, exempt from the budget) gets
    one prune of it taken per CLIENT_PRUNE_GAP_MS; other clients and peers are
    not held back by it."""
    m, recs, now = _members(6)  # ident(2) to ident(7)
    peer = ident(2)
    c1, c2 = (
        m.record(ident(i), role=Role.CLIENT, assigned_peer=peer.wg_public_key) for i in (6, 7)
    )
    st = _state(m, [*recs[:4], c1, c2], now, CountingVerifier())
    st.prune_budget = PruneBudget()
    changed, errors = st.apply_many([m.prune(peer, c1, now)], now)
    assert changed == {c1.wg_key} and not errors
    c1b = m.record(  # it refutes
        ident(6), c1.version + 5, role=Role.CLIENT, assigned_peer=peer.wg_public_key
    )
    assert st.apply_many([c1b], now + 10)[0] == {c1.wg_key}
    again = m.prune(peer, c1b, now + 20)
    changed, errors = st.apply_many([again, m.prune(peer, c2, now + 20)], now + 20)
    assert changed == {c2.wg_key} and [e.message for e in errors] == [OVER_PRUNE_BUDGET]
    assert st.apply_many([again], now + CLIENT_PRUNE_GAP_MS)[0] == {c1.wg_key}


def test_prunes_of_one_client_by_others_than_its_judge_are_taken_once_a_gap_in_all() -> None:
    """Members other than a client's judge (the peer its record names) share one
    prune of it a CLIENT_PRUNE_GAP_MS, whoever prunes; the judge's own prune
    never waits for theirs, and other clients are not held back."""
    m, recs, now = _members(7)  # ident(2) to ident(8)
    judge = ident(2)
    c1, c2 = (
        m.record(ident(i), role=Role.CLIENT, assigned_peer=judge.wg_public_key) for i in (7, 8)
    )
    st = _state(m, [*recs[:5], c1, c2], now, CountingVerifier())
    st.prune_budget = PruneBudget()
    assert st.apply_many([m.prune(ident(3), c1, now)], now)[0] == {c1.wg_key}
    gap, v = CLIENT_PRUNE_GAP_MS, c1.version

    def refute(t: int) -> NodeRecord:
        nonlocal v
        v += 5
        rec = m.record(ident(7), v, role=Role.CLIENT, assigned_peer=judge.wg_public_key)
        assert st.apply_many([rec], t)[0] == {c1.wg_key}
        return rec

    rec = refute(now + 10)
    changed, errors = st.apply_many(
        [m.prune(ident(4), rec, now + 10), m.prune(ident(4), c2, now + 10)], now + 10
    )
    assert changed == {c2.wg_key} and [e.message for e in errors] == [OVER_PRUNE_BUDGET]
    for pruner, t in ((ident(5), now + 1000), (ident(6), now + gap - 1)):
        changed, errors = st.apply_many([m.prune(pruner, rec, t)], t)
        assert not changed and [e.message for e in errors] == [OVER_PRUNE_BUDGET]
    assert st.apply_many([m.prune(judge, rec, now + gap - 1)], now + gap - 1)[0] == {c1.wg_key}
    rec = refute(now + gap)
    assert st.apply_many([m.prune(ident(6), rec, now + gap)], now + gap)[0] == {c1.wg_key}


def test_only_a_clients_record_makes_its_pruner_exempt_from_the_budget() -> None:
    """A peer's prunes of its own clients are not counted: it is their judge.
    The exemption looked at ``assigned_peer`` alone, which a peer's record may
    still carry (a node that was a client and is now a peer kept it), so the
    peer it names could prune that live peer without any budget."""
    m, recs, now = _members(3)
    judge, p = ident(2), ident(3)
    st = _state(m, recs, now, CountingVerifier())
    st.prune_budget = PruneBudget()
    taken = 0
    for i in range(BURST + 8):  # prune, refute, prune again
        rec = m.record(p, m.t + 1 + i, role=Role.PEER, assigned_peer=judge.wg_public_key)
        st.apply_many([rec], now + i)
        taken += len(st.apply_many([m.prune(judge, rec, now + i)], now + i)[0])
    assert taken == BURST


def test_a_client_leaves_a_peer_that_prunes_it_while_answering_its_pings() -> None:
    """A client moved on only when its peer stopped answering its pings: a peer
    that answered them and pruned the client kept it (and pruned it again
    each CLIENT_PRUNE_GAP_MS). Pruned by its peer while that peer acked every
    ping since the pruned version was signed (it cannot have found the client
    silent), the client now avoids it and moves to the next peer."""
    net, nodes, client, peer = settled_client()
    bad = net.nodes[peer]
    _, pinned = _prune_whenever_live(net, bad, client, 60)
    assert not pinned
    rec = next(n for n in nodes if n is not bad and n is not client).mesh.live_record(client.key)
    assert rec is not None and rec.assigned_peer not in (None, bad.key)


def test_a_client_pruned_by_its_peer_for_a_real_silence_stays_with_it() -> None:
    """The honest case: the client was unreachable (its pings were lost) and its
    peer rightly pruned it; back, it refutes and keeps its peer."""
    net, nodes, client, peer = settled_client()
    net.down.add(client.key)
    net.run_until(net.now + 10_000)
    assert net.nodes[peer or b""].mesh.live_record(client.key) is None
    net.down.discard(client.key)
    net.run_until(net.now + 20_000)
    assert client.my_peer() == peer
    assert all(n.mesh.live_record(client.key) is not None for n in nodes)
