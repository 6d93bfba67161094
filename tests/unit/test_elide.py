"""Items pushed without the parts their receiver holds (core/elide.py).

Twentieth session: in a mesh with admission, a record carries its admission
chain (~2 KB at 3,000 members) and a prune its target's record and its
pruner's chain (~3.7 KB): churn at 1,000 nodes cost 121.6 KB/s per node
against 17.4 without admission. Each test goes through the real codec.
"""

from __future__ import annotations

import pytest

from smegmesh.core.codec import Elided
from smegmesh.core.delta import RecordBases
from smegmesh.core.elide import MAX_EXPANDED, SETTLED_MS, elide, expand
from smegmesh.core.engine import Call, Out
from smegmesh.core.identity import verify_many
from smegmesh.core.meshnode import MeshNode
from smegmesh.core.messages import Ping
from smegmesh.core.record import NodeRecord, Prune
from smegmesh.core.state import MeshState
from smegmesh.core.sync import Push, SyncStart
from smegmesh.core.wire import decode, encode
from smegmesh.testbed.founded import Mesh, ident, member_node

LATER = SETTLED_MS + 60_000  # the certificates are settled by then


def _mesh(n: int = 12) -> tuple[Mesh, list[NodeRecord]]:
    m = Mesh()
    ids = [ident(i) for i in range(2, 2 + n)]
    for k, i in enumerate(ids):
        m.admit(i, by=ids[k // 2] if k >= 2 else None)  # chains of a few levels
    return m, [
        m.record(i, control_endpoint=f"[2001:db8::{k + 2:x}]:4000", tls_fp=bytes(32))
        for k, i in enumerate(ids)
    ]


def _state(m: Mesh, recs: list[NodeRecord], now: int) -> MeshState:
    st = MeshState(m.mesh_id, admission=True, verifier=verify_many)
    assert st.apply(m.founding, now)
    changed, errors = st.apply_many(recs, now)
    assert not errors and len(changed) == len(recs)
    return st


def _wire(items: list[NodeRecord | Prune | Elided], mesh_id: str) -> Push:
    push = decode(encode(Push(mesh_id, tuple(items))))
    assert isinstance(push, Push)
    return push


def _state_and_short(k: int) -> tuple[MeshState, Elided]:
    """A settled mesh's state, and the next version of member ``k``'s record, elided."""
    m, recs = _mesh()
    now = m.t + LATER
    short = elide(recs[k].evolve(ident(k + 2), now), now)
    assert type(short) is Elided
    return _state(m, recs, now), short


def _pushed(outs: list[Out]) -> list[object]:
    """The items of the pushes among ``outs``."""
    return [i for o in outs if isinstance(o, Call) and isinstance(o.msg, Push) for i in o.msg.items]


def test_a_settled_record_and_prune_go_short_and_come_back_whole() -> None:
    m, recs = _mesh()
    now = m.t + LATER
    st = _state(m, recs, now)
    newer = recs[9].evolve(ident(11), now)
    prune = m.prune(ident(3), recs[7], now)
    items = [newer, prune]
    short = [elide(i, now) for i in items]
    assert all(type(s) is Elided for s in short)
    whole_bytes = len(encode(Push(m.mesh_id, tuple(items))))
    short_bytes = len(encode(Push(m.mesh_id, tuple(short))))
    assert short_bytes < 0.4 * whole_bytes, (short_bytes, whole_bytes)
    got = expand(st, _wire(short, m.mesh_id).items)
    assert got.items == items and got.unresolved == 0 and not got.errors
    changed, errors = st.apply_many(got.items, now)  # signatures check out
    assert not errors and changed == {newer.wg_key, prune.target}


def test_fresh_parts_go_whole() -> None:
    """A chain issued lately and a record published lately may not be held yet."""
    m, recs = _mesh()
    now = m.t + 5_000
    assert elide(recs[9].evolve(ident(11), now), now) == recs[9].evolve(ident(11), now)
    prune = m.prune(ident(3), recs[7], now)
    assert elide(prune, now) is prune
    founder = m.record(m.founder, version=m.t + 2)  # no chain: nothing to leave out
    assert not founder.chain and elide(founder, m.t + LATER) is founder


def test_a_reference_the_receiver_cannot_resolve_is_pulled_by_a_sync_session() -> None:
    """Not taken for a forgery: the receiver holds another version (or none)."""
    m, recs = _mesh()
    now = m.t + LATER
    pruner, me = ident(3), ident(4)
    node = member_node(me, m.mesh_id, _state(m, recs[:-1], now))  # lacks the last member
    newer_last = recs[-1].evolve(ident(13), now)
    other = recs[6].evolve(ident(8), now - 30_000)  # a version it does not hold
    prune = m.prune(ident(3), other, now)
    push = _wire([elide(newer_last, now), elide(prune, now)], m.mesh_id)
    reply, outs = node.handle_request(pruner.wg_public_key, push, now)
    assert node.rejected == 0
    syncs = [o for o in outs if isinstance(o, Call) and isinstance(o.msg, SyncStart)]
    assert [s.to for s in syncs] == [pruner.wg_public_key]
    assert getattr(reply, "ok", None) is True  # news: the pusher keeps pushing


def test_elided_items_that_change_nothing_are_not_expanded_and_garbage_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m, recs = _mesh()
    now = m.t + LATER
    st = _state(m, recs, now)
    held = elide(recs[5], now)  # the version held: no news
    assert type(held) is Elided
    assert expand(st, [held]).items == []
    newer = [elide(recs[k].evolve(ident(k + 2), now + k), now) for k in range(2, 12)]
    many = newer * (MAX_EXPANDED // len(newer) + 2)
    got = expand(st, many)  # a key once a message (review, twenty-third session)
    assert len(got.items) == len(newer) and got.unresolved == 0
    monkeypatch.setattr("smegmesh.core.elide.MAX_EXPANDED", 4)
    got = expand(st, many)
    assert len(got.items) == 4 and got.unresolved == len(newer) - 4
    bad = Elided(1, tuple(["x"] * 21))
    got = expand(st, [bad, Elided(2, tuple([b"k" * 32, 0, 1] + [None] * 6))])
    assert len(got.errors) + got.unresolved == 2 and not got.items


def test_pushes_to_a_member_about_itself_or_to_one_that_does_not_know_us_go_whole() -> None:
    """A pruned member holds its own latest record, not the pruned version; a
    member that refused us does not hold our chain."""
    m, recs = _mesh()
    now = m.t + LATER
    me = ident(4)
    node = member_node(me, m.mesh_id, _state(m, recs, now))
    target = recs[7]
    node.handle_request(
        ident(3).wg_public_key, Push(m.mesh_id, (m.prune(ident(3), target, now),)), now
    )
    # target calls us while we hold it pruned: we push it its prune, whole
    outs = node.handle_request(target.wg_key, Ping(m.mesh_id, 1), now + 100)[1]
    pushed = [
        o.msg
        for o in outs
        if isinstance(o, Call) and o.to == target.wg_key and isinstance(o.msg, Push)
    ]
    assert pushed and not any(type(i) is Elided for p in pushed for i in p.items)
    assert any(type(i) is Prune for p in pushed for i in p.items)


def test_any_garbage_in_an_elided_item_is_a_counted_refusal_never_an_exception() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as hs

    st, good = _state_and_short(4)
    m, recs = _mesh()
    now = m.t + LATER
    prune = elide(m.prune(ident(3), recs[7], now), now)  # a prune too (review)
    assert type(prune) is Elided
    atoms = hs.one_of(
        hs.none(), hs.booleans(), hs.integers(), hs.binary(max_size=40), hs.text(max_size=8)
    )
    values = hs.recursive(atoms, lambda c: hs.lists(c, max_size=4), max_leaves=8)

    @settings(max_examples=300, deadline=None)
    @given(hs.sampled_from([good, prune]), hs.integers(0, 20), values)
    def run(item: Elided, i: int, v: object) -> None:
        fields = list(item.fields)
        fields[i % len(fields)] = v
        got = expand(st, [Elided(item.kind, tuple(fields))])
        assert len(got.items) + len(got.errors) + got.unresolved <= 1
        st.apply_many(got.items, now)  # what expands is checked as ever: no exception

    run()


def test_a_chain_named_by_its_last_certificate_alone_is_not_enough() -> None:
    """Review (same session): a member whose admitter was admitted again keeps its
    own certificate under another prefix. Named by its last certificate, the
    receiver put back the prefix it held: the signature failed, an honest
    relay taken for a forger. A chain is named by all its certificates."""
    from smegmesh.core.cert import Cert

    m, recs = _mesh()
    now = m.t + LATER
    st = _state(m, recs, now)
    x, a = ident(6), ident(4)  # x was admitted by a (see _mesh)
    old = m.chains[x.wg_public_key]
    assert old[-2].subject == a.wg_public_key
    again = Cert.create(m.founder, m.mesh_id, subject=a.wg_public_key, may_admit=True, now_ms=m.t)
    rec = recs[4].evolve(x, now)
    moved = NodeRecord.create(
        x, m.mesh_id, version=rec.version + 1, now_ms=now, chain=(again, old[-1])
    )
    got = expand(st, [elide(moved, now)])
    assert got.unresolved == 1 and not got.items and not got.errors


def test_bogus_references_do_not_take_the_session_of_a_heal() -> None:
    """Review (same session): unresolved references and heals shared one sync
    session every 3 s; a member pushing a bogus reference each interval kept
    the heals (a pruned member heard from) from starting theirs."""
    m, recs = _mesh()
    now = m.t + LATER
    me, bad = ident(4), ident(3)
    node = member_node(me, m.mesh_id, _state(m, recs, now))
    target = recs[7]
    pushed = Push(m.mesh_id, (m.prune(ident(3), target, now),))
    node.handle_request(bad.wg_public_key, pushed, now)
    bogus = elide(recs[5].evolve(ident(7), now), now)
    assert type(bogus) is Elided
    fields = list(bogus.fields)
    fields[18] = bytes(16)  # names no chain we hold
    outs = node.handle_request(
        bad.wg_public_key, Push(m.mesh_id, (Elided(1, tuple(fields)),)), now
    )[1]
    assert [o.to for o in outs if isinstance(o, Call) and isinstance(o.msg, SyncStart)] == [
        bad.wg_public_key
    ]
    outs = node.handle_request(target.wg_key, Ping(m.mesh_id, 1), now + 100)[1]
    assert [o.to for o in outs if isinstance(o, Call) and isinstance(o.msg, SyncStart)] == [
        target.wg_key
    ]


def test_a_settled_item_leaves_out_what_its_receiver_holds_or_derives() -> None:
    """Twenty-first session: an elided record still carried the mesh id (the
    message's), its sign key (the held record's), its overlay address (derived
    from the mesh id and the key) and its whole key (~90 B of its 328 at 300
    members); an elided prune the mesh id, the pruner's sign key and both keys.
    They are named by the 8-byte key ids the offers use, or left out."""
    m, recs = _mesh()
    now = m.t + LATER
    newer = recs[9].evolve(ident(11), now)
    short = elide(newer, now)
    assert type(short) is Elided
    f = short.fields
    assert f[0] is None and f[2] is None and f[9] is None  # mesh id, sign key, address
    assert f[1] == newer.wg_key[:8]
    prune = m.prune(ident(3), recs[7], now)
    p = elide(prune, now)
    assert type(p) is Elided
    assert p.fields[0] is None and p.fields[4] is None  # mesh id, pruner's sign key
    assert p.fields[1] == prune.target[:8] and p.fields[3] == prune.by_wg_key[:8]
    before = len(encode(Push(m.mesh_id, (newer, prune))))
    after = len(encode(Push(m.mesh_id, (short, p))))
    assert after < 0.3 * before, (after, before)
    got = expand(_state(m, recs, now), _wire([short, p], m.mesh_id).items)
    assert got.items == [newer, prune] and not got.errors


def test_an_elided_item_carrying_a_part_it_leaves_out_is_refused() -> None:
    st, short = _state_and_short(9)
    key = st.key_by_prefix(short.fields[1])
    rec = st.record(key) if key is not None else None
    assert rec is not None
    for i, v in ((0, st.mesh_id), (2, rec.sign_key), (9, rec.address)):
        f = list(short.fields)
        f[i] = v
        got = expand(st, [Elided(1, tuple(f))])
        assert len(got.errors) == 1 and not got.items, i


def test_a_restarts_record_wanted_after_an_offer_comes_by_reference() -> None:
    """Twenty-first session: a node holding an older record wanted a restart's
    by id, and the answer carried the whole record with its chain (3,502
    whole records against 33,162 elided items, 300 nodes, 30 s of churn)."""
    from smegmesh.core.engine import OfferCtx, ReplyReceived
    from smegmesh.core.offer import Offer, Want, offer_entries, wanted

    m, recs = _mesh()
    now = m.t + LATER
    a, b = ident(4), ident(5)
    node_a = member_node(a, m.mesh_id, _state(m, recs, now))
    newer = recs[9].evolve(ident(11), now)
    assert node_a.mesh.apply(newer, now)
    entries = offer_entries(node_a.mesh, [newer.wg_key])
    want = Want(m.mesh_id, wanted(_state(m, recs, now), entries))
    assert want.keys == (newer.wg_key,)  # in full: what changed will do
    lacking = MeshState(m.mesh_id, admission=True, verifier=verify_many)
    assert wanted(lacking, entries) == (newer.wg_key[:8],)  # by id: whole
    call = Call(b.wg_public_key, Offer(m.mesh_id, ()), OfferCtx(frozenset({newer.wg_key})))
    outs = node_a.step(ReplyReceived(call, want, now))
    items = _pushed(outs)
    assert len(items) == 1 and type(items[0]) is Elided
    got = expand(_state(m, recs, now), _wire(items, m.mesh_id).items)
    assert got.items == [newer]


def test_two_prunes_of_one_crash_meet_by_reference() -> None:
    """Twenty-first session: several members prune one crashed member, each
    with its own prune of the same version. Two replicas holding different
    ones see equal versions and another hash in an offer; the key was wanted
    by id and the answer was the whole prune with its target record and its
    pruner's chain (661 such prunes, 2.5 MB, in a 300-node churn run of 30 s).
    Now it is wanted in full and comes by reference, and both replicas end
    with the same prune."""
    from smegmesh.core.engine import OfferCtx, ReplyReceived
    from smegmesh.core.offer import Offer, Want, offer_entries, wanted

    m, recs = _mesh()
    now = m.t + LATER
    target = recs[7]
    px, py = m.prune(ident(3), target, now), m.prune(ident(5), target, now + 1)
    a, b = ident(4), ident(6)
    node_a = member_node(a, m.mesh_id, _state(m, recs, now))
    mine = _state(m, recs, now)
    assert node_a.mesh.apply(py, now) and mine.apply(px, now)
    entries = offer_entries(node_a.mesh, [target.wg_key])
    assert entries[0][3] != offer_entries(mine, [target.wg_key])[0][3]  # another hash
    want = Want(m.mesh_id, wanted(mine, entries))
    assert want.keys == (target.wg_key,)
    call = Call(b.wg_public_key, Offer(m.mesh_id, ()), OfferCtx(frozenset({target.wg_key})))
    outs = node_a.step(ReplyReceived(call, want, now))
    items = _pushed(outs)
    assert len(items) == 1 and type(items[0]) is Elided
    got = expand(mine, _wire(items, m.mesh_id).items)
    assert got.items == [py] and not got.errors
    _changed, errors = mine.apply_many(got.items, now)
    assert not errors
    node_a.mesh.apply(px, now)
    assert mine.get_prune(target.wg_key) == node_a.mesh.get_prune(target.wg_key)


def _offer_rounds(na: MeshNode, nb: MeshNode, key: bytes, now: int, rounds: int) -> int:
    """``na`` offers ``key`` to ``nb`` (and back) every 1.5 s, through the nodes'
    own handlers; the round after which both hold the same entry (-1: never)."""
    from smegmesh.core.engine import OfferCtx, ReplyReceived
    from smegmesh.core.offer import Offer, Want, offer_entries

    def offer(src: MeshNode, dst: MeshNode, t: int) -> None:
        msg = Offer(src.mesh_id, tuple(offer_entries(src.mesh, [key])))
        want, _ = dst.handle_request(src.key, decode(encode(msg)), t)
        if not isinstance(want, Want) or not want.keys:
            return
        call = Call(dst.key, msg, OfferCtx(frozenset({key})))
        for o in src.step(ReplyReceived(call, want, t)):
            if isinstance(o, Call) and isinstance(o.msg, Push):
                dst.handle_request(src.key, decode(encode(o.msg)), t)

    for i in range(rounds):
        t = now + 1_500 * i
        offer(na, nb, t)
        offer(nb, na, t)
        if na.mesh.entry_hash_of(key) == nb.mesh.entry_hash_of(key):
            return i
    return -1


def test_what_changed_that_does_not_settle_a_key_is_followed_by_the_whole_entry() -> None:
    """Review (same session): in a founded mesh a key is wanted in full ("what
    changed will do") and what changed comes by reference; when that cannot
    settle it, the key was wanted in full at every offer, never converging by
    offers: a member admitted again (its new chain not held: the reference
    does not resolve), or a member that signed two records of one version
    (the prune sent alone leaves the records apart). Offered again unchanged,
    it is now wanted by id and comes whole."""
    # a member admitted again: the new chain is unknown to the wanter
    m, recs = _mesh()
    n = ident(9)
    m.admit(n, by=ident(2))
    now = m.t + LATER
    newer = recs[7].evolve(n, now, chain=m.chains[n.wg_public_key])
    na = member_node(ident(4), m.mesh_id, _state(m, recs, now))
    nb = member_node(ident(6), m.mesh_id, _state(m, recs, now))
    assert na.mesh.apply(newer, now)
    # (a delta from the version before would carry the new chain and settle it
    # at once, test_delta.py: here the offerer kept no base, as after a while)
    na.mesh.bases = RecordBases()
    assert _offer_rounds(na, nb, newer.wg_key, now, 4) in (1, 2)
    assert nb.mesh.record(newer.wg_key) == newer
    # two records of one version, each replica holding one and its prune
    for age in (1_000, 30_000):  # the records fresh (carried whole) and settled
        m, recs = _mesh()
        now = m.t + LATER
        r1 = recs[7].evolve(n, now - age, alias="one")
        r2 = recs[7].evolve(n, now - age, alias="two")
        assert r1.version == r2.version
        na = member_node(ident(4), m.mesh_id, _state(m, recs, now))
        nb = member_node(ident(6), m.mesh_id, _state(m, recs, now))
        assert na.mesh.apply(r1, now) and nb.mesh.apply(r2, now)
        assert na.mesh.apply(m.prune(ident(3), r1, now), now)
        assert nb.mesh.apply(m.prune(ident(5), r2, now), now)
        assert _offer_rounds(na, nb, r1.wg_key, now, 4) in (1, 2), age


def test_a_prune_of_a_young_record_names_it_and_brings_it_along() -> None:
    """A member crashed soon after a restart: its prune's target record is
    young. The prune carried it whole, admission chain and all (a founded
    mesh of 1,000 under 60 %/min churn: 221 B a pruned item against 147 for
    a settled target). It now names it by reference, the record in front of
    it in the same push; a receiver that holds the record drops that copy
    unexpanded, one that does not takes both from the one push (no pull)."""
    m, recs = _mesh()
    now = m.t + LATER
    pruner, me = ident(3), ident(4)
    young = recs[7].evolve(ident(9), now - 2_000)  # restarted 2 s ago
    prune = m.prune(pruner, young, now)
    sender = member_node(pruner, m.mesh_id, _state(m, [*recs[:7], young, *recs[8:]], now))
    assert sender.mesh.apply(prune, now)
    outs = sender._push_calls([me.wg_public_key], frozenset({young.wg_key}), now_ms=now)
    pushes = [o.msg for o in outs if isinstance(o, Call) and isinstance(o.msg, Push)]
    whole = len(encode(Push(m.mesh_id, (prune,))))
    assert sum(len(encode(p)) for p in pushes) < 0.3 * whole
    items = [i for p in pushes for i in p.items]
    assert all(type(i) is Elided for i in items) and len(items) == 2
    # a receiver that holds the young record: the prune alone is expanded
    holder = _state(m, [*recs[:7], young, *recs[8:]], now)
    assert expand(holder, _wire(items, m.mesh_id).items).items == [prune]
    # one that does not (it holds the record before the restart) takes both
    behind = member_node(me, m.mesh_id, _state(m, recs, now))
    reply, outs = behind.handle_request(pruner.wg_public_key, _wire(items, m.mesh_id), now)
    assert behind.rejected == 0 and getattr(reply, "ok", None) is True
    assert behind.mesh.get_prune(young.wg_key) == prune
    assert behind.mesh.record(young.wg_key) == young
    assert not [o for o in outs if isinstance(o, Call) and isinstance(o.msg, SyncStart)]


def test_a_chain_named_by_8_bytes_in_a_short_push_resolves_as_by_16() -> None:
    """Thirty-second session: a push to a member that takes short names names
    an elided record's chain and an elided prune's pruner chain by 8 bytes of
    their hash, not 16 (``shortened``). A node of now resolves both lengths;
    any other, or another chain's name, does not."""
    import hashlib

    from smegmesh.core.delta import SHORT_REF_LEN
    from smegmesh.core.elide import REF_LEN, shortened

    def name(r: NodeRecord) -> bytes:
        return hashlib.sha256(r.sign_key + b"".join(c.key for c in r.chain)).digest()

    m, recs = _mesh()
    now = m.t + LATER
    rec = elide(recs[9].evolve(ident(11), now), now)
    prune = elide(m.prune(ident(3), recs[7], now), now)
    assert type(rec) is Elided and type(prune) is Elided
    for item, signer in ((rec, recs[9]), (prune, recs[1])):
        at = item.fields.index(name(signer)[:REF_LEN])
        assert shortened(item).fields[at] == name(signer)[:SHORT_REF_LEN] == name(signer)[:8]
        for ref, resolves in (
            (name(signer)[:8], True),
            (name(signer)[:16], True),
            (name(signer)[:12], False),
            (name(recs[4])[:8], False),
        ):
            named = Elided(item.kind, (*item.fields[:at], ref, *item.fields[at + 1 :]))
            got = expand(_state(m, recs, now), _wire([named], m.mesh_id).items)
            assert (len(got.items) == 1) is resolves and not got.errors, (item.kind, len(ref))
