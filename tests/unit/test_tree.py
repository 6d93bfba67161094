"""Tree-shaped dissemination (an option): the tree's target choice, and the engine using it."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smegmesh.core.delta import TAKES_DELTAS
from smegmesh.core.engine import Call, OfferCtx, PushCtx
from smegmesh.core.gossip import GossipParams
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.meshnode import MeshNode, MeshSettings
from smegmesh.core.messages import IN_REPLY, Ack
from smegmesh.core.record import Prune, Role
from smegmesh.core.sync import Push
from smegmesh.core.tree import tree_neighbours
from smegmesh.core.treecast import (
    ANSWERED_EVERY_MS,
    DOWN_MS,
    DOWN_RETRY_MS,
    FORWARDS_TREE,
    PLAIN_MS,
    TAKES_UNANSWERED,
)
from smegmesh.core.wire import decode
from smegmesh.testbed.loopnet import LoopNet


def rand_keys(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return sorted({rng.randbytes(32) for _ in range(n)})


def tree_of(
    keys: list[bytes], fanout: int, down: frozenset[bytes] = frozenset()
) -> dict[bytes, tuple[bytes | None, tuple[bytes, ...]]]:
    """Every member's own view of its neighbours (its peers: the others)."""
    out = {}
    for me in keys:
        if me in down:
            continue
        peers = [k for k in keys if k != me]
        out[me] = tree_neighbours(me, peers, me, fanout, down)
    return out


def check_spanning(tree: dict[bytes, tuple[bytes | None, tuple[bytes, ...]]], fanout: int) -> int:
    """Asserts the members' views make one tree reaching each member once; its depth."""
    roots = [k for k, (p, _) in tree.items() if p is None]
    assert len(roots) == 1
    for k, (_p, children) in tree.items():
        assert len(children) <= fanout
        assert k not in children
        for c in children:
            assert tree[c][0] == k  # the child agrees on its parent
    seen: Counter[bytes] = Counter()
    depth, level = 0, [roots[0]]
    while level:
        seen.update(level)
        nxt = [c for k in level for c in tree[k][1]]
        if nxt:
            depth += 1
        level = nxt
    assert set(seen) == set(tree) and max(seen.values()) == 1
    return depth


@pytest.mark.parametrize(("n", "fanout"), [(1, 3), (2, 2), (3, 1), (50, 2), (300, 4), (1000, 8)])
def test_every_member_is_reached_once_when_views_agree(n: int, fanout: int) -> None:
    keys = rand_keys(n)
    depth = check_spanning(tree_of(keys, fanout), fanout)
    if n >= 50 and fanout > 1:  # keys are uniform: about log N / log fanout levels
        assert depth <= 2 * math.log(n) / math.log(fanout) + 3


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 120), st.integers(1, 6), st.integers(0, 10**6))
def test_any_member_set_and_fanout_give_one_spanning_tree(n: int, fanout: int, seed: int) -> None:
    check_spanning(tree_of(rand_keys(n, seed), fanout), fanout)


def test_the_choice_is_deterministic_and_the_same_from_any_member() -> None:
    keys = rand_keys(200)
    a, b, c = keys[10], keys[20], keys[150]
    peers_of = {k: [x for x in keys if x != k] for k in (a, b, c)}
    mine = tree_neighbours(a, peers_of[a], a, 4)
    assert mine == tree_neighbours(a, list(peers_of[a]), a, 4)  # no randomness
    # b and c compute a's neighbours as a does
    assert tree_neighbours(a, peers_of[b], b, 4) == mine
    assert tree_neighbours(a, peers_of[c], c, 4) == mine


def test_per_node_load_is_bounded() -> None:
    keys = rand_keys(1000)
    tree = tree_of(keys, 4)
    degrees = [len(ch) + (p is not None) for p, ch in tree.values()]
    assert max(degrees) <= 5  # a parent and at most fanout children
    # every change crosses each of the N - 1 edges once: 2 (N - 1) ends
    assert sum(degrees) == 2 * (len(keys) - 1)


def test_a_member_more_or_less_changes_only_the_edges_next_to_it() -> None:
    """Views that differ by one member give trees that differ by a few edges, not everywhere."""
    keys = rand_keys(500)
    full = tree_of(keys, 4)
    for gone in (keys[0], keys[7], keys[250], keys[499]):
        less = tree_of([k for k in keys if k != gone], 4)
        moved = [
            k
            for k in less
            if set(filter(None, (less[k][0], *less[k][1])))
            != set(filter(None, (full[k][0], *full[k][1])))
        ]
        assert len(moved) <= 4 * 10, (gone, len(moved))  # fanout * depth, not N


