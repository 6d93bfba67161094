"""Offers (announce, then send on request): what is wanted, the codec, the engine's use."""

from __future__ import annotations

from dataclasses import replace

import pytest

from smegmesh.core.codec import ITEM_DELTA, Elided, WireError
from smegmesh.core.engine import Call, Message, OfferCtx, Out, PushCtx, ReplyReceived
from smegmesh.core.gossip import full_hops
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.meshnode import SYNCED_HOPS, MeshNode
from smegmesh.core.messages import IN_REPLY, Ack, Refusal
from smegmesh.core.offer import (
    KEY_ID_LEN,
    MAX_HOPS,
    MAX_OFFER_ENTRIES,
    Offer,
    Want,
    offer_entries,
    offers,
    wanted,
    wanted_parts,
)
from smegmesh.core.record import NodeRecord, Prune
from smegmesh.core.state import MeshState
from smegmesh.core.sync import Push
from smegmesh.core.wire import DATAGRAM_REPLIES, DATAGRAM_REQUESTS, decode, encode
from test_meshnode import MESH, Net, converged, mesh_of

T = 1_000_000


def _ident(i: int) -> NodeIdentity:
    return NodeIdentity.from_seed(bytes([i]) * 32)


def _rec(i: int, version: int = T, **kw: object) -> NodeRecord:
    return NodeRecord.create(_ident(i), MESH, version=version, now_ms=version, **kw)  # type: ignore[arg-type]


def _state(*items: NodeRecord | Prune) -> MeshState:
    st = MeshState(MESH)
    for it in items:
        assert st.apply(it, T + 10)
    return st


def _id(key: bytes) -> bytes:
    return key[:KEY_ID_LEN]


def test_wanted_is_what_the_receiver_lacks_or_holds_older() -> None:
    a1, a2, b1 = _rec(1), _rec(1, T + 5), _rec(2)
    a, b = _id(a1.wg_key), _id(b1.wg_key)
    prune_a1 = Prune.create(
        _ident(3), MESH, now_ms=T + 6, target=a1.wg_key, target_version=a1.version
    )
    sender = _state(a2, b1)
    entries = offer_entries(sender, [a1.wg_key, b1.wg_key, _ident(9).wg_public_key])
    assert [e[0] for e in entries] == sorted([a, b])  # by id; nothing held: no entry
    assert set(wanted(MeshState(MESH), entries)) == {a, b}  # lacks both
    assert wanted(_state(a1, b1), entries) == (a,)  # older record of a
    assert wanted(_state(a2, b1), entries) == ()  # same
    assert wanted(sender, offer_entries(_state(a1, b1), [a1.wg_key])) == ()  # offered older
    # an entry naming its key in full (as offers did before ids) is still read
    full = [(a1.wg_key, *entries[0][1:])]
    assert wanted(_state(a1, b1), full) == (a1.wg_key,) and wanted(sender, full) == ()
    # a prune is news to a replica holding the record alone, even at equal record
    # versions (named in full: the prune alone will do)
    pruned = _state(a1, prune_a1)
    assert wanted(_state(a1), offer_entries(pruned, [a1.wg_key])) == (a1.wg_key,)
    # equal versions, another entry (a conflicting signature): wanted, the merge decides
    other = (entries[0][0], entries[0][1], entries[0][2], b"zzzz")
    assert wanted(sender, [other]) == (entries[0][0],)
    # a key offered twice is asked for once
    assert wanted(MeshState(MESH), [entries[0], entries[0]]) == (entries[0][0],)


