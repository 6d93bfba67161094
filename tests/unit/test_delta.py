"""Records pushed as deltas of the version their receiver holds (core.delta)."""

from __future__ import annotations

import ipaddress

import pytest

from smegmesh.core.codec import ITEM_DELTA, Elided
from smegmesh.core.delta import (
    BASE_KEEP_MS,
    MAX_BASE_BYTES,
    MAX_BASES,
    MAX_CHANGES,
    TAKES_DELTAS,
    RecordBases,
    base_ref,
    delta_of,
)
from smegmesh.core.elide import DELTA_BASES_PER_MESSAGE, MAX_EXPANDED, elide, expand
from smegmesh.core.engine import Call, CallFailed, PushCtx, ReplyReceived
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.meshnode import MeshNode
from smegmesh.core.messages import IN_REPLY, Ack
from smegmesh.core.paging import item_size
from smegmesh.core.record import NodeRecord, RouteAdv
from smegmesh.core.state_gate import MAX_CLOCK_SKEW_MS
from smegmesh.core.sync import Push
from smegmesh.core.wire import decode
from smegmesh.testbed.founded import ident
from test_elide import LATER, _mesh, _state, _wire
from test_meshnode import mesh_of


def _delta(base: NodeRecord, new: NodeRecord) -> Elided:
    bases = RecordBases()
    bases.note(base, new, new.timestamp_ms)
    d = bases.delta_for(new)
    assert d is not None and d.kind == ITEM_DELTA
    return d


def test_a_restart_goes_as_a_delta_of_a_half_the_size_and_comes_back_whole() -> None:
    m, recs = _mesh()
    now = m.t + LATER
    st = _state(m, recs, now)
    new = recs[5].evolve(ident(7), now)
    d = _delta(recs[5], new)
    assert d.fields[5] == []  # nothing changed but version, time and signature
    assert item_size(d) <= 120 and item_size(d) < 0.65 * item_size(elide(new, now))
    got = expand(st, _wire([d], m.mesh_id).items)
    assert got.items == [new] and got.resolved == 1 and not got.errors
    changed, errors = st.apply_many(got.items, now)
    assert changed == {new.wg_key} and not errors


def test_a_delta_carries_what_changed_even_a_new_admission_chain() -> None:
    m, recs = _mesh()
    n = ident(9)
    m.admit(n, by=ident(2))  # admitted again: a new chain
    now = m.t + LATER
    for new in (
        recs[7].evolve(n, now, alias="renamed", description="moved"),
        recs[7].evolve(n, now, chain=m.chains[n.wg_public_key]),
    ):
        st = _state(m, recs, now)
        d = _delta(recs[7], new)
        assert 1 <= len(d.fields[5]) <= 2
        got = expand(st, _wire([d], m.mesh_id).items)
        assert got.items == [new]
        assert st.apply_many(got.items, now) == ({new.wg_key}, [])


def test_a_delta_of_another_base_is_unresolved_and_a_lying_one_fails_its_signature() -> None:
    m, recs = _mesh()
    now = m.t + LATER
    st = _state(m, recs, now)
    mid = recs[4].evolve(ident(6), now)
    new = mid.evolve(ident(6), now + 1)
    d = _delta(mid, new)  # st holds recs[4], not mid: cannot rebuild
    got = expand(st, [d])
    assert got.items == [] and got.unresolved == 1 and got.missing == [recs[4].wg_key]
    # a member that alters what changed: the rebuilt record's signature fails
    d = _delta(recs[4], recs[4].evolve(ident(6), now, alias="a"))
    lie = Elided(ITEM_DELTA, (*d.fields[:5], [[d.fields[5][0][0], "b"]]))
    got = expand(st, [lie])
    assert len(got.items) == 1
    changed, errors = st.apply_many(got.items, now)
    assert not changed and [e.field for e in errors] == ["signature"]


