"""Refuted prunes are counted against their pruner by when this node took the
prune (``core.refuted``), not by the time the pruner signed into it."""

from __future__ import annotations

from smegmesh.core.refuted import REFUTED_WITHIN_MS
from smegmesh.core.sync import Push
from smegmesh.testbed.founded import ident, member_node, settled


def _refuted_after(backdate_ms: int, refuted_after_ms: int = 200) -> dict[bytes, int]:
    """Member 4 pruned by member 2 at member 3, its prune dated ``backdate_ms``
    back; member 4 refutes ``refuted_after_ms`` later: the pruners counted."""
    m, st, recs, now = settled(after_ms=60_000)
    pruner, me, victim = ident(2), ident(3), ident(4)
    node = member_node(me, m.mesh_id, st)
    vrec = next(r for r in recs if r.wg_key == victim.wg_public_key)
    p = m.prune(pruner, vrec, now - backdate_ms)
    node.handle_request(pruner.wg_public_key, Push(m.mesh_id, (p,)), now)
    assert st.live_record(victim.wg_public_key) is None  # the live victim is pruned here
    t = now + refuted_after_ms
    node.handle_request(victim.wg_public_key, Push(m.mesh_id, (vrec.evolve(victim, t),), 1), t)
    assert st.live_record(victim.wg_public_key) is not None
    return dict(node.refuted.by_pruner)


def test_a_backdated_prune_of_a_live_member_still_names_its_pruner() -> None:
    """Review of the liveness code: whether a refutation blamed the pruner was
    judged by the prune's own timestamp_ms, which the pruner signs and may
    date back as far as the GC horizon: prunes of live members dated 31 s
    back were never counted in smegd_prunes_refuted_total nor named in the
    WARNING log (docs/SECURITY.md's pointer to the remedy, eviction)."""
    pruner = ident(2).wg_public_key
    assert _refuted_after(0) == {pruner: 1}  # dated now: blamed
    # dated 31 s back (the pruner's own word): the same prune, refuted as fast
    assert _refuted_after(REFUTED_WITHIN_MS + 1_000) == {pruner: 1}
    assert _refuted_after(20 * 60_000) == {pruner: 1}


def test_a_member_back_after_the_window_of_taking_its_prune_blames_nobody() -> None:
    """The window still runs from the prune: from when this node took it."""
    assert _refuted_after(0, REFUTED_WITHIN_MS + 1) == {}
    assert _refuted_after(0, REFUTED_WITHIN_MS - 1_000) == {ident(2).wg_public_key: 1}
