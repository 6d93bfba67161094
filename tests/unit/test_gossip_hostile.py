"""A member turned bad, on the gossip handlers (Push, Offer, PingReq): each finding
of the nineteenth session's review, reproduced first as a test that failed."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence

from smegmesh.core.identity import verify_many
from smegmesh.core.prune_budget import BURST, PruneBudget
from smegmesh.core.record import NodeRecord, Role
from smegmesh.core.state import MeshState
from smegmesh.core.state_gate import OVER_PRUNE_BUDGET
from smegmesh.core.sync import Push
from smegmesh.sim.simulator import Simulator
from smegmesh.testbed.founded import Mesh, ident, member_node


class CountingVerifier:
    """``verify_many`` that counts the signatures it checked."""

    def __init__(self) -> None:
        self.checked = 0

    def __call__(self, jobs: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
        self.checked += len(jobs)
        return verify_many(jobs)


def _members(n: int) -> tuple[Mesh, list[NodeRecord], int]:
    m = Mesh()
    ids = [ident(i) for i in range(2, 2 + n)]
    for i in ids:
        m.admit(i)
    recs = [m.record(i) for i in ids]
    return m, recs, m.t + 10_000


def _state(m: Mesh, recs: list[NodeRecord], now: int, verifier: CountingVerifier) -> MeshState:
    st = MeshState(m.mesh_id, admission=True, verifier=verifier)
    assert st.apply(m.founding, now)
    changed, errors = st.apply_many(recs, now)
    assert not errors and len(changed) == len(recs)
    return st


def _forged(r: NodeRecord) -> NodeRecord:
    """A newer version of ``r`` that its owner never signed."""
    return dataclasses.replace(
        r, version=r.version + 5, timestamp_ms=r.timestamp_ms + 5, signature=bytes(64)
    )


def test_a_forgery_ends_the_checking_of_its_message() -> None:
    """Each forged newer version cost a signature check: a member's 1 MiB push of
    2,300 of them held the event loop for ~250 ms. A forgery now stops the
    checking of the rest of its batch: an honest member never relays one (it
    checked what it holds), and a forger could leave the valid items out anyway.
    """
    m, recs, now = _members(60)
    v = CountingVerifier()
    st = _state(m, recs, now, v)
    before = {r.key: st.get(r.key) for r in recs}
    v.checked = 0
    changed, errors = st.apply_many([_forged(r) for r in recs], now)
    assert not changed and len(errors) == len(recs)
    assert v.checked == 1, f"{v.checked} signatures checked for one forged message"
    assert all(st.get(k) == r for k, r in before.items())
    # the reasons say which were checked and which were not
    assert "invalid signature" in str(errors[0])
    assert any("not checked" in str(e) for e in errors)


def test_valid_items_of_an_honest_message_are_all_checked_and_kept() -> None:
    m, recs, now = _members(40)
    v = CountingVerifier()
    st = _state(m, recs[:20], now, v)
    v.checked = 0
    changed, errors = st.apply_many(recs[20:], now)
    assert not errors and changed == {r.key for r in recs[20:]}
    assert v.checked >= 20  # every new record (and its unknown certificate) checked


def test_many_forged_copies_of_few_records_cost_linear_time() -> None:
    """Each forgery that lost sent its slot round again, and every round compared
    each pending item with each candidate: a 1 MiB message of forged versions of
    a few records cost time quadratic in its items (2,000 copies of 4 records:
    0.73 s on the old code, 2,300 fit in 1 MiB; now ~0.04 s). Four times the
    copies must cost about four times the time, not sixteen (the best of five
    runs each, of 250 and 1,000 copies: a ratio of times long enough that a
    loaded machine does not fail it; 125 and 500, best of three, failed once in
    a unit run beside two others on 2 cores)."""
    m, recs, now = _members(4)

    def copies_of(n: int) -> list[NodeRecord]:
        return [
            dataclasses.replace(r, version=r.version + j, timestamp_ms=r.timestamp_ms + j)
            for j in range(1, n + 1)
            for r in recs
        ]

    def once(copies: list[NodeRecord]) -> float:
        v = CountingVerifier()
        st = _state(m, recs, now, v)
        v.checked = 0
        t0 = time.perf_counter()
        changed, errors = st.apply_many(copies, now)
        took = time.perf_counter() - t0
        assert not changed and len(errors) == len(copies) and v.checked == 1
        return took

    # The two sizes alternate, so that both see the same load (a CI run beside a
    # 3,000-node simulation failed the best of five of each run one after the other).
    few, many = copies_of(250), copies_of(1000)
    runs = [(once(few), once(many)) for _ in range(5)]
    small, large = min(r[0] for r in runs), min(r[1] for r in runs)
    assert large < 8 * small, f"250 copies: {small * 1000:.1f} ms, 1,000: {large * 1000:.1f} ms"


def _honest_kb_per_s(n: int, period_ms: int, seconds: int = 5) -> float:
    """KB/s each other member sends while member 0 publishes a new version every ``period_ms``."""
    sim = Simulator.steady(n, seed=3)
    sim.run_for(5_000)
    tx0 = list(sim.traffic.tx)
    end = sim.now + seconds * 1000
    made = [0]

    def publish() -> None:
        made[0] += 1
        sim.command(0, sim.nodes[0].node.update_self(sim.now, description=f"v{made[0]}"))
        if sim.now + period_ms < end:
            sim.at(sim.now + period_ms, publish)

    sim.at(sim.now + 1, publish)
    sim.run_until(end)
    sent = sum(sim.traffic.tx[i] - tx0[i] for i in range(1, n))
    return sent / (n - 1) / seconds / 1000


def test_a_member_changing_its_record_without_end_is_not_forwarded_at_once_each_time() -> None:
    """Every node forwarded each new version of a record at once (a triggered push
    to ``branch`` members): a member publishing 50 versions a second made each
    other member of 60 send 10.0 KB/s, 10.2x what one version a second costs.
    Now a received key is pushed at once at most three times per three rounds;
    its later versions go with the periodic rounds (their latest only): 1.6x."""
    calm = _honest_kb_per_s(60, 1_000)
    storm = _honest_kb_per_s(60, 20)
    assert storm < 2.5 * calm, f"{storm:.2f} KB/s against {calm:.2f}"


def prune_storm(n: int, seed: int = 5, seconds: int = 20, budget: bool = True) -> dict[str, float]:
    """Member 0 prunes every other member at once (their current versions).

    ``budget=False``: the nodes take any number of prunes (before core.prune_budget).

    Returns the (observer, member) pairs that saw the member not live, how
    long (ms, median and most), how many still do at the end, and the KB each
    other member and the attacker sent meanwhile.
    """
    sim = Simulator.steady(n, seed=seed)
    if not budget:
        for sn in sim.nodes:
            sn.node.mesh.prune_budget = None
    sim.run_for(10_000)
    tx0 = list(sim.traffic.tx)
    down: dict[tuple[int, bytes], list[int]] = {}  # since (or -1), total ms

    def observe(i: int, keys: frozenset[bytes], now: int) -> None:
        st = sim.nodes[i].node.mesh
        for k in keys - {sim.nodes[i].key}:
            d = down.setdefault((i, k), [-1, 0])
            live = st.live_record(k) is not None
            if not live and d[0] < 0:
                d[0] = now
            elif live and d[0] >= 0:
                d[1] += now - d[0]
                d[0] = -1

    sim.observers.append(observe)
    attacker = sim.nodes[0].node
    outs = [o for sn in sim.nodes[1:] for o in attacker._declare_dead(sn.key, sim.now)]
    sim.command(0, outs)
    sim.run_for(seconds * 1000)
    spans = sorted(t for _s, t in down.values() if t > 0)
    refuted = [sn.node.refuted for sn in sim.nodes[1:]]
    return {
        # refuted prunes counted by the others: the attacker's, and anyone else's
        "refuted_by_attacker": sum(r.by_pruner.get(sim.nodes[0].key, 0) for r in refuted),
        "refuted_by_others": sum(r.total for r in refuted)
        - sum(r.by_pruner.get(sim.nodes[0].key, 0) for r in refuted),
        "pairs_down": len(spans),
        "pairs": (n - 1) * (n - 2),
        "down_p50_ms": spans[len(spans) // 2] if spans else 0,
        "down_total_s": sum(spans) / 1000,
        "down_max_ms": spans[-1] if spans else 0,
        "down_at_end": sum(1 for s, _t in down.values() if s >= 0),
        "kb_per_member": sum(sim.traffic.tx[i] - tx0[i] for i in range(1, n)) / (n - 1) / 1000,
        "kb_attacker": (sim.traffic.tx[0] - tx0[0]) / 1000,
    }


def test_a_member_pruning_every_live_member_is_refuted_everywhere_and_bounded() -> None:
    """A member may prune live members (docs/SECURITY.md). What holds: every prune
    is refuted, everywhere, within seconds; each node takes a pruner's prunes
    within its budget (core.prune_budget), so far fewer members are ever seen
    dead; and the pruner is named: each node counts the refuted prunes by
    pruner (core.refuted), for its log and metrics. Figures at 100 and 300
    nodes from this function in SECURITY.md."""
    r = prune_storm(60, seconds=10)
    assert r["pairs_down"] > 0 and r["down_at_end"] == 0, r
    # The run depends on the hash seed (set and dict order). Over 160 seeds
    # (PYTHONHASHSEED 0-159, simulated time, twenty-sixth session) the
    # longest pair was down 0.7-3.9 s, the median pair 107-113 ms; one CI
    # worker saw 5.3 s against a 5 s bound.
    assert r["down_p50_ms"] < 500, r
    assert r["down_max_ms"] < 8_000, r
    assert r["refuted_by_attacker"] >= r["pairs_down"] // 2, r
    assert r["refuted_by_others"] <= r["refuted_by_attacker"] // 20, r
    unbounded = prune_storm(60, seconds=10, budget=False)  # 1,821 pairs; 999 with it
    assert r["pairs_down"] < 0.7 * unbounded["pairs_down"], (r, unbounded)


def test_a_pruner_gets_a_budget_of_prunes_at_each_node() -> None:
    """core.prune_budget: a node takes BURST prunes by one other pruner at once,
    then RATE_PER_S a second; its own prunes, prunes of itself and a peer's
    prunes of its own clients are not counted; forgeries in a pruner's name do
    not spend its budget. Until the nineteenth session a member could prune every live member
    at once."""
    m, recs, now = _members(40)
    pruner = ident(2)
    st = _state(m, recs, now, CountingVerifier())
    me = ident(3)
    st.prune_budget = PruneBudget(exempt=me.wg_public_key)
    others = [r for r in recs if r.wg_key not in (pruner.wg_public_key, me.wg_public_key)]
    # forgeries first: they fail their signature and are not charged
    for r in others[:20]:
        st.apply_many([dataclasses.replace(m.prune(pruner, r, now), signature=bytes(64))], now)
    prunes = [m.prune(pruner, r, now) for r in others[:20]]
    changed, errors = st.apply_many(prunes, now)
    assert len(changed) == BURST and len(errors) == 20 - BURST
    assert all(e.message == OVER_PRUNE_BUDGET for e in errors)
    # refused, not lost: the same prune taken once the budget allows
    changed, errors = st.apply_many(prunes[BURST:], now + 1_000)
    assert len(changed) == 1 and len(errors) == 3
    # our own prunes are not counted, nor are prunes of ourselves (we refute them)
    mine = [m.prune(me, r, now) for r in others[20:37]]
    changed, errors = st.apply_many(mine, now + 1_000)
    assert not errors and len(changed) == len(mine) == 17
    of_me = m.prune(pruner, next(r for r in recs if r.wg_key == me.wg_public_key), now)
    changed, errors = st.apply_many([of_me], now + 1_000)
    assert not errors and changed == {me.wg_public_key}


def test_a_peers_prunes_of_its_own_clients_are_not_counted() -> None:
    m, recs, now = _members(30)
    peer = ident(2)
    clients = [
        m.record(ident(i), role=Role.CLIENT, assigned_peer=peer.wg_public_key) for i in range(3, 31)
    ]
    st = _state(m, [recs[0], *clients], now, CountingVerifier())
    st.prune_budget = PruneBudget()
    changed, errors = st.apply_many([m.prune(peer, c, now) for c in clients], now)
    assert not errors and len(changed) == len(clients)


def test_a_member_pruned_by_a_pruner_over_its_budget_is_told_at_once() -> None:
    """A prune taken from a pruner that went over its budget lately is pushed to
    the member it prunes (most likely alive, and unaware: the nodes that would
    have told it refused the prune), so it refutes at once. An honest pruner's
    prunes are not pushed so (their members are mostly dead)."""
    from smegmesh.core.engine import Call

    m, recs, now = _members(30)
    me, pruner = ident(3), ident(2)
    node = member_node(me, m.mesh_id, _state(m, recs, now, CountingVerifier()))
    others = [r for r in recs if r.wg_key not in (me.wg_public_key, pruner.wg_public_key)]

    def pushes_to_victims(outs: list[object], victims: set[bytes]) -> set[bytes]:
        return {
            o.to
            for o in outs
            if isinstance(o, Call) and isinstance(o.msg, Push) and o.to in victims
        }

    first = [m.prune(pruner, r, now) for r in others[:BURST]]
    outs = node.handle_request(pruner.wg_public_key, Push(m.mesh_id, tuple(first)), now)[1]
    assert not pushes_to_victims(outs, {r.wg_key for r in others[:BURST]})  # within budget
    over = m.prune(pruner, others[BURST], now)
    node.handle_request(pruner.wg_public_key, Push(m.mesh_id, (over,)), now)  # refused
    late = m.prune(pruner, others[BURST + 1], now)
    outs = node.handle_request(pruner.wg_public_key, Push(m.mesh_id, (late,)), now + 1_000)[1]
    assert pushes_to_victims(outs, {others[BURST + 1].wg_key}) == {others[BURST + 1].wg_key}


def test_a_bulk_transfer_takes_a_long_lived_pruners_history_at_once() -> None:
    """A join reply (or restore) holds prunes made over hours, many by one
    long-lived peer: absorbed whole, not within the pruner's budget."""

    m, recs, now = _members(30)
    pruner = ident(2)
    st = MeshState(m.mesh_id, admission=True)
    assert st.apply(m.founding, now)
    joiner = member_node(ident(90), m.mesh_id, st)
    gone = [r for r in recs if r.wg_key != pruner.wg_public_key][: BURST + 8]
    joiner.absorb([*recs, *(m.prune(pruner, r, now) for r in gone)], now)
    assert all(st.get_prune(r.wg_key) is not None for r in gone)
    assert st.prune_budget is not None  # and the budget is back for what follows