def test_a_record_named_by_8_bytes_in_a_short_push_resolves_as_by_16() -> None:
    """Thirty-second session: a push to a member that takes short names names
    a delta's base and a prune's target record by 8 bytes of the hash of the
    signature, not 16 (``elide.shortened``). A node of now resolves both
    lengths; any other, or a name of another record, does not."""
    from smegmesh.core.elide import elide, shortened

    m, recs = _mesh()
    now = m.t + LATER
    d = _delta(recs[5], recs[5].evolve(ident(7), now))
    prune = elide(m.prune(ident(3), recs[7], now), now)
    assert isinstance(prune, Elided)
    for item, rec in ((d, recs[5]), (prune, recs[7])):
        at = item.fields.index(base_ref(rec))
        assert len(base_ref(rec)) == 16 and shortened(item).fields[at] == base_ref(rec)[:8]
        for ref, resolves in (
            (base_ref(rec), True),
            (base_ref(rec)[:8], True),
            (base_ref(rec)[:12], False),
            (base_ref(recs[2])[:8], False),
        ):
            named = Elided(item.kind, (*item.fields[:at], ref, *item.fields[at + 1 :]))
            got = expand(_state(m, recs, now), [named])
            assert (len(got.items) == 1) is resolves and not got.errors, (item.kind, len(ref))


@pytest.mark.parametrize(
    "changes",
    [
        [[1, b"k" * 32]],  # the key
        [[2, b"s" * 32]],  # the sign key
        [[0, "other-mesh"]],  # the mesh
        [[9, "fd00::1"]],  # the address
        [[3, 5]],  # the version (a field of its own)
        [[20, b"x" * 64]],  # the signature (a field of its own)
        [[99, 1]],  # no such field
        [[-1, 1]],
        [[10, "a"], [10, "b"]],  # twice
        [[10, "a"]] * (MAX_CHANGES + 1),
        [["10", "a"]],
        [[10]],
        "not a list",
    ],
)
def test_a_hostile_delta_is_an_error_never_a_crash(changes: object) -> None:
    m, recs = _mesh()
    now = m.t + LATER
    st = _state(m, recs, now)
    d = _delta(recs[2], recs[2].evolve(ident(4), now))
    got = expand(st, [Elided(ITEM_DELTA, (*d.fields[:5], changes))])
    assert got.items == [] and len(got.errors) == 1
    if changes == [[10, "a"]] * (MAX_CHANGES + 1):  # refused for the count, before the rest
        assert "at most" in str(got.errors[0])


def test_a_hostile_deltas_reason_is_one_text_whatever_field_it_names() -> None:
    """The reason named the sender's field index ("cannot change field 12345"):
    the daemon counts dropped items per distinct reason (daemon/ratelog.py), so
    a member sending deltas with ever new indices made ever new reasons."""
    m, recs = _mesh()
    now = m.t + LATER
    st = _state(m, recs, now)
    d = _delta(recs[2], recs[2].evolve(ident(4), now))
    reasons = set()
    for i in (-1, 0, 2, 3, 99, 12345, 2**40):
        got = expand(st, [Elided(ITEM_DELTA, (*d.fields[:5], [[i, 1]]))])
        assert got.items == [] and len(got.errors) == 1
        reasons.add(str(got.errors[0]))
    got = expand(st, [Elided(ITEM_DELTA, (*d.fields[:5], [[10, "a"], [10, "b"]]))])
    reasons.add(str(got.errors[0]))
    assert len(reasons) == 1 and not any(c.isdigit() for c in reasons.pop())