def test_a_replica_lacking_only_the_prune_wants_the_key_in_full_and_gets_the_prune_alone() -> None:
    """Under churn most wanted entries are prunes of records every member holds;
    the answer to a Want was the whole entry (record and prune, ~470 B), so the
    record crossed the link again. A Want now names such a key in full (32
    bytes: "the prune alone will do") and the offerer sends what changed;
    a key it lacks the record of is named by id and comes whole, as before.
    An offerer of an older version reads the full key as a want too and sends
    the whole entry (nothing lost either way)."""
    a1 = _rec(1)
    prune = Prune.create(_ident(3), MESH, now_ms=T + 6, target=a1.wg_key, target_version=a1.version)
    offerer = _state(a1, prune)
    entries = offer_entries(offerer, [a1.wg_key])
    assert wanted(_state(a1), entries) == (a1.wg_key,)  # holds the record: in full
    assert wanted(MeshState(MESH), entries) == (_id(a1.wg_key),)  # lacks it: by id
    older = _state(_rec(1, T - 5))
    assert wanted(older, entries) == (_id(a1.wg_key),)  # an older record, pruned: by id, whole
    # the offerer's side: ids whole, full keys as news
    k = a1.wg_key
    assert wanted_parts(frozenset({k}), Want(MESH, (k,))) == (frozenset(), frozenset({k}))
    assert wanted_parts(frozenset({k}), Want(MESH, (k[:KEY_ID_LEN],))) == (
        frozenset({k}),
        frozenset(),
    )
    assert frozenset().union(*wanted_parts(frozenset({k}), Want(MESH, (k,)))) == {k}  # wanted
    net, nodes = mesh_of(4)
    net.run_until(net.now + 5000)
    a, b, c = nodes[0], nodes[1], nodes[2]
    rec_c = a.mesh.record(c.key)
    assert rec_c is not None
    prune_c = Prune.create(
        b.identity, MESH, now_ms=net.now, target=c.key, target_version=rec_c.version
    )
    assert a.mesh.apply(prune_c, net.now)
    call = Call(nodes[3].key, Offer(MESH, ()), OfferCtx(frozenset({c.key})))

    def pushed(want: Want) -> list[set[object]]:
        outs = a.step(ReplyReceived(call, want, net.now))
        return [set(o.msg.items) for o in _calls(outs) if isinstance(o.msg, Push)]

    assert pushed(Want(MESH, (c.key,))) == [{prune_c}]  # the prune alone, not the record
    assert pushed(Want(MESH, (c.key[:KEY_ID_LEN],))) == [{rec_c, prune_c}]  # by id: whole


def test_a_prune_of_an_older_record_than_ours_is_not_wanted() -> None:
    """It would be dropped on arrival (moot) and wanted again at every offer."""
    a1, a2 = _rec(1), _rec(1, T + 5)
    old_prune = Prune.create(
        _ident(3), MESH, now_ms=T + 6, target=a1.wg_key, target_version=a1.version
    )
    offerer = MeshState(MESH)
    assert offerer.apply(a1, T + 10) and offerer.apply(old_prune, T + 10)
    assert wanted(_state(a2), offer_entries(offerer, [a1.wg_key])) == ()


def test_a_full_key_want_naming_a_twin_of_the_offered_key_gets_it_whole() -> None:
    """Two keys equal in their first 8 bytes (only made on purpose): a want that
    names the wanter's own key in full matches the offered key by neither
    rule; the offered key goes whole rather than counting as held."""
    k = _ident(1).wg_public_key
    twin = k[:KEY_ID_LEN] + bytes(32 - KEY_ID_LEN)
    assert wanted_parts(frozenset({k}), Want(MESH, (twin,))) == (frozenset({k}), frozenset())
    assert wanted_parts(frozenset({k}), Want(MESH, (k,))) == (frozenset(), frozenset({k}))


