"""Item facts live in an explicit, bounded memo, never written into the frozen items."""

from __future__ import annotations

import dataclasses
import gc
import random
import weakref
from collections.abc import Sequence

import pytest

from smegmesh.core.identity import NodeIdentity, verify_many
from smegmesh.core.memo import ItemMemo
from smegmesh.core.paging import item_size, page, pages
from smegmesh.core.record import NodeRecord, Prune, RecordError, check_record_fields
from smegmesh.core.state import MeshState, Verifier
from smegmesh.sim.state import clone_state

MESH = "amber-falcon-river-k7q2"
IDS = [NodeIdentity.from_seed(random.Random(i).randbytes(32)) for i in range(4)]
T0 = 1_000_000


def _rec(i: int, version: int = 1) -> NodeRecord:
    return NodeRecord.create(IDS[i], MESH, version=version, now_ms=T0 + version)


def _counting_verifier(calls: list[int]) -> Verifier:
    def verify(jobs: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
        calls.append(len(jobs))
        return verify_many(jobs)

    return verify


def test_state_checks_paging_leave_items_untouched() -> None:
    """Nothing is ever written into a frozen item (the old memo flags were, in ``__dict__``)."""
    recs = [_rec(i) for i in range(3)]
    prune = Prune.create(IDS[3], MESH, target_record=recs[0], now_ms=T0 + 5)
    items: list[NodeRecord | Prune] = [*recs, prune]
    for it in items:  # derived values (functools.cached_property) may be cached on the
        it.signed_payload()  # object: a pure function of its fields, not a fact of a check
    before = [dict(it.__dict__) for it in items]
    st = MeshState(MESH)
    changed, errors = st.apply_many(items, T0 + 10)
    assert errors == [] and len(changed) == 3
    assert not st.apply(recs[1], T0 + 10)
    for r in recs:
        check_record_fields(r, MESH, memo=st.memo)
    page(items, memo=st.memo)
    pages(items, budget=1, memo=st.memo)
    assert [dict(it.__dict__) for it in items] == before
    assert st.memo.sig_ok(recs[2]) and st.memo.checked_for(recs[2]) == MESH


def test_memo_spares_repeated_work_and_is_shared_by_clones() -> None:
    """One object's signature is verified once for all the states sharing a memo."""
    calls: list[int] = []
    memo = ItemMemo()
    base = MeshState(MESH, verifier=_counting_verifier(calls), memo=memo)
    rec = _rec(0)
    assert base.apply(rec, T0 + 10)
    assert calls == [1]
    base2 = MeshState(MESH, verifier=_counting_verifier(calls), memo=memo)
    assert base2.apply(rec, T0 + 10)
    assert calls == [1]  # known good from the shared memo
    clone = clone_state(base)
    assert clone.memo is memo
    other = MeshState(MESH, verifier=_counting_verifier(calls))  # its own memo
    assert other.apply(rec, T0 + 10)
    assert calls == [1, 1]
    assert memo.checked_for(rec) == MESH
    assert memo.size(rec) is None
    n = item_size(rec, memo)
    assert memo.size(rec) == n == item_size(rec)


class _Item:
    """An object that supports weak references, as the memo's items do."""


def test_memo_is_bounded_lru() -> None:
    memo = ItemMemo(max_items=3)
    objs = [_Item() for _ in range(10)]
    for o in objs:
        memo.note_sig_ok(o)
        assert len(memo) <= 3
    assert len(memo) == 3
    assert [memo.sig_ok(o) for o in objs[-3:]] == [True] * 3
    assert not memo.sig_ok(objs[0])  # evicted: recomputed, never wrong
    memo.sig_ok(objs[-3])  # a hit keeps it
    memo.note_size(objs[0], 7)  # evicts the least recently used (objs[-2])
    assert memo.sig_ok(objs[-3])
    assert not memo.sig_ok(objs[-2])
    assert memo.size(objs[0]) == 7
    with pytest.raises(ValueError, match="max_items"):
        ItemMemo(max_items=0)


def test_memo_keeps_nothing_alive_and_forgets_freed_items() -> None:
    """A hostile peer's discarded items are freed: the memo holds no reference to them."""
    memo = ItemMemo()
    st = MeshState(MESH, memo=memo)
    recs = [_rec(i) for i in range(3)]
    st.apply_many(recs, T0 + 10)
    forged = [
        dataclasses.replace(r, version=r.version + 1, timestamp_ms=r.timestamp_ms + 1) for r in recs
    ]
    st.apply_many(forged, T0 + 10)  # field checks pass, signatures do not
    assert all(memo.checked_for(f) == MESH for f in forged)
    refs = [weakref.ref(f) for f in forged]
    n = len(memo)
    del forged
    gc.collect()
    assert all(r() is None for r in refs)  # freed: the memo did not keep them
    assert len(memo) == n - 3  # and their entries went with them
    assert all(memo.sig_ok(r) for r in recs)


def test_forged_copy_is_not_taken_for_the_checked_original() -> None:
    """Keys are identities: an equal-looking forged object gets its own checks."""
    memo = ItemMemo()
    rec = _rec(0)
    st = MeshState(MESH, memo=memo)
    assert st.apply(rec, T0 + 10)
    forged = dataclasses.replace(rec, version=rec.version + 1, timestamp_ms=rec.timestamp_ms + 1)
    with pytest.raises(RecordError, match="signature"):
        st.apply(forged, T0 + 10)
    assert not memo.sig_ok(forged)