def test_the_prune_budget_tracks_a_bounded_number_of_pruners() -> None:
    b = PruneBudget(burst=1, max_pruners=50)
    for i in range(500):
        key = i.to_bytes(32, "big")
        assert b.take(key, b"t" * 32, i) and not b.take(key, b"t" * 32, i)
        assert b.suspect(key, i)
    assert len(b._buckets) <= 50 and len(b._refused_at) <= 51


def _pruned_then_back(after_ms: int) -> tuple[int, int]:
    """Member 4 pruned by member 2 at a node, back ``after_ms`` later: (refuted
    prunes the node counted, pushes of the refutation it sent on at once)."""
    from smegmesh.core.engine import Call

    m = Mesh()
    ids = [ident(i) for i in range(2, 22)]
    for i in ids:
        m.admit(i)
    recs = [  # reachable: they have control endpoints
        m.record(i, control_endpoint=f"[2001:db8::{n + 2:x}]:4000", tls_fp=bytes(32))
        for n, i in enumerate(ids)
    ]
    now = m.t + 10_000
    pruner, me, x = ident(2), ident(3), ident(4)
    node = member_node(me, m.mesh_id, _state(m, recs, now, CountingVerifier()))
    xrec = next(r for r in recs if r.wg_key == x.wg_public_key)
    pushed = 0
    t = now
    for _ in range(3):  # prune, refutation; again and again within a throttle window
        node.handle_request(pruner.wg_public_key, Push(m.mesh_id, (m.prune(pruner, xrec, t),)), t)
        t += after_ms
        xrec = xrec.evolve(x, t)
        outs = node.handle_request(ident(5).wg_public_key, Push(m.mesh_id, (xrec,), 1), t)[1]
        pushed += sum(1 for o in outs if isinstance(o, Call) and isinstance(o.msg, Push))
        t += 100
    return node.refuted.total, pushed