def test_down_members_are_routed_around() -> None:
    keys = rand_keys(300)
    full = tree_of(keys, 3)
    inner = [k for k, (p, ch) in full.items() if p is not None and len(ch) == 3]
    down = frozenset([*inner[:5], next(k for k, (p, _) in full.items() if p is None)])
    check_spanning(tree_of(keys, 3, down), 3)  # the others still form one tree


def test_a_node_outside_the_view_gets_a_place() -> None:
    keys = rand_keys(100)
    me, other = keys[0], keys[50]
    peers = [k for k in keys if k not in (me, other)]  # we do not know ``other``
    parent, children = tree_neighbours(other, peers, me, 4)
    assert parent is not None and other not in children


def test_fanout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="fanout"):
        tree_neighbours(b"\0" * 32, [], b"\0" * 32, 0)
    with pytest.raises(ValueError, match="dissemination"):
        GossipParams(dissemination="flood")


# -- the engine with dissemination "tree" ----------------------------------------------
MESH = "amber-falcon-river-k7q2"
TREE = GossipParams(
    sync_interval_ms=500,
    pull_interval_ms=3000,
    dissemination="tree",
    tree_fanout=2,
    round_fanout=1,
    infection_count=1,
)


class Net(LoopNet):
    def add(self, seed: int, gossip: GossipParams = TREE) -> MeshNode:
        node = MeshNode(
            NodeIdentity.from_seed(bytes([seed]) * 32),
            MESH,
            MeshSettings(
                wg_endpoint=f"192.0.2.{seed}:51820",
                control_endpoint=f"192.0.2.{seed}:4000",
                tls_fp=bytes(32),
            ),
            gossip,
            LivenessParams.from_heartbeat(2000),
            random.Random(seed),
        )
        return self.attach(node)


def tree_mesh(n: int, plain: dict[int, GossipParams] | None = None) -> tuple[Net, list[MeshNode]]:
    """``n`` tree members joined one by one (``plain``: seed -> other parameters)."""
    net = Net()
    other = plain or {}
    nodes = [net.add(1, other.get(1, TREE))]
    net.handle_outs(nodes[0], nodes[0].start(0))
    for i in range(2, n + 1):
        joiner, via = net.add(i, other.get(i, TREE)), nodes[-1]
        net.join(joiner, via)
        nodes.append(joiner)
        net.run_until(net.now + 200)
    net.run_until(net.now + 5000)
    return net, nodes


def pushes_of(net: LoopNet, since: int) -> int:
    """Pushes on the wire since message ``since``."""
    return sum(1 for data in net.wire[since:] if isinstance(decode(data), Push))


def test_a_change_reaches_every_member_along_the_tree() -> None:
    net, nodes = tree_mesh(10)
    assert len({n.mesh.digest() for n in nodes}) == 1
    # every member computes the same tree from its view
    views = {n.key: set(n.tree_targets(net.now)) for n in nodes}
    for k, neighbours in views.items():
        for m in neighbours:
            assert k in views[m]
    t0, mark = net.now, len(net.wire)
    author = nodes[3]
    net.handle_outs(author, author.update_self(t0, alias="bob"))
    net.run_until(t0 + 300)  # before any periodic round: the tree alone
    for n in nodes:
        rec = n.mesh.live_record(author.key)
        assert rec is not None and rec.alias == "bob"
    # each member got it about once: N - 1 pushes (the tree's edges)
    assert pushes_of(net, mark) == len(nodes) - 1


def test_a_crashed_tree_neighbour_is_routed_around() -> None:
    net, nodes = tree_mesh(12)
    author = nodes[0]
    inner = [n for n in nodes if n is not author and len(n.tree_targets(net.now)) >= 3]
    victim = inner[0]
    net.down.add(victim.key)
    t0 = net.now
    net.handle_outs(author, author.update_self(t0, alias="carol"))
    net.run_until(t0 + 2500)  # a timeout (1 s) and the bypass, before any prune
    for n in nodes:
        if n is not victim:
            rec = n.mesh.live_record(author.key)
            assert rec is not None and rec.alias == "carol"