def test_bases_are_bounded_kept_a_while_and_good_only_for_the_record_that_replaced_them() -> None:
    t = 1_700_000_000_000
    ids = [NodeIdentity.from_seed(i.to_bytes(32, "big")) for i in range(MAX_BASES + 5)]
    recs = [NodeRecord.create(i, "m", version=t, now_ms=t) for i in ids]
    bases = RecordBases()
    new = recs[0].evolve(ids[0], t + 1)
    bases.note(new, recs[0], t)  # not a replacement: ignored
    assert len(bases) == 0
    bases.note(recs[0], new, t)
    assert bases.delta_for(new) is not None
    assert bases.delta_for(new.evolve(ids[0], t + 2)) is None  # another version
    for i, r in enumerate(recs[1:], start=1):  # many members replaced: the oldest go
        bases.note(r, r.evolve(ids[i], t + 1), t)
    assert len(bases) == MAX_BASES and bases.delta_for(new) is None
    last = recs[-1].evolve(ids[-1], t + 1)
    assert bases.delta_for(last) is not None
    # every base older than BASE_KEEP_MS (by this node's clock) goes with the next one
    again = recs[1].evolve(ids[1], t + 10)
    bases.note(recs[1].evolve(ids[1], t + 1), again, t + BASE_KEEP_MS + 1)
    assert len(bases) == 1 and bases.delta_for(again) is not None


