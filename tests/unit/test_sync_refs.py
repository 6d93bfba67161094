"""Anti-entropy steps by reference (core/sync_refs.py), through the real codec.

Twenty-second session: a sync step carried its items whole, admission chains
and all (2.1 KB a record at 300 members), where the other side held those
parts: 8 % of a founded mesh's churn bytes at 300 simulated nodes, 16 % at
1,000. Two nodes that both take references now send them where the other
side's leaf or want shows it holds the parts; older nodes get whole items.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from smegmesh.core import wire
from smegmesh.core.codec import ITEM_PRUNE, Elided, decode_item, encode_item
from smegmesh.core.elide import elide
from smegmesh.core.record import NodeRecord, Prune
from smegmesh.core.state import DEPTH, MeshState
from smegmesh.core.sync import HASH_LEN, SyncSession, SyncStep
from smegmesh.core.sync_refs import RESPONDER_TAKES_REFS, TAKES_REFS
from smegmesh.testbed.founded import Mesh, ident
from test_elide import LATER, _mesh, _state

SRC = b"\x07" * 32


def _session(a: MeshState, b: MeshState, now: int, *, old: str = "") -> tuple[int, list[object]]:
    """A session a -> b through the codec: bytes both ways, and every message.

    ``old``: "initiator" or "responder" plays a node of before references (an
    id without :data:`TAKES_REFS` / a reply without :data:`RESPONDER_TAKES_REFS`).
    """
    sess = SyncSession.initiator(a, now, rng=random.Random(3))
    if old == "initiator":
        sess.session_id &= ~TAKES_REFS
    responders: dict[tuple[bytes, int], SyncSession] = {}
    msg: object = sess.start()
    sent, seen = 0, []
    for _ in range(50):
        if msg is None:
            break
        data = wire.encode(msg)
        sent += len(data)
        req = wire.decode(data)
        if old == "responder":  # it never saw the bit: answers as an older node
            req = replace(req, session_id=req.session_id & ~TAKES_REFS)
        reply, _, _ = SyncSession.respond(b, responders, SRC, req, now)
        data = wire.encode(reply)
        sent += len(data)
        back = wire.decode(data)
        if old == "responder":
            back = replace(back, session_id=sess.session_id)
        seen += [req, back]
        msg, _ = sess.receive(back, now)
    assert msg is None and sess.done
    return sent, seen


def _apart() -> tuple[MeshState, MeshState, list[NodeRecord | Prune]]:
    """Two replicas of a settled founded mesh; the first holds 3 restarts and 2 prunes more."""
    m, recs = _mesh()
    now = m.t + LATER
    a, b = _state(m, recs, now), _state(m, recs, now)
    news: list[NodeRecord | Prune] = [recs[k].evolve(ident(k + 2), now) for k in (3, 5, 8)]
    news += [m.prune(ident(2), recs[k], now) for k in (6, 10)]
    changed, errors = a.apply_many(news, now)
    assert not errors and len(changed) == 5
    return a, b, news


def _leaf(st: MeshState, k: bytes) -> tuple[int, int, tuple[tuple[bytes, int, int, bytes], ...]]:
    """A step's leaf listing ``k`` at its versions in ``st`` (with a hash that matches nothing)."""
    rv, pv = st.versions_of(k)
    return (DEPTH, int.from_bytes(k[: DEPTH // 2], "big"), ((k, rv, pv, bytes(HASH_LEN)),))


def _readmitted() -> tuple[Mesh, list[NodeRecord], int, MeshState, MeshState, NodeRecord]:
    """Two replicas of a settled founded mesh, and the record of its member
    ``ident(9)`` admitted again (a new chain neither replica holds yet)."""
    m, recs = _mesh()
    n = ident(9)
    m.admit(n, by=ident(2))
    now = m.t + LATER
    a, b = _state(m, recs, now), _state(m, recs, now)
    return m, recs, now, a, b, recs[7].evolve(n, now, chain=m.chains[n.wg_public_key])


def _items(msgs: list[object]) -> list[object]:
    return [i for m in msgs if isinstance(m, SyncStep) for i in m.items]


def test_a_step_sends_what_the_other_side_holds_by_reference_both_ways() -> None:
    for pull in (False, True):  # the newer side initiates, or answers
        a, b, news = _apart()
        now = max(i.timestamp_ms for i in news)
        new_bytes, msgs = _session(a, b, now) if not pull else _session(b, a, now)
        assert a.digest() == b.digest()
        # a prune goes alone where the other side's leaf showed it holds the
        # record pruned, with it where it was wanted by id
        items = _items(msgs)
        assert len(news) <= len(items) <= len(news) + 2 and all(type(i) is Elided for i in items)
        a, b, _ = _apart()
        old_bytes, msgs = (
            _session(a, b, now, old="initiator")
            if not pull
            else (_session(b, a, now, old="initiator"))
        )
        assert a.digest() == b.digest()
        assert not [i for i in _items(msgs) if type(i) is Elided]
        assert new_bytes < 0.3 * old_bytes, (pull, new_bytes, old_bytes)


def test_an_older_side_gets_whole_items_and_whole_keys() -> None:
    """An older initiator sets no bit, an older responder echoes none: each gets
    what its decoder takes (whole items, wants of 32 bytes), and both converge."""
    for old in ("initiator", "responder"):
        for pull in (False, True):
            a, b, _news = _apart()
            now = a.record(ident(5).wg_public_key).timestamp_ms  # type: ignore[union-attr]
            _, msgs = _session(b, a, now, old=old) if pull else _session(a, b, now, old=old)
            assert a.digest() == b.digest(), (old, pull)
            for m in msgs:
                if isinstance(m, SyncStep):
                    assert all(len(w) == 32 for w in m.wants)
                    for i in m.items:  # what an older node's strict decoder reads
                        assert decode_item(encode_item(i)) == i


def test_a_reference_the_other_side_cannot_resolve_is_wanted_whole_in_the_same_session() -> None:
    """A member admitted again: its new record names a chain the other side
    does not hold. The step names it by reference (the other side holds a
    record of the key); the reference does not resolve, the key is wanted by
    its whole key, and the same session brings it whole."""
    _m, _recs, now, a, b, newer = _readmitted()
    assert a.apply(newer, now)
    _, msgs = _session(a, b, now)
    assert b.record(newer.wg_key) == newer and a.digest() == b.digest()
    wants = [w for x in msgs if isinstance(x, SyncStep) for w in x.wants]
    assert newer.wg_key in wants  # whole key: send it whole
    items = _items(msgs)
    assert [type(i) for i in items] == [Elided, NodeRecord]


def test_a_responder_says_it_takes_references_only_to_an_initiator_that_did() -> None:
    """The bits stay within what every node decodes, and a responder echoes an
    older initiator's id as sent (it would end a session under another id)."""
    a, b, news = _apart()
    now = max(i.timestamp_ms for i in news)
    for old in (False, True):
        sess = SyncSession.initiator(b, now, rng=random.Random(1))
        if old:
            sess.session_id &= ~TAKES_REFS
        assert sess.session_id | RESPONDER_TAKES_REFS < 2**63
        reply, _, _ = SyncSession.respond(a, {}, SRC, wire.decode(wire.encode(sess.start())), now)
        echoed = sess.session_id if old else sess.session_id | RESPONDER_TAKES_REFS
        assert reply.session_id == echoed


def test_a_step_of_garbage_or_too_many_references_costs_bounded_work_and_is_counted() -> None:
    """A member's step with forged references: each a counted refusal, never an
    exception; past MAX_EXPANDED a step the rest is not even expanded."""
    from smegmesh.core.elide import MAX_EXPANDED

    a, b, news = _apart()
    now = max(i.timestamp_ms for i in news)
    short = elide(news[0], now)
    assert type(short) is Elided
    forged = Elided(short.kind, (*short.fields[:-1], b"\x00" * 64))  # signature
    junk = Elided(short.kind, tuple(b"\xff" if f is None else f for f in short.fields))
    sess = SyncSession.initiator(a, now, rng=random.Random(5))
    responders: dict[tuple[bytes, int], SyncSession] = {}
    SyncSession.respond(b, responders, SRC, sess.start(), now)  # b lacks news[0]
    step = SyncStep(a.mesh_id, sess.session_id, items=(forged, junk) * (MAX_EXPANDED + 10))
    before = b.digest()
    _reply, session, merged = SyncSession.respond(
        b, responders, SRC, wire.decode(wire.encode(step)), now
    )
    assert merged == set() and b.digest() == before
    assert 1 <= session.rejected <= 2 * MAX_EXPANDED


def test_what_the_initiator_cannot_resolve_is_answered_whole_in_the_same_session() -> None:
    """Review (same session): a responder whose answer carried references and no
    question ended its session, so the initiator's wants of what it could not
    resolve met a session over, again at every pull: a member admitted again
    (its new chain), or a prune of a record version the initiator lacks. A
    responder whose answer carries references now stays to answer them."""
    m, recs = _mesh()
    n = ident(9)
    m.admit(n, by=ident(2))
    now = m.t + LATER
    a, b = _state(m, recs, now), _state(m, recs, now)
    assert a.apply(recs[7].evolve(n, now, chain=m.chains[n.wg_public_key]), now)
    _session(b, a, now)  # b (the old chain) pulls from a
    assert a.digest() == b.digest()
    m, recs = _mesh(20)
    now = m.t + LATER
    a, b = _state(m, recs, now), _state(m, recs, now)
    v2 = recs[5].evolve(ident(7), now - 20_000)  # settled: its prune names it by reference
    assert b.apply(m.prune(ident(3), v2, now), now)  # b holds the prune of v2, a holds v1
    _session(a, b, now)
    assert a.digest() == b.digest()


def _step_to(
    b: MeshState, a: MeshState, now: int, *, refs: bool = True, **parts: object
) -> tuple[object, SyncSession, set[bytes]]:
    """A session of a's opened at b, then a step of ``parts`` through the codec.

    Returns b's reply, its session and what it merged. ``refs`` False: the session is an
    older initiator's (no :data:`TAKES_REFS`)."""
    sess = SyncSession.initiator(a, now, rng=random.Random(11))
    if not refs:
        sess.session_id &= ~TAKES_REFS
    responders: dict[tuple[bytes, int], SyncSession] = {}
    SyncSession.respond(b, responders, SRC, sess.start(), now)
    step = SyncStep(a.mesh_id, sess.session_id, **parts)  # type: ignore[arg-type]
    reply, session, merged = SyncSession.respond(
        b, responders, SRC, wire.decode(wire.encode(step)), now
    )
    return reply, session, merged


def test_a_prune_of_the_record_its_own_step_brings_is_taken_in_that_step() -> None:
    """Review of the twenty-second session (uncovered): a step carrying a new
    record version and, by reference, the prune of that very version. The
    prune's reference names a record the receiver holds only once the same
    step's record is merged, so the step is expanded a second time after the
    merge: both are taken at once, and nothing is wanted back."""

    m, recs = _mesh(20)
    now = m.t + LATER
    a, b = _state(m, recs, now), _state(m, recs, now)
    v2 = recs[5].evolve(ident(7), now - 20_000)  # settled: both go by reference
    prune = m.prune(ident(3), v2, now)
    changed, errors = a.apply_many([v2, prune], now)
    assert not errors and changed == {v2.wg_key}
    items = (elide(v2, now), elide(prune, now))
    assert all(type(i) is Elided for i in items)
    reply, _, merged = _step_to(b, a, now, items=items)
    assert merged == {v2.wg_key}
    assert b.versions_of(v2.wg_key) == a.versions_of(v2.wg_key) == (v2.version + 1, v2.version + 1)
    assert not (isinstance(reply, SyncStep) and reply.wants)  # nothing asked again


@pytest.mark.parametrize("refs", [True, False])
def test_a_key_wanted_whole_is_wanted_once_and_not_also_by_its_id(refs: bool) -> None:
    """Review of the twenty-second session (uncovered): a key whose item in a
    step does not resolve (a member admitted again: a chain the receiver
    lacks) and which a leaf of the same step lists newer is wanted once, by
    its whole key: an id want (to a side that takes references) would bring
    the reference that does not resolve again, a second whole want (to one
    that does not, and still sent a reference: a hostile or buggy member) the
    item twice."""
    _m, _recs, now, a, b, newer = _readmitted()
    assert a.apply(newer, now)
    short = elide(newer, now)
    assert type(short) is Elided
    k = newer.wg_key
    leaf = _leaf(a, k)
    reply, _, _ = _step_to(b, a, now, refs=refs, items=(short,), leaves=(leaf,))
    assert isinstance(reply, SyncStep)
    assert [w for w in reply.wants if w[:8] == k[:8]] == [k]


@pytest.mark.parametrize("forged", [False, True])
def test_a_prune_resolved_by_its_steps_record_counts_as_merged_or_refused(forged: bool) -> None:
    """Review (this session): the second expansion pass's merge and refusals
    were unchecked (the prune of the test above is of the record's own key).
    A member admitted again prunes another: the prune names its new chain by
    reference, which resolves only once the same step's record (sent whole)
    is merged. The pruned key is among the keys merged (the node tells the
    others of them), and a forged prune found on that pass is counted."""
    m, recs, now, a, b, newer = _readmitted()
    prune = m.prune(ident(9), recs[9], now)
    changed, errors = a.apply_many([newer, prune], now)  # a session is open: a differs
    assert not errors and len(changed) == 2
    short = elide(prune, now)
    assert type(short) is Elided
    if forged:
        short = Elided(short.kind, (*short.fields[:-1], bytes(64)))
    _reply, session, merged = _step_to(b, a, now, items=(newer, short))
    assert newer.wg_key in merged
    assert (recs[9].wg_key in merged) is not forged
    assert session.rejected == (1 if forged else 0)


def test_a_key_held_only_as_a_prune_is_wanted_whole() -> None:
    """Review (this session; uncovered): a replica holding a prune of a key
    but no record of it (the prune came first) cannot resolve a record sent
    by reference: it wants the key whole, not by id (which would bring a
    reference, then a second round trip for the whole record)."""
    m, recs = _mesh()
    now = m.t + LATER
    a, b = _state(m, recs, now), _state(m, recs[:5] + recs[6:], now)
    k = recs[5].wg_key
    assert b.apply(m.prune(ident(3), recs[5], now), now)
    assert b.versions_of(k)[0] == 0 and b.versions_of(k)[1] > 0  # a prune alone
    assert a.apply(recs[5].evolve(ident(7), now), now)  # newer: refutes the prune
    leaf = _leaf(a, k)
    reply, _, _ = _step_to(b, a, now, leaves=(leaf,))
    assert isinstance(reply, SyncStep)
    assert [w for w in reply.wants if w[:8] == k[:8]] == [k]


def test_a_prune_of_a_young_record_the_other_side_holds_goes_by_reference() -> None:
    """The other side's leaf says it holds the very record pruned: the prune
    names it by reference however young (a restart soon crashed), not whole
    with that record and its admission chain inside."""
    m, recs = _mesh()
    now = m.t + LATER
    young = recs[7].evolve(ident(9), now - 2_000)  # restarted 2 s ago
    prune = m.prune(ident(2), young, now)
    for pull in (False, True):
        x, y = (_state(m, recs, now), _state(m, recs, now))
        for st in (x, y):
            st.apply(young, now)
        x.apply(prune, now)
        _, msgs = _session(x, y, now) if not pull else _session(y, x, now)
        assert x.digest() == y.digest()
        items = _items(msgs)  # the prune; the record too where it was wanted by id
        assert all(type(i) is Elided for i in items) and 1 <= len(items) <= 2, items
        prunes = [i for i in items if i.kind == ITEM_PRUNE]  # type: ignore[union-attr]
        assert len(prunes) == 1 and type(prunes[0].fields[6]) is bytes  # target record named