def test_a_failed_tree_push_goes_to_the_replacement_and_is_tried_once_more() -> None:
    net, nodes = tree_mesh(12)
    me = nodes[0]
    targets = me.tree_targets(net.now)
    gone = targets[-1]
    call = Call(gone, Push(MESH, ()), PushCtx(frozenset({me.key}), tree=1))
    outs = me.handle_failure(gone, call.ctx, net.now)
    sent = [o for o in outs if isinstance(o, Call) and isinstance(o.ctx, PushCtx)]
    retry = [o for o in sent if o.to == gone]
    assert len(retry) == 1 and isinstance(retry[0].ctx, PushCtx) and retry[0].ctx.tree == 2
    assert gone not in me.tree_targets(net.now)
    instead = {o.to for o in sent if o.to != gone}
    assert instead == set(me.tree_targets(net.now)) - set(targets)
    # the retry failing too changes nothing more
    assert me.handle_failure(gone, retry[0].ctx, net.now) == []


def test_the_simulator_silences_the_top_of_the_tree() -> None:
    """``--silent-forwarders``: the root and its children, breadth first; nothing forwarded."""
    from smegmesh.sim.silent import silence, tree_top

    keys = rand_keys(200)
    top = tree_top(keys, 4, 5)
    root = keys[0]
    assert top[0] == root and set(top[1:]) == set(tree_neighbours(root, keys, root, 4)[1])
    net, nodes = tree_mesh(6)
    quiet = nodes[2]
    silence(quiet)
    assert quiet._push_now({nodes[0].key}, (nodes[0].key,), net.now) == []  # a forward
    own = quiet._push_now({quiet.key}, (), net.now, full=2)  # its own change still goes
    assert own and all(isinstance(o, Call) for o in own)


def test_a_clock_stepped_back_does_not_keep_a_neighbour_routed_around() -> None:
    """The tree's *down* marks move with a clock step, as every other time table does."""
    net, nodes = tree_mesh(12)
    me = nodes[0]
    gone = me.tree_targets(net.now)[-1]
    me.handle_failure(gone, PushCtx(frozenset({me.key}), tree=1), net.now)
    assert gone not in me.tree_targets(net.now)
    hour = 3_600_000
    me.clock_stepped(-hour)  # the wall clock set back an hour
    later = net.now - hour + DOWN_MS  # the mark's time has passed on the new clock
    assert gone in me.tree_targets(later)


def test_the_simulators_tree_is_smegds() -> None:
    """``--dissemination tree`` takes smegd's rule (``GossipParams.lazy_tree``); flags win."""
    from smegmesh.daemon.config import parse_config
    from smegmesh.daemon.reload import gossip_params
    from smegmesh.sim.__main__ import config_from_args, parse_args

    sim = config_from_args(parse_args(["--dissemination", "tree"])).gossip
    daemon = gossip_params(parse_config({"dissemination": "tree"}))
    assert (sim.round_fanout, sim.infection_count) == (daemon.round_fanout, daemon.infection_count)
    assert (sim.round_fanout, sim.infection_count) == (1, 1)
    args = ["--dissemination", "tree", "--round-fanout", "2", "--infection-count", "3"]
    mine = config_from_args(parse_args(args)).gossip
    assert (mine.round_fanout, mine.infection_count) == (2, 3)


def _tree_pushes(outs: list[object]) -> list[Call]:
    return [o for o in outs if isinstance(o, Call) and isinstance(o.ctx, PushCtx)]


def _answer(me: MeshNode, calls: list[Call], now: int, words: int) -> None:
    for c in calls:
        me.handle_reply(c.to, c.ctx, Ack(IN_REPLY, words, True), now)


def test_pushes_along_the_tree_ask_for_an_answer_at_most_once_a_second() -> None:
    """Each push's ``Ack`` was a datagram back (10 % of a node's bytes at
    1,000 simulated members, 60 %/min churn). A neighbour that answered a
    push within ANSWERED_EVERY_MS, saying it takes them unanswered, gets the
    next ones unanswered; then one asks again; a neighbour whose ack does not
    say so (an older node) is always asked."""
    net, nodes = tree_mesh(12)
    me, now = nodes[0], net.now
    first = _tree_pushes(me._tree_push({me.key}, (), now, own=True))
    assert first and not any(c.unanswered for c in first)
    _answer(me, first, now, TAKES_DELTAS | TAKES_UNANSWERED | FORWARDS_TREE)
    again = _tree_pushes(me._tree_push({nodes[1].key}, (), now + 100, own=True))
    assert {c.to for c in again} == {c.to for c in first}
    assert all(c.unanswered and c.ctx.tree == 1 for c in again)
    later = _tree_pushes(me._tree_push({nodes[2].key}, (), now + ANSWERED_EVERY_MS, own=True))
    assert later and not any(c.unanswered for c in later)
    _answer(me, later, now + ANSWERED_EVERY_MS, TAKES_DELTAS)  # an older node's ack
    older = _tree_pushes(me._tree_push({nodes[3].key}, (), now + ANSWERED_EVERY_MS + 1, own=True))
    assert older and not any(c.unanswered for c in older)