def test_items_a_sync_session_brought_are_never_taken_for_late_ones() -> None:
    """Sync items are forwarded at SYNCED_HOPS: however many forwards follow,
    they stay below the hops of a push answering a Want (they were forwarded
    at MAX_HOPS - 1, and two forwards later taken for late: a partition's heal
    waited for the rounds)."""
    net, nodes = mesh_of(8)
    net.run_until(net.now + 5000)
    a, b, c, d = nodes[0], nodes[1], nodes[2], nodes[3]
    rec_c = b.mesh.record(c.key)
    assert rec_c is not None
    t = net.now + 1
    b._sched._last_trigger_ms = t - 2 * b.gossip.batch_ms  # busy, not held for a batch
    prune_c = Prune.create(d.identity, MESH, now_ms=t, target=c.key, target_version=rec_c.version)
    _r, outs = b.handle_request(a.key, Push(MESH, (prune_c,), SYNCED_HOPS + 2), t)
    assert len([o for o in _calls(outs) if isinstance(o.msg, Push)]) == b.gossip.full_push
    assert SYNCED_HOPS + 64 < MAX_HOPS
    # the real path: e learns the prune in a sync session (hops None), and it
    # goes on in full from every busy node it reaches, hop after hop
    e = nodes[4]
    by_key = {n.key: n for n in nodes}
    assert e.mesh.apply(prune_c, t)
    frm, node = a, e
    outs = e._on_changed({c.key}, t, a.key)
    for hop in range(3):
        pushes = [o for o in _calls(outs) if isinstance(o.msg, Push)]
        assert len(pushes) == node.gossip.full_push, hop
        assert all(p.msg.hops == SYNCED_HOPS + hop for p in pushes)
        nxt = next(by_key[p.to] for p in pushes if by_key[p.to].mesh.live_record(c.key) is not None)
        nxt._sched._last_trigger_ms = t - 2 * nxt.gossip.batch_ms  # busy, not held
        frm, node = node, nxt
        _r, outs = node.handle_request(frm.key, pushes[0].msg, t)


