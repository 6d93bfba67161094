"""MeshState: semilattice laws, liveness, validation, digest, GC."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypo import examples
from smegmesh.core.forgery import NOT_CHECKED
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.record import NodeRecord, Prune, RecordError
from smegmesh.core.state import MeshState

MESH = "amber-falcon-river-k7q2"
IDS = [NodeIdentity.from_seed(random.Random(i).randbytes(32)) for i in range(6)]
T0 = 1_000_000


def _rec(i: int, version: int, left: bool = False, alias: str = "") -> NodeRecord:
    return NodeRecord.create(
        IDS[i], MESH, version=version, now_ms=T0 + version, left=left, alias=alias
    )


def _prune(by: int, target: int, tv: int) -> Prune:
    return Prune.create(
        IDS[by], MESH, target=IDS[target].wg_public_key, target_version=tv, now_ms=T0 + tv
    )


# A pool of pre-signed items (signing is slow): records with versions 1..3, two
# "equivocating" records with equal versions, leaves and prunes.
POOL: list[NodeRecord | Prune] = []
for _i in range(4):
    for _v in (1, 2, 3):
        POOL.append(_rec(_i, _v))
    POOL.append(_rec(_i, 2, alias="twin"))  # same version, different content
    POOL.append(_rec(_i, 4, left=True))
    POOL.append(_prune((_i + 1) % 4, _i, 2))
    POOL.append(_prune((_i + 2) % 4, _i, 2))  # same target version, other pruner
    POOL.append(_prune((_i + 1) % 4, _i, 3))

items_st = st.lists(st.sampled_from(POOL), max_size=14)


def build(items: list[NodeRecord | Prune]) -> MeshState:
    s = MeshState(MESH)
    for it in items:
        s.apply(it, T0)
    return s


def merged(*states: MeshState) -> MeshState:
    out = MeshState(MESH)
    for s in states:
        out.merge(s)
    return out


@settings(max_examples=examples(150), deadline=None)
@given(items_st, items_st)
def test_merge_commutative(a: list[NodeRecord | Prune], b: list[NodeRecord | Prune]) -> None:
    sa, sb = build(a), build(b)
    ab, ba = merged(sa, sb), merged(sb, sa)
    assert ab == ba and ab.digest() == ba.digest()


@settings(max_examples=examples(100), deadline=None)
@given(items_st, items_st, items_st)
def test_merge_associative(
    a: list[NodeRecord | Prune], b: list[NodeRecord | Prune], c: list[NodeRecord | Prune]
) -> None:
    sa, sb, sc = build(a), build(b), build(c)
    left = merged(sa, sb)
    left.merge(sc)
    bc = merged(sb, sc)
    right = merged(sa)
    right.merge(bc)
    assert left == right and left.digest() == right.digest()


@settings(max_examples=examples(100), deadline=None)
@given(items_st)
def test_merge_idempotent_and_order_free(a: list[NodeRecord | Prune]) -> None:
    sa = build(a)
    before = sa.digest()
    assert sa.merge(sa) == set()
    copy = merged(sa)
    assert copy.merge(sa) == set()
    assert sa.digest() == before == copy.digest()
    # applying the same items in any order gives the same state
    shuffled = list(a)
    random.Random(len(a)).shuffle(shuffled)
    assert build(shuffled) == sa


@settings(max_examples=examples(150), deadline=None)
@given(items_st, items_st)
def test_digest_equal_iff_states_equal(
    a: list[NodeRecord | Prune], b: list[NodeRecord | Prune]
) -> None:
    sa, sb = build(a), build(b)
    same = {(type(i), i.signature) for i in sa.all_items()} == {
        (type(i), i.signature) for i in sb.all_items()
    }
    assert (sa.digest() == sb.digest()) == same
    assert (sa == sb) == same


@settings(max_examples=examples(100), deadline=None)
@given(items_st)
def test_incremental_tree_matches_rebuild(a: list[NodeRecord | Prune]) -> None:
    s = build(a)
    fresh = MeshState(MESH)
    fresh.apply_many(s.all_items(), T0)
    assert fresh.digest() == s.digest()
    for d in range(3):
        for p in range(16**d):
            assert fresh.node(d, p) == s.node(d, p)
    assert sorted(s.keys_under(0, 0)) == sorted(s.keys())


def test_liveness_rules() -> None:
    s = MeshState(MESH)
    k = IDS[0].wg_public_key
    assert s.apply(_rec(0, 2), T0)
    assert s.is_live(k) and s.live_record(k) is not None
    assert [r.wg_key for r in s.live_records()] == [k]
    assert s.apply(_prune(1, 0, 2), T0)
    assert not s.is_live(k) and s.live_record(k) is None and s.record(k) is not None
    assert s.apply(_rec(0, 3), T0)  # refutes the prune
    assert s.is_live(k)
    # the prune is moot and not kept (replicas agree whichever order they saw)
    assert s.get_prune(k) is None and s.was_refuted(k)
    assert not s.apply(_prune(1, 0, 2), T0)  # and it does not come back
    assert s.apply(_rec(0, 4, left=True), T0)
    assert not s.is_live(k) and s.live_records() == []
    assert len(s.records()) == 1 and len(s.prunes()) == 0 and len(s) == 1


def test_apply_return_values_and_old_items() -> None:
    s = MeshState(MESH)
    r2 = _rec(0, 2)
    assert s.apply(r2, T0)
    assert not s.apply(r2, T0)  # already held
    assert not s.apply(_rec(0, 1), T0)  # older
    assert s.get(IDS[0].wg_public_key) == r2


def test_forged_items_rejected() -> None:
    s = MeshState(MESH)
    good = _rec(0, 2)
    forged = dataclasses.replace(good, version=3)  # signature no longer matches
    with pytest.raises(RecordError):
        s.apply(forged, T0)
    assert len(s) == 0
    bad_sig = dataclasses.replace(good, signature=bytes(64))
    with pytest.raises(RecordError):
        s.apply(bad_sig, T0)
    p = _prune(1, 0, 5)
    with pytest.raises(RecordError):
        s.apply(dataclasses.replace(p, target_version=6), T0)
    with pytest.raises(RecordError):
        s.apply(dataclasses.replace(p, by_sign_key=IDS[2].sign_public_key), T0)
    with pytest.raises(RecordError):
        MeshState("other").apply(good, T0)
    with pytest.raises(RecordError):
        s.apply("nope", T0)  # type: ignore[arg-type]
    assert len(s) == 0 and s.digest() == MeshState(MESH).digest()


def test_apply_many_stops_at_a_forgery_and_the_valid_item_comes_again() -> None:
    """A forgery ends the checks of its batch (core.forgery): until the nineteenth
    session the valid item behind it was still checked and kept, and so was every
    other item, each at the cost of a signature check."""
    s = MeshState(MESH)
    good = _rec(0, 2)
    forged = dataclasses.replace(_rec(0, 3), signature=bytes(64))
    changed, errors = s.apply_many([forged, good, dataclasses.replace(good, alias="BAD")], T0)
    assert changed == set() and IDS[0].wg_public_key not in s
    assert [e.message for e in errors if e.field == "signature"] == [
        "invalid signature",
        NOT_CHECKED,
    ]
    assert len(errors) == 3  # and the bad alias, refused by its field check
    # the valid item, in the next message (an honest member's), is kept
    changed, errors = s.apply_many([good], T0)
    assert changed == {IDS[0].wg_public_key} and not errors
    assert s.get(IDS[0].wg_public_key) == good


def test_merge_other_mesh_refused() -> None:
    with pytest.raises(ValueError):
        MeshState(MESH).merge(MeshState("other"))


def test_gc() -> None:
    s = MeshState(MESH)
    for it in [_rec(0, 2), _prune(1, 0, 2), _rec(1, 3, left=True), _rec(2, 5), _prune(3, 2, 1)]:
        s.apply(it, T0)
    # everything has timestamp T0 + small; horizon cutoff at T0 + 100 drops tombstones
    dropped = s.gc(now_ms=T0 + 1100, horizon_ms=1000)
    # prune of 0 + killed record of 0, left record of 1 (the stale prune of 2,
    # older than its record, was moot and never kept)
    assert dropped == 3
    assert IDS[0].wg_public_key not in s and IDS[1].wg_public_key not in s
    assert s.is_live(IDS[2].wg_public_key) and s.get_prune(IDS[2].wg_public_key) is None
    assert len(s) == 1
    # after gc, apply rejects old tombstones and killed records (no error)
    assert not s.apply(_prune(1, 0, 2), T0 + 1100)
    assert not s.apply(_rec(0, 2), T0 + 1100)
    assert not s.apply(_rec(1, 3, left=True), T0 + 1100)
    # fresh items still accepted
    assert s.apply(_rec(0, 200), T0 + 1100)
    assert s.digest() == merged(s).digest()
    with pytest.raises(ValueError):
        s.gc(T0, -1)


def test_many_keys_digest_tree() -> None:
    s = MeshState(MESH)
    items = [_rec(i, 1) for i in range(6)]
    s.apply_many(items, T0)
    total = sum(s.node(1, p)[1] for p in range(16))
    assert total == 6 == s.root()[1]
    for r in items:
        assert r.wg_key in s.keys_under(3, int.from_bytes(r.wg_key[:2], "big") >> 4)


def test_items_from_the_future_are_refused() -> None:
    """A prune with a huge target_version would otherwise block its target for ever."""
    s = MeshState(MESH)
    now = T0 + 1000
    assert s.apply(_rec(1, 5), now)
    forever = Prune.create(
        IDS[0], MESH, target=IDS[1].wg_public_key, target_version=2**62, now_ms=now
    )
    with pytest.raises(RecordError, match="future"):
        s.apply(forever, now)
    changed, errors = s.apply_many([forever, _rec(2, 5)], now)
    assert changed == {IDS[2].wg_public_key} and len(errors) == 1
    assert s.is_live(IDS[1].wg_public_key)
    # the same prune with a sane version is accepted
    assert s.apply(_prune(0, 1, 5), now)
    assert not s.is_live(IDS[1].wg_public_key)


def test_state_is_bounded_in_members_and_bytes() -> None:
    """Issue 12 finding 2: a member could publish any number of maximum-size records."""
    from smegmesh.core.record import MAX_RECORD_BYTES, RouteAdv

    mesh = "amber-falcon-river-k7q2"
    st = MeshState(mesh, max_members=3, max_bytes=3 * 4096)
    ids = [NodeIdentity.from_seed(bytes([i]) * 32) for i in range(1, 6)]
    for i in ids[:3]:
        assert st.apply(NodeRecord.create(i, mesh, version=1, now_ms=1), 1)
    with pytest.raises(RecordError, match="maxMembers"):
        st.apply(NodeRecord.create(ids[3], mesh, version=1, now_ms=1), 1)
    # A member already held may still re-sign; one that grows past the byte bound may not.
    assert st.apply(NodeRecord.create(ids[0], mesh, version=2, now_ms=2), 2)
    fat = tuple(RouteAdv(f"fd00:{i:x}:1:1::/64", (mesh,)) for i in range(1, 401))
    big = NodeRecord.create(ids[1], mesh, version=3, now_ms=3, routes=fat)
    assert len(big.signed_payload()) < MAX_RECORD_BYTES
    with pytest.raises(RecordError, match="bytes in total"):
        st.apply(big, 3)
    assert len(st.live_records()) == 3


def test_node_keys_are_the_nodes_not_the_authority_statements() -> None:
    """``len(state)`` and ``keys()`` count authority statements too (the founding
    record here): ``node_keys()`` is what "the nodes of the mesh" means."""
    from smegmesh.sim.state import make_population

    pop = make_population(12, 3, "sim", 1_700_000_000_000, authority=True)
    st = pop.base
    nodes = sorted(st.node_keys())
    assert nodes == sorted(r.wg_key for r in pop.records)
    assert len(st) == len(nodes) + len(st.auth_items()) > len(nodes)


def test_members_by_id_names_the_members_whose_keys_begin_so() -> None:
    """The datagram header's key id (4 bytes) resolves in O(1) to members' keys,
    never to a node that left; two keys sharing an id (one pair in a mesh of
    3,000 by chance, 2^32 work on purpose) are both named, for the caller to
    try each, at most ``limit`` (one more than a datagram tries)."""
    s = MeshState(MESH)
    for i in range(4):
        s.apply(_rec(i, 1), T0)
    s.apply(_rec(3, 4, left=True), T0)
    keys = [IDS[i].wg_public_key for i in range(4)]
    assert [s.members_by_id(k[:4], 5) for k in keys[:3]] == [[k] for k in keys[:3]]
    assert s.members_by_id(keys[3][:4], 5) == []  # left: no member
    assert s.members_by_id(IDS[5].wg_public_key[:4], 5) == []  # never here
    assert s.members_by_id(keys[0][:3], 5) == []  # too short to name a key
    # a pruned member may still refute: it is still found
    s.apply(_prune(1, 0, 1), T0)
    assert s.members_by_id(keys[0][:4], 5) == [keys[0]]
    # keys with the same first 4 bytes: all of them, up to the limit
    s.apply(_rec(2, 2), T0)
    bucket = int.from_bytes(keys[1][:4], "big") >> 8
    twins = [keys[1][:4] + bytes([n]) * 28 for n in range(5)]
    for twin in twins:
        s._buckets[bucket].add(twin)
        s._entries[twin] = s._entries[keys[1]]
    assert s.members_by_id(keys[1][:4], 5) == sorted([keys[1], *twins])[:5]
    assert len(s.members_by_id(keys[1][:4], limit=8)) == 6