def test_a_failed_tree_push_takes_along_the_keys_pushed_unanswered_since() -> None:
    """A neighbour that crashed is found at the next push that asks for an
    answer; the keys pushed to it unanswered before go to its replacement."""
    net, nodes = tree_mesh(12)
    me, now = nodes[0], net.now
    first = _tree_pushes(me._tree_push({me.key}, (), now, own=True))
    _answer(me, first, now, TAKES_UNANSWERED | FORWARDS_TREE)
    quiet = _tree_pushes(me._tree_push({nodes[1].key}, (), now + 100, own=True))
    gone = quiet[0].to
    assert quiet[0].unanswered
    asked = next(
        c
        for c in _tree_pushes(me._tree_push({nodes[2].key}, (), now + 1500, own=True))
        if c.to == gone
    )
    assert not asked.unanswered
    outs = _tree_pushes(me.handle_failure(gone, asked.ctx, now + 2500))
    keys = {nodes[1].key, nodes[2].key}
    assert outs and all(keys <= o.ctx.keys for o in outs)  # type: ignore[union-attr]
    assert {o.to for o in outs if o.ctx.tree == 2} == {gone}  # type: ignore[union-attr]
    assert all(not o.unanswered for o in outs if o.to == gone)


# -- a mesh mixing the two disseminations -------------------------------------------------
def test_a_push_ack_says_whether_its_sender_forwards_along_the_tree() -> None:
    net, nodes = tree_mesh(4, plain={4: replace(TREE, dissemination="gossip")})
    client = nodes[1]
    client.settings = replace(client.settings, role=Role.CLIENT)
    push = Push(MESH, ())
    words = {}
    for name, n in (("tree", nodes[0]), ("gossip", nodes[3]), ("client", client)):
        ack, _ = n.handle_request(nodes[2].key, push, net.now)
        assert isinstance(ack, Ack)
        words[name] = bool(ack.probe_id & FORWARDS_TREE)
    assert words == {"tree": True, "gossip": False, "client": False}


def test_a_neighbour_that_forwards_nothing_along_the_tree_is_routed_around_and_pushed_to() -> None:
    """A gossip member in the tree (a mesh switched one member at a time)
    forwards nothing along it: its ack says so, and the member that pushed
    to it sends the push's keys at once to those who take its place, and
    pushes to it as well from then on, until an ack says it forwards."""
    net, nodes = tree_mesh(12)
    me, now = nodes[0], net.now
    first = _tree_pushes(me._tree_push({me.key}, (), now, own=True))
    assert len(first) >= 2
    gone = first[0].to
    words = TAKES_DELTAS | TAKES_UNANSWERED
    for c in first[1:]:
        assert me.handle_reply(c.to, c.ctx, Ack(IN_REPLY, words | FORWARDS_TREE, True), now) == []
    instead = _tree_pushes(me.handle_reply(gone, first[0].ctx, Ack(IN_REPLY, words, True), now))
    assert instead and all(c.ctx.keys == {me.key} for c in instead)  # type: ignore[union-attr]
    assert gone not in {c.to for c in instead}
    assert gone not in me.tree_targets(now)
    assert {c.to for c in instead} == set(me.tree_targets(now)) - {c.to for c in first}
    later = _tree_pushes(me._tree_push({nodes[1].key}, (), now + 100, own=True))
    assert {c.to for c in later} == set(me.tree_targets(now)) | {gone}
    # an ack that says it forwards ends it; so does PLAIN_MS without another
    _answer(me, [c for c in later if c.to == gone], now + 200, words | FORWARDS_TREE)
    assert gone in me.tree_targets(now + 200)
    me.handle_reply(gone, first[0].ctx, Ack(IN_REPLY, words, True), now + 300)
    assert gone not in me.tree_targets(now + 300)
    assert gone in me.tree_targets(now + 300 + PLAIN_MS)