def test_offer_and_want_codecs_round_trip_and_bound_their_size() -> None:
    st = _state(_rec(1), _rec(2))
    offer = offers(MESH, offer_entries(st, st.keys_under(0, 0)))[0]
    assert decode(encode(offer)) == offer
    want = Want(MESH, tuple(e[0] for e in offer.entries))
    assert decode(encode(want)) == want
    assert "Offer" in DATAGRAM_REQUESTS and "Want" in DATAGRAM_REPLIES
    # about 45 bytes per entry: an offer of 20 keys fits one datagram
    assert len(encode(Offer(MESH, offer.entries[:1] * 20))) < 1_119
    too_many = Want(MESH, (bytes(32),) * (MAX_OFFER_ENTRIES + 1))
    with pytest.raises(WireError):
        decode(encode(too_many))
    bad = Offer(MESH, ((b"short", 1, 0, b"abcd"),))
    with pytest.raises(WireError):
        decode(encode(bad))
    # offers() cuts a long list into bounded messages
    many = [(bytes([i % 256, i // 256]) + bytes(30), 1, 0, b"abcd") for i in range(2500)]
    parts = offers(MESH, many)
    assert [len(p.entries) for p in parts] == [1024, 1024, 452]


def test_an_offer_names_keys_by_id_and_an_ambiguous_id_is_wanted() -> None:
    """An entry names its key by its first 8 bytes, not 32 (27 bytes an entry with
    millisecond versions, not 51); an id that names two held keys (equal in 64
    bits: only made on purpose) is wanted, so the item comes whole instead of
    being taken as held."""
    st = _state(*(_rec(i) for i in range(1, 21)))
    keys = sorted(st.keys_under(0, 0))
    entries = offer_entries(st, keys)
    in_full = [(k, *e[1:]) for k, e in zip(keys, entries, strict=True)]
    assert len(encode(Offer(MESH, tuple(in_full)))) - len(encode(Offer(MESH, tuple(entries)))) == (
        20 * 24
    )
    receiver = _state(_rec(1))
    k = _rec(1).wg_key
    assert wanted(receiver, [e for e in entries if e[0] == k[:KEY_ID_LEN]]) == ()
    twin = k[:KEY_ID_LEN] + bytes(24)
    bucket = int.from_bytes(k[:4], "big") >> 8
    receiver._buckets[bucket].add(twin)
    receiver._entries[twin] = receiver._entries[k]
    assert wanted(receiver, [e for e in entries if e[0] == k[:KEY_ID_LEN]]) == (k[:KEY_ID_LEN],)


def test_a_want_by_id_gets_every_offered_key_it_names() -> None:
    ka, kb, kc = (_ident(i).wg_public_key for i in (1, 2, 3))
    offered = frozenset({ka, kb})

    def named(want: Want) -> frozenset[bytes]:
        whole, news = wanted_parts(offered, want)
        return whole | news

    assert named(Want(MESH, (ka[:KEY_ID_LEN], kc[:KEY_ID_LEN]))) == {ka}
    assert named(Want(MESH, (kb,))) == {kb}  # in full, as before ids
    assert named(Want(MESH, ())) == frozenset()


def test_push_carries_its_hop_count() -> None:
    p = Push(MESH, (_rec(1),), 7)
    assert decode(encode(p)) == p
    with pytest.raises(WireError):
        decode(encode(Push(MESH, (), MAX_HOPS + 1)))


def test_full_hops_grows_with_the_log_of_the_mesh() -> None:
    assert full_hops(1, 3) == 1 and full_hops(20, 3) == 1
    assert full_hops(100, 3) == 2  # 27 * 3 <= 100: after 2 forwards, 3 ** 3 reached
    assert full_hops(1000, 3) == 4  # 243 * 3 <= 1000 < 729 * 3
    assert full_hops(3000, 3) == 5
    assert full_hops(1000, 1) == 1


def _calls(outs: list[Out]) -> list[Call]:
    return [o for o in outs if isinstance(o, Call)]


def _carries(push: Push, rec: NodeRecord) -> bool:
    """Whether ``push`` carries ``rec``: whole, or as a delta (core.delta)."""
    return any(
        i == rec
        or (
            isinstance(i, Elided)
            and i.kind == ITEM_DELTA
            and i.fields[0] == rec.wg_key[:8]
            and i.fields[2] == rec.version
        )
        for i in push.items
    )


def test_received_items_go_in_full_to_one_target_and_as_offers_to_the_others() -> None:
    """Late in a change's spread (many hops) a node pushes it in full to
    ``full_push`` targets (2 of 3 by default) and offers its key to the rest; an
    item that came in answer to our Want (hops MAX_HOPS: later still) while
    other changes spread waits for the periodic round's offers if it is a
    prune; its own change goes in full to every target; few hops: in full to
    every target."""
    net, nodes = mesh_of(8)
    net.run_until(net.now + 5000)
    a, b = nodes[0], nodes[1]
    own = a.mesh.record(a.key)
    assert own is not None
    g = b.gossip

    def forwards(msg: Push, at: int) -> tuple[list[Call], list[Call]]:
        _reply, outs = b.handle_request(a.key, msg, at)
        calls = _calls(outs)
        assert all(c.to != a.key for c in calls)  # not back to the sender
        return (
            [c for c in calls if isinstance(c.msg, Push)],
            [c for c in calls if isinstance(c.msg, Offer)],
        )

    new = own.evolve(a.identity, net.now + 1, description="x")
    pushes, offered = forwards(Push(MESH, (new,), 9), net.now + 1)
    assert len(pushes) == g.full_push == 2 and len(offered) == g.branch - g.full_push == 1
    assert all(isinstance(c.ctx, OfferCtx) and c.ctx.keys == {a.key} for c in offered)
    # answering our Want, while other changes spread (b forwarded one less
    # than a sync interval ago): late in its spread. A prune is not forwarded
    # now (half of all pushes under churn went this way in full before, most
    # to targets that held the item), only offered by the next periodic round
    t = net.now + 300
    assert t - (net.now + 1) < g.sync_interval_ms
    c, d = nodes[2], nodes[3]
    rec_c = b.mesh.record(c.key)
    assert rec_c is not None
    prune_c = Prune.create(d.identity, MESH, now_ms=t, target=c.key, target_version=rec_c.version)
    assert forwards(Push(MESH, (prune_c,), MAX_HOPS), t) == ([], [])
    assert c.key in b._sched.fresh_keys
    due = b._sched.next_deadline()
    assert due is not None
    rnd = _calls(b.tick(max(due, t)))
    assert [c.msg for c in rnd if isinstance(c.msg, Push)] == []
    assert any(isinstance(x.ctx, OfferCtx) and c.key in x.ctx.keys for x in rnd)
    # a member's live record (back alive, or just changed) goes on at once
    t2 = max(due, t) + 1
    b._sched._last_trigger_ms = t2 - 2 * g.batch_ms  # busy, and not held for a batch
    answer = own.evolve(a.identity, t2, description="w")
    pushes, offered = forwards(Push(MESH, (answer,), MAX_HOPS), t2)
    assert len(pushes) == g.full_push and len(offered) == g.branch - g.full_push
    # in a quiet mesh (a lone change: its tail is its latency) a prune goes on too
    quiet = t2 + 10 * g.sync_interval_ms
    rec_e = b.mesh.record(nodes[4].key)
    assert rec_e is not None
    prune_e = Prune.create(
        d.identity, MESH, now_ms=quiet, target=nodes[4].key, target_version=rec_e.version
    )
    pushes, offered = forwards(Push(MESH, (prune_e,), MAX_HOPS), quiet)
    assert len(pushes) == g.full_push and len(offered) == g.branch - g.full_push
    # the first hop (hops 0 from the changer) is forwarded in full to every target
    newer = own.evolve(a.identity, net.now + 2, description="y")
    _reply, outs = nodes[2].handle_request(a.key, Push(MESH, (newer,), 0), net.now + 2)
    assert {type(c.msg) for c in _calls(outs)} == {Push}
    # our own change: in full to every target, with hop count 0
    outs = nodes[3].update_self(net.now + 3, description="mine")
    own_pushes = _calls(outs)
    assert len(own_pushes) == nodes[3].gossip.branch
    assert all(isinstance(c.msg, Push) and c.msg.hops == 0 for c in own_pushes)


def test_a_want_gets_a_push_of_the_offered_keys_it_names_only() -> None:
    net, nodes = mesh_of(4)
    net.run_until(net.now + 5000)
    a, b, c = nodes[0], nodes[1], nodes[2]
    offer = Offer(MESH, tuple(offer_entries(a.mesh, [a.key])))
    call = Call(b.key, offer, OfferCtx(frozenset({a.key})))
    # b names a key a did not offer (c's): ignored
    outs = a.step(ReplyReceived(call, Want(MESH, (a.key, c.key)), net.now))
    pushes = [o for o in _calls(outs) if isinstance(o.msg, Push)]
    assert len(pushes) == 1 and pushes[0].to == b.key
    assert isinstance(pushes[0].ctx, PushCtx) and pushes[0].ctx.keys == {a.key}
    own = a.mesh.record(a.key)
    assert own is not None and len(pushes[0].msg.items) == 1 and _carries(pushes[0].msg, own)
    assert pushes[0].msg.hops == MAX_HOPS
    # an empty Want: held already, nothing sent, and the item loses push rounds
    a._sched.note_fresh({a.key})
    before = a._sched._fresh[a.key]
    for _ in range(2):
        assert _calls(a.step(ReplyReceived(call, Want(MESH, ()), net.now))) == []
    assert a._sched._fresh.get(a.key, 0) < before


def test_a_member_answers_an_offer_with_what_it_lacks_and_a_stranger_gets_a_refusal() -> None:
    net, nodes = mesh_of(3)
    net.run_until(net.now + 5000)
    a, b = nodes[0], nodes[1]
    own = a.mesh.record(a.key)
    assert own is not None
    held = Offer(MESH, tuple(offer_entries(a.mesh, [a.key, b.key])))
    reply, _ = b.handle_request(a.key, held, net.now)
    assert reply == Want(IN_REPLY, ())
    newer = _state(own.evolve(a.identity, net.now + 1, description="z"))
    reply, _ = b.handle_request(a.key, Offer(MESH, tuple(offer_entries(newer, [a.key]))), net.now)
    assert reply == Want(IN_REPLY, (a.key[:KEY_ID_LEN],))
    stranger = _ident(77).wg_public_key
    reply, outs = b.handle_request(stranger, held, net.now)
    assert isinstance(reply, Refusal) and outs == []


def _mesh_with(full_push: int, n: int) -> tuple[Net, list[MeshNode]]:
    import test_meshnode as tm

    old = tm.GOSSIP
    tm.GOSSIP = replace(old, full_push=full_push)
    try:
        return mesh_of(n)
    finally:
        tm.GOSSIP = old


@pytest.mark.parametrize("full_push", [0, 1, 3])
def test_changes_reach_every_member_whatever_share_goes_in_full(full_push: int) -> None:
    """Offers lose nothing: no full forward at all, one, or all in full (the old protocol)."""
    net, nodes = _mesh_with(full_push, 12)
    net.run_until(net.now + 5000)
    assert converged(nodes)
    sent: list[str] = []
    wire = net._wire

    def spy(msg: Message) -> bytes:
        sent.append(type(msg).__name__)
        return wire(msg)

    net._wire = spy  # type: ignore[method-assign]
    for i, n in enumerate(nodes[:4]):
        net.handle_outs(n, n.update_self(net.now, description=f"change {i}"))
    # within half the background pull interval (3 s)
    net.run_until(net.now + 1500)
    assert converged(nodes)
    assert ("Offer" in sent) == (full_push < nodes[0].gossip.branch)


def test_a_push_carries_what_changed_and_a_pull_the_whole_entry() -> None:
    """Deltas: a prune travels without the record it prunes (the members hold it;
    in an admission mesh the prune carries it), a refutation without the moot
    prune; a ``Want`` (the target lacks something) gets the whole entry."""
    a1 = _rec(1)
    prune = Prune.create(_ident(3), MESH, now_ms=T + 6, target=a1.wg_key, target_version=a1.version)
    st = _state(a1, prune)
    assert st.news_for([a1.wg_key]) == [prune]
    assert st.items_for([a1.wg_key]) == [a1, prune]
    a2 = _rec(1, T + 7)
    assert st.apply(a2, T + 10)  # the refutation: the prune is moot now
    assert st.news_for([a1.wg_key]) == [a2] == st.items_for([a1.wg_key])
    # the engine: a received prune goes on alone
    net, nodes = mesh_of(4)
    net.run_until(net.now + 5000)
    a, b, c = nodes[0], nodes[1], nodes[2]
    rec = a.mesh.record(c.key)
    assert rec is not None
    p = Prune.create(a.identity, MESH, now_ms=net.now, target=c.key, target_version=rec.version)
    _reply, outs = b.handle_request(a.key, Push(MESH, (rec, p), 0), net.now)
    pushes = [o.msg for o in _calls(outs) if isinstance(o.msg, Push)]
    assert pushes and all(m.items == (p,) for m in pushes)


def _b_pushed_a_change(second_hops: int) -> tuple[MeshNode, NodeRecord, int, list[Out]]:
    """In a settled mesh of 6, node b receives a change of a and pushes it on; 10 ms
    later a change of c arrives on its hop ``second_hops``. Returns b, c's new
    record, the time of the first push and b's outputs for the second."""
    net, nodes = mesh_of(6)
    net.run_until(net.now + 5000)
    a, b, c = nodes[0], nodes[1], nodes[2]
    t = net.now + 1
    ra, rc = a.mesh.record(a.key), c.mesh.record(c.key)
    assert ra is not None and rc is not None
    na = ra.evolve(a.identity, t, description="a")
    nc = rc.evolve(c.identity, t, description="c")
    _r, first = b.handle_request(a.key, Push(MESH, (na,), 9), t)
    assert [o for o in _calls(first) if isinstance(o.msg, Push | Offer)]
    _r, second = b.handle_request(c.key, Push(MESH, (nc,), second_hops), t + 10)
    return b, nc, t, second


def test_a_storm_of_received_changes_goes_out_in_batches() -> None:
    """A second change received within ``batch_ms`` of a push waits for the batch,
    which the clock sends (with every change held); a lone one goes at once."""
    b, nc, t, second = _b_pushed_a_change(9)
    assert not [o for o in _calls(second) if isinstance(o.msg, Push | Offer)]
    due = b.next_deadline()
    assert due is not None and due <= t + b.gossip.batch_ms
    batch = _calls(b.tick(t + b.gossip.batch_ms))
    sent = [o for o in batch if isinstance(o.msg, Push)]
    assert sent and all(_carries(o.msg, nc) for o in sent)


def test_a_change_on_its_first_hops_is_never_held_for_a_batch() -> None:
    """Only late items wait for a batch: a change still on its first log(N) hops
    (and so a partition's heal, where every item is new) goes out at once."""
    _b, nc, _t, second = _b_pushed_a_change(0)
    sent = [o for o in _calls(second) if isinstance(o.msg, Push)]
    assert sent and all(_carries(o.msg, nc) for o in sent)


def test_keys_wanted_in_full_are_remembered_bounded_and_asked_whole_on_a_late_repeat() -> None:
    from smegmesh.core.offer import ASK_AGAIN_MS, MAX_ASKED, AskedInFull

    asked = AskedInFull()
    k, entry = b"k" * 32, (b"k" * 8, 5, 6, b"hash")
    assert asked.in_full(k, entry, 1_000)
    assert asked.in_full(k, entry, 1_000 + ASK_AGAIN_MS - 1)  # several offerers at once
    assert not asked.in_full(k, entry, 1_000 + ASK_AGAIN_MS)  # unchanged since: whole
    assert asked.in_full(k, entry, 1_000 + ASK_AGAIN_MS + 1)  # then in full again
    assert asked.in_full(k, (b"k" * 8, 7, 6, b"new!"), 10_000)  # another entry: in full
    for i in range(MAX_ASKED + 10):
        asked.in_full(i.to_bytes(32, "big"), entry, 20_000)
    assert len(asked) == MAX_ASKED


def test_acks_and_wants_name_no_mesh_and_a_reply_naming_it_is_taken_alike() -> None:
    """An ``Ack`` or ``Want`` answers one call, so its mesh is the call's: it
    carries ``~`` (18-33 bytes saved in half the messages), and a
    reply of an older node, which names the mesh, is taken the same way."""
    net, nodes = mesh_of(3)
    net.run_until(net.now + 5000)
    a, b = nodes[0], nodes[1]
    own = a.mesh.record(a.key)
    assert own is not None
    newer = _state(own.evolve(a.identity, net.now + 1, description="z"))
    offer = Offer(MESH, tuple(offer_entries(newer, [a.key])))
    want, _ = b.handle_request(a.key, offer, net.now)
    ack, _ = b.handle_request(a.key, Push(MESH, (own,), 0), net.now)
    for reply in (want, ack):
        assert reply is not None and reply.mesh_id == IN_REPLY == "~"
        assert decode(encode(reply)) == reply
        assert len(encode(replace(reply, mesh_id=MESH))) - len(encode(reply)) == len(MESH) - 1
    assert isinstance(want, Want) and isinstance(ack, Ack) and ack.ok is False
    call = Call(b.key, offer, OfferCtx(frozenset({a.key})))
    older = replace(want, mesh_id=MESH)
    got = [_calls(a.step(ReplyReceived(call, w, net.now))) for w in (want, older)]
    assert got[0] == got[1] and len(got[0]) == 1 and isinstance(got[0][0].msg, Push)