def test_a_refutation_goes_on_at_once_however_often_its_member_was_pruned() -> None:
    """Second read (helper review): prune, refutation, prune spent the member's
    throttle, and its second refutation waited for the rounds. A member back
    alive now always goes on at once."""
    _refuted, pushed = _pruned_then_back(200)
    assert pushed >= 3 * 2, pushed  # each refutation to branch - 1 others at once


def test_a_member_back_minutes_after_a_real_crash_does_not_blame_its_pruner() -> None:
    """Second read: every restart, suspend or healed partition counted a refuted
    prune against the honest member that saw the failure (a WARNING on every
    node). Only a refutation within REFUTED_WITHIN_MS of the prune counts."""
    assert _pruned_then_back(5 * 60_000)[0] == 0
    assert _pruned_then_back(200)[0] == 3


def _sync_to(node: object, src: bytes, other: MeshState, now: int) -> int:
    """Run one sync session from ``other`` (member ``src``'s state) to ``node``: merged there."""
    from smegmesh.core.sync import SyncSession

    session = SyncSession.initiator(other, now, rng=random.Random(1))
    msg = session.start()
    merged = 0
    while msg is not None:
        reply, _outs = node.handle_request(src, msg, now)  # type: ignore[attr-defined]
        assert reply is not None
        msg, got = session.receive(reply, now)
        merged += len(got)
    return merged