def test_a_change_goes_around_a_gossip_member_in_the_tree() -> None:
    """The part of the tree below a gossip member hears a change as fast as the rest."""
    _, probe = tree_mesh(12)
    t = {n.key: n.tree_targets(0) for n in probe}
    inner = next(n for n in probe[1:] if len(t[n.key]) == 3)  # a parent and two children
    below: set[bytes] = set()
    edge = [k for k in t[inner.key][1:]]
    while edge:
        k = edge.pop()
        below.add(k)
        edge += [c for c in t[k][1:] if c not in below]
    seed = probe.index(inner) + 1
    net, nodes = tree_mesh(12, plain={seed: replace(TREE, dissemination="gossip", branch=1)})
    for n in nodes:  # each edge carries a push both ways: the acks are heard
        net.handle_outs(n, n.update_self(net.now, alias=f"n{n.key[0]}"))
        net.run_until(net.now + 200)
    net.run_until(net.now + 2000)
    author = next(n for n in nodes if n.key not in below and n.key != inner.key)
    t0 = net.now
    net.handle_outs(author, author.update_self(t0, alias="dave"))
    net.run_until(t0 + 300)  # before any periodic round: the tree alone
    late = [
        n.key[0]
        for n in nodes
        if (r := n.mesh.live_record(author.key)) is None or r.alias != "dave"
    ]
    assert late == []


def test_a_neighbour_routed_around_is_back_once_a_record_it_signed_arrives() -> None:
    """A *down* mark is a guess that ends when the member shows it is alive.

    After a partition, the pushes that failed during the cut left marks on the
    members of the other side for up to ``DOWN_MS``; each member's refutation
    reached its tree parent through others, never from itself, so the parent
    kept routing around it and it heard no change along the tree for seconds
    (300 simulated nodes, 6 s cut: ~400 marks on members held live, 4 s after
    the cut). A new record it signed is as good a proof as hearing from it.
    """
    net, nodes = tree_mesh(12)
    me = nodes[0]
    gone_key = me.tree_targets(net.now)[-1]
    gone = next(n for n in nodes if n.key == gone_key)
    other = next(n for n in nodes if n.key not in (me.key, gone_key))
    me.handle_failure(gone_key, PushCtx(frozenset({me.key}), tree=1), net.now)
    assert gone_key not in me.tree_targets(net.now)
    t = net.now + 100
    gone.update_self(t, alias="back")
    item = gone.mesh.items_for([gone_key])
    me.handle_request(other.key, Push(MESH, tuple(item), 1), t + 10)
    rec = me.mesh.live_record(gone_key)
    assert rec is not None and rec.alias == "back"
    assert gone_key in me.tree_targets(t + 10)


def test_a_member_routed_around_gets_a_push_again_and_its_answer_ends_the_mark() -> None:
    """A cut's failed pushes left marks on members nobody pruned (a short cut).

    Such a member's record does not change when the cut heals, and it calls
    us only if we are its neighbour too: its part of our tree heard nothing
    along it until the mark's end (:data:`DOWN_MS`, 10 s; 300 simulated nodes,
    6 s cut: the last members live everywhere 6 s after the cut). A push
    along the tree goes to it again every :data:`DOWN_RETRY_MS`; its answer
    ends the mark.
    """
    net, nodes = tree_mesh(12)
    me = nodes[0]
    gone = me.tree_targets(net.now)[-1]
    t0 = net.now
    me.handle_failure(gone, PushCtx(frozenset({me.key}), tree=1), t0)
    assert gone not in me.tree_targets(t0)
    early = _tree_pushes(me.update_self(t0 + DOWN_RETRY_MS - 1, alias="a"))
    assert gone not in {c.to for c in early}  # not yet
    t = t0 + DOWN_RETRY_MS
    again = [c for c in _tree_pushes(me.update_self(t, alias="b")) if c.to == gone]
    assert len(again) == 1 and not again[0].unanswered
    assert gone not in me.tree_targets(t)  # still a guess: down until it answers
    later = _tree_pushes(me.update_self(t + 100, alias="c"))
    assert gone not in {c.to for c in later}  # once per DOWN_RETRY_MS
    _answer(me, again, t + 20, TAKES_DELTAS | FORWARDS_TREE)
    assert gone in me.tree_targets(t + 200)


def _offers_to(outs: list[object], to: bytes) -> set[bytes]:
    """Keys offered to ``to`` in ``outs``."""
    return {
        k
        for o in outs
        if isinstance(o, Call) and o.to == to and isinstance(o.ctx, OfferCtx)
        for k in o.ctx.keys
    }