def test_bases_expire_by_the_nodes_clock_not_by_a_records_time() -> None:
    """Review: a record stamped minutes ahead (within the clock skew a state
    takes) flushed every base, turning deltas off for every member."""
    m, recs = _mesh()
    now = m.t + LATER
    st = _state(m, recs, now)
    for k in range(1, 8):
        assert st.apply(recs[k].evolve(ident(k + 2), now), now)
    assert len(st.bases) == 7
    assert st.apply(recs[0].evolve(ident(2), now + MAX_CLOCK_SKEW_MS // 2), now)
    assert len(st.bases) == 8


def test_of_two_records_of_one_version_the_winner_gets_no_stale_delta() -> None:
    """Review: an owner that signs two records of one version; the state keeps
    the higher signature, and the delta made for the first rebuilt the loser."""
    m, recs = _mesh()
    now = m.t + LATER
    base, who = recs[3], ident(5)
    two = [
        NodeRecord.create(
            who,
            m.mesh_id,
            version=base.version + 1,
            now_ms=now,
            alias=alias,
            chain=base.chain,
            control_endpoint=base.control_endpoint,
            tls_fp=base.tls_fp,
        )
        for alias in ("aaa", "bbb")
    ]
    lo, hi = sorted(two, key=lambda r: r.signature)
    st = _state(m, recs, now)
    assert st.apply(lo, now) and st.bases.delta_for(lo) is not None
    assert st.apply(hi, now) and st.record(base.wg_key) is hi
    assert st.bases.delta_for(hi) is None and st.bases.delta_for(lo) is None


def test_deltas_against_a_large_held_record_cost_bounded_work() -> None:
    """Review: rebuilding costs work by the record held, not by the delta: 256
    copies of a 106-byte delta against a 74 KB record (a bridge's routes) took
    1.6 s of one step. A key is now expanded once a message, a delta of a
    record over MAX_BASE_BYTES is refused (never sent), and deltas rebuild at
    most DELTA_BASES_PER_MESSAGE bytes a message."""
    m, recs = _mesh()
    now = m.t + LATER
    path = tuple(f"mesh-{j:02d}-abcdefghij" for j in range(16))
    routes = [
        RouteAdv(str(ipaddress.IPv6Network(f"fd{j // 256:02x}:{j % 256:x}::/64")), path)
        for j in range(230)
    ]
    big = recs[3].evolve(ident(5), now, routes=routes)
    assert len(big.signed_payload()) > MAX_BASE_BYTES
    assert delta_of(big.evolve(ident(5), now + 1), big) is None  # never sent
    st = _state(m, recs, now)
    assert st.apply(big, now)
    fake = Elided(ITEM_DELTA, (big.wg_key[:8], base_ref(big), big.version + 1, now, bytes(64), []))
    got = expand(st, _wire([fake] * MAX_EXPANDED, m.mesh_id).items)
    assert len(got.errors) == 1 and not got.items  # once, and refused (not 256 rebuilds)
    # many keys, each a delta of a record under the cap (~6.9 KB): at most the budget
    m, recs = _mesh(48)
    mid = [r.evolve(ident(k + 2), now, routes=routes[:20]) for k, r in enumerate(recs)]
    assert sum(len(r.signed_payload()) for r in mid) > DELTA_BASES_PER_MESSAGE
    st = _state(m, recs, now)
    assert all(st.apply(r, now) for r in mid)
    each = len(mid[0].signed_payload())
    deltas = [
        Elided(ITEM_DELTA, (r.wg_key[:8], base_ref(r), r.version + 1, now, bytes(64), []))
        for r in mid
    ]
    got = expand(st, deltas * 3)
    rebuilt = len(got.items) + len(got.errors)
    assert 0 < rebuilt * each <= DELTA_BASES_PER_MESSAGE
    assert got.unresolved == len(mid) - rebuilt  # the rest: pulled by a sync session


def test_no_delta_where_an_extension_comes_or_goes_or_the_key_differs() -> None:
    m, recs = _mesh(3)
    now = m.t + LATER
    rec = recs[0]
    assert delta_of(rec.evolve(ident(2), now, nat_endpoint="192.0.2.1:51820"), rec) is None
    assert delta_of(recs[1].evolve(ident(3), now), rec) is None
    assert delta_of(rec, rec) is None  # not newer


def _settled_pair() -> tuple[MeshNode, MeshNode, int]:
    """Two nodes of a mesh of four after 5 s of gossip, and a time just after."""
    net, nodes = mesh_of(4)
    net.run_until(net.now + 5000)
    return nodes[0], nodes[1], net.now + 1


def test_deltas_go_to_members_until_a_push_of_them_fails_and_again_once_an_ack_says_so() -> None:
    a, b, t = _settled_pair()

    def push_to_b(t: int) -> Call:
        own_now = a.mesh.record(a.key)
        assert own_now is not None
        new = own_now.evolve(a.identity, t)
        assert a.mesh.apply(new, t)
        calls = a._push_calls([b.key], frozenset({a.key}), now_ms=t)
        assert len(calls) == 1 and isinstance(calls[0], Call)
        return calls[0]

    first = push_to_b(t)
    assert isinstance(first.ctx, PushCtx) and first.ctx.deltas
    assert isinstance(first.msg, Push) and isinstance(first.msg.items[0], Elided)
    a.step(CallFailed(first, t + 5))  # an older node refuses what it cannot decode
    plain = push_to_b(t + 10)
    assert isinstance(plain.ctx, PushCtx) and not plain.ctx.deltas
    assert isinstance(plain.msg, Push) and isinstance(plain.msg.items[0], NodeRecord)
    a.step(ReplyReceived(plain, Ack(IN_REPLY, 0, True), t + 15))  # an older node's ack
    assert not push_to_b(t + 20).ctx.deltas  # type: ignore[union-attr]
    # a newer node says so in its ack of any push
    reply, _ = b.handle_request(a.key, plain.msg, t + 21)
    assert isinstance(reply, Ack) and reply.probe_id & TAKES_DELTAS
    a.step(ReplyReceived(plain, reply, t + 22))
    assert push_to_b(t + 30).ctx.deltas  # type: ignore[union-attr]


def test_short_names_and_times_go_to_a_member_whose_ack_said_it_takes_them() -> None:
    """Thirty-second session: a delta goes with an 8-byte base name and its
    time as ``[time - version]`` (2 bytes, not 9) to a member whose ack of a
    push at its current record version said it takes them (``TAKES_SHORT``);
    to a node of before (its ack has no such bit; found in review: the 8-byte
    names first went to every member, and a node of before resolves none) and
    to one that restarted since, in full."""
    from smegmesh.core.delta import TAKES_SHORT
    from smegmesh.core.elide import shortened

    m, recs = _mesh()
    now = m.t + LATER
    new = recs[5].evolve(ident(7), now)
    d = _delta(recs[5], new)
    short = shortened(d)
    assert short.fields[3] == [new.timestamp_ms - new.version]
    assert item_size(short) <= item_size(d) - 15
    got = expand(_state(m, recs, now), _wire([short], m.mesh_id).items)
    assert got.items == [new] and not got.errors  # the signature checks out
    lie = Elided(ITEM_DELTA, (*short.fields[:3], [short.fields[3][0] + 1], *short.fields[4:]))
    st = _state(m, recs, now)
    assert st.apply_many(expand(st, [lie]).items, now)[1]  # another time: refused

    a, b, t = _settled_pair()

    def pushed(t: int) -> tuple[int, object]:
        """The base name's length and the time of a delta a pushes to b."""
        own = a.mesh.record(a.key)
        assert own is not None and a.mesh.apply(own.evolve(a.identity, t), t)
        (call,) = a._push_calls([b.key], frozenset({a.key}), now_ms=t)
        assert isinstance(call, Call) and isinstance(call.msg, Push)
        item = call.msg.items[0]
        assert isinstance(item, Elided) and item.kind == ITEM_DELTA
        return len(item.fields[1]), item.fields[3]

    assert pushed(t) == (8, [0])  # b's acks of the pushes so far said it takes them
    own_b = b.mesh.record(b.key)
    assert own_b is not None
    a.mesh.apply(own_b.evolve(b.identity, t + 1), t + 1)  # b restarted: maybe older now
    assert pushed(t + 10)[0] == 16
    call = a._push_calls([b.key], frozenset({a.key}), now_ms=t + 11)[0]
    assert isinstance(call, Call) and isinstance(call.msg, Push)
    reply, _ = b.handle_request(a.key, call.msg, t + 12)
    assert isinstance(reply, Ack) and reply.probe_id & TAKES_SHORT
    a.step(ReplyReceived(call, reply, t + 13))
    assert pushed(t + 20) == (8, [0])
    a.step(ReplyReceived(call, Ack(IN_REPLY, TAKES_DELTAS, True), t + 21))  # of before
    length, ts = pushed(t + 30)
    assert length == 16 and type(ts) is int


def test_a_push_without_deltas_goes_with_short_names_too() -> None:
    """Found measuring at 3,000 nodes: a push whose items held no record to send
    as a delta (a batch of prunes, most of the churn bytes) went in full to
    every member, short names or not. It goes short to those that take them."""
    from smegmesh.core.codec import ITEM_PRUNE
    from smegmesh.core.delta import TAKES_SHORT
    from smegmesh.testbed.founded import member_node

    m, recs = _mesh()
    now = m.t + LATER
    target, b = recs[7], recs[2]
    node = member_node(ident(4), m.mesh_id, _state(m, recs, now))
    prune = m.prune(ident(4), target, now)
    assert node.mesh.apply(prune, now)

    def pushed() -> Elided:
        (call,) = node._push_calls([b.wg_key], frozenset({target.wg_key}), now_ms=now)
        assert isinstance(call, Call) and isinstance(call.msg, Push)
        assert isinstance(call.ctx, PushCtx) and not call.ctx.deltas
        (item,) = call.msg.items
        assert isinstance(item, Elided) and item.kind == ITEM_PRUNE
        return item

    assert pushed().fields[6] == base_ref(target)  # b said nothing yet: 16 bytes
    node.tags.note_push_ack(b.wg_key, Ack(IN_REPLY, TAKES_DELTAS | TAKES_SHORT, True), b.version)
    short = pushed()
    assert short.fields[6] == base_ref(target)[:8]
    got = expand(_state(m, recs, now), _wire([short], m.mesh_id).items)
    assert got.items == [prune] and not got.errors


def test_a_restart_reaches_every_member_as_deltas_over_the_wire() -> None:
    net, nodes = mesh_of(8)
    net.run_until(net.now + 5000)
    a = nodes[0]
    own = a.mesh.record(a.key)
    assert own is not None
    before = len(net.wire)
    new = own.evolve(a.identity, net.now, alias="back")
    net.handle_outs(a, a._publish(new, net.now))
    net.run_until(net.now + 3000)
    assert all(n.mesh.record(a.key) == new for n in nodes)
    msgs = [decode(w) for w in net.wire[before:]]
    items = [i for m in msgs if isinstance(m, Push) for i in m.items]
    deltas = [i for i in items if isinstance(i, Elided) and i.kind == ITEM_DELTA]
    assert deltas and len(deltas) == len(items)  # every push of it: a delta