def test_a_refutation_that_comes_in_a_sync_session_is_counted_against_its_pruner() -> None:
    """Second read (nineteenth session) left it open: items a sync session
    merged skipped the bookkeeping of a push's (refuted prunes counted per
    pruner, a member back alive pushed on at once, a suspect pruner's prunes
    told to their members). A healed partition brings most refutations so."""

    m, recs, now = _members(20)
    pruner, me, x, relay = ident(2), ident(3), ident(4), ident(5)
    node = member_node(me, m.mesh_id, _state(m, recs, now, CountingVerifier()))
    xrec = next(r for r in recs if r.wg_key == x.wg_public_key)
    node.handle_request(pruner.wg_public_key, Push(m.mesh_id, (m.prune(pruner, xrec, now),)), now)
    assert node.mesh.live_record(x.wg_public_key) is None
    back = xrec.evolve(x, now + 200)
    other = _state(m, [back if r is xrec else r for r in recs], now, CountingVerifier())
    _sync_to(node, relay.wg_public_key, other, now + 300)
    assert node.mesh.live_record(x.wg_public_key) == back
    assert node.refuted.total == 1 and node.refuted.by_pruner == {pruner.wg_public_key: 1}


def test_a_sync_session_does_not_count_prunes_held_back_by_the_budget_as_garbage() -> None:
    """A session's ``rejected`` counted the prunes it brought over their
    pruner's budget as invalid items, as a push's count did before the
    nineteenth session."""
    from smegmesh.core.sync import SyncSession

    m, recs, now = _members(40)
    pruner = ident(2)
    others = [r for r in recs if r.wg_key != pruner.wg_public_key]
    st = _state(m, recs, now, CountingVerifier())
    st.prune_budget = PruneBudget()
    theirs = _state(m, recs, now, CountingVerifier())
    prunes = [m.prune(pruner, r, now) for r in others[: BURST + 5]]
    assert len(theirs.apply_many(prunes, now)[0]) == BURST + 5
    session = SyncSession.initiator(theirs, now, rng=random.Random(1))
    sessions: dict[tuple[bytes, int], SyncSession] = {}
    msg = session.start()
    mine = None
    while msg is not None:
        reply, mine, _ = SyncSession.respond(st, sessions, b"t" * 32, msg, now)
        msg, _got = session.receive(reply, now)
    assert mine is not None and len(mine.merged) == BURST and mine.rejected == 0


def test_forgeries_that_come_in_a_sync_session_are_counted_as_a_pushs_are() -> None:
    """Review (twentieth session): a session counted its refused items in the
    session only, which nothing read: a member could feed forgeries through
    sync steps and never appear in the node's count and log of refused items."""

    m, recs, now = _members(10)
    me, bad = ident(3), ident(5)
    node = member_node(me, m.mesh_id, _state(m, recs, now, CountingVerifier()))
    theirs = MeshState(m.mesh_id, admission=True, verifier=lambda jobs: [True] * len(jobs))
    assert theirs.apply(m.founding, now)
    forged = _forged(recs[4])
    theirs.apply_many([*(r for r in recs if r is not recs[4]), forged], now)
    assert theirs.record(forged.wg_key) == forged
    _sync_to(node, bad.wg_public_key, theirs, now)
    assert node.rejected == 1 and "signature" in node.last_rejects[0]