def test_a_member_routed_around_is_offered_what_it_missed_when_it_answers_again() -> None:
    """What went along the tree while a member was routed around went to the
    next member of its part, not to it: back, it waited for its next pull
    (300 nodes, 6 s cut, seed 2: one member lacked 111 records until a pull
    3 s after the cut). Its first answer brings an offer of those keys."""
    net, nodes = tree_mesh(12)
    me = nodes[0]
    gone = me.tree_targets(net.now)[-1]
    author = next(n for n in nodes if n.key not in (me.key, gone))
    t0 = net.now
    me.handle_failure(gone, PushCtx(frozenset({me.key}), tree=1), t0)
    author.update_self(t0 + 50, alias="meanwhile")
    item = author.mesh.items_for([author.key])
    _, outs = me.handle_request(author.key, Push(MESH, tuple(item), 0), t0 + 100)
    assert gone not in {c.to for c in _tree_pushes(outs)}  # routed around
    t = t0 + DOWN_RETRY_MS
    again = [c for c in _tree_pushes(me.update_self(t, alias="b")) if c.to == gone]
    assert len(again) == 1
    told = me.handle_reply(
        gone, again[0].ctx, Ack(IN_REPLY, TAKES_DELTAS | FORWARDS_TREE, True), t + 20
    )
    assert author.key in _offers_to(told, gone)
    # once: the next answer offers nothing more
    nxt = [c for c in _tree_pushes(me.update_self(t + 1500, alias="c")) if c.to == gone]
    told = me.handle_reply(
        gone, nxt[0].ctx, Ack(IN_REPLY, TAKES_DELTAS | FORWARDS_TREE, True), t + 1520
    )
    assert _offers_to(told, gone) == set()


def test_a_member_pruned_while_routed_around_is_offered_what_went_by_when_back() -> None:
    """A cut: the failed push marks the member down, then its prune arrives.
    What went along the tree meanwhile is offered to it once it is back and
    answers (kept only while it was held live, the heal of 300 nodes after a
    6 s cut took 5.35 s on average over seeds 1-10, against 4.25)."""
    net, nodes = tree_mesh(12)
    me = nodes[0]
    gone_key = me.tree_targets(net.now)[-1]
    gone = next(n for n in nodes if n.key == gone_key)
    author = next(n for n in nodes if n.key not in (me.key, gone_key))
    t0 = net.now
    me.handle_failure(gone_key, PushCtx(frozenset({me.key}), tree=1), t0)
    rec = me.mesh.live_record(gone_key)
    assert rec is not None
    prune = Prune.create(author.identity, MESH, now_ms=t0 + 10, target_record=rec)
    me.handle_request(author.key, Push(MESH, (prune,), 1), t0 + 10)
    assert me.mesh.live_record(gone_key) is None
    author.update_self(t0 + 50, alias="meanwhile")
    item = author.mesh.items_for([author.key])
    me.handle_request(author.key, Push(MESH, tuple(item), 0), t0 + 100)
    me.tick(t0 + 400)  # what was held (batched) goes along the tree, around it
    t = t0 + 500
    back = rec.evolve(gone.identity, t)  # its refutation, through another member
    me.handle_request(author.key, Push(MESH, (back,), 1), t)
    assert gone_key in me.tree_targets(t)
    pushes = [c for c in _tree_pushes(me.update_self(t + 10, alias="b")) if c.to == gone_key]
    assert len(pushes) == 1
    ack = Ack(IN_REPLY, TAKES_DELTAS | FORWARDS_TREE, True)
    told = me.handle_reply(gone_key, pushes[0].ctx, ack, t + 30)
    assert author.key in _offers_to(told, gone_key)


def test_what_down_members_missed_is_bounded() -> None:
    """At most 64 members remembered, 512 keys each (docs/SECURITY.md)."""
    from smegmesh.core.treecast import MAX_PLAIN, MAX_UNANSWERED_KEYS

    net, nodes = tree_mesh(6)
    me = nodes[0]
    t0 = net.now
    for k in rand_keys(100, seed=7):  # members that never answered (made up)
        me.handle_failure(k, PushCtx(frozenset({me.key}), tree=1), t0)
    keys = rand_keys(600, seed=8)
    for i in range(0, 600, 50):
        me._tree_note_missed(me._tree_down(t0 + i), keys[i : i + 50], t0 + i)
    missed = me._treecast.missed
    assert len(missed) == MAX_PLAIN
    assert all(len(ks) <= MAX_UNANSWERED_KEYS for _, ks in missed.values())
    later = t0 + 2 * DOWN_MS
    me._tree_note_missed(set(), [], later)  # forgotten 20 s after the mark
    assert not missed
