"""Chains share their certificates in the state (twenty-first session).

A founded mesh's records carry their admission chains: a member's chain is
its admitter's and one certificate more, so 3,000 chains (8.9 levels deep
on average) hold about 3,000 distinct certificates. A daemon decodes each
record from its own bytes, so it held a certificate object per level of
every chain: at 1,000 members the state took 12.3 MB against 2.9 without
admission, and a smegd in a founded swarm of 1,000 had 111.5 MB RSS
against 92.3. The state now keeps one object per certificate (the verified
ones it caches anyway), and every record and prune it holds points at it.
"""

from __future__ import annotations

from smegmesh.core.record import NodeRecord, Prune
from smegmesh.core.sync import Push
from smegmesh.core.wire import decode, encode
from test_elide import LATER, _mesh, _prune, _state


def _decoded(items: list[NodeRecord | Prune], mesh_id: str) -> list[NodeRecord | Prune]:
    """Each item as a daemon gets it: decoded from its own bytes."""
    out = []
    for it in items:
        push = decode(encode(Push(mesh_id, (it,))))
        assert isinstance(push, Push)
        out.extend(push.items)  # type: ignore[arg-type]
    return out


def test_the_chains_held_share_one_object_per_certificate() -> None:
    m, recs = _mesh(12)
    now = m.t + LATER
    st = _state(m, [], now)
    got = _decoded(recs, m.mesh_id)
    changed, errors = st.apply_many(got, now)
    assert not errors and len(changed) == len(recs)
    held = [st.record(r.wg_key) for r in recs]
    certs = [c for r in held if r is not None for c in r.chain]
    assert len(certs) > len({c.key for c in certs})  # the chains overlap
    assert len({id(c) for c in certs}) == len({c.key for c in certs})
    assert held == recs  # the same records, by value


def test_a_prune_shares_the_held_record_and_the_pruners_chain() -> None:
    m, recs = _mesh(12)
    now = m.t + LATER
    st = _state(m, _decoded(recs, m.mesh_id), now)
    (prune,) = _decoded([_prune(m, 3, recs[7], now)], m.mesh_id)
    assert isinstance(prune, Prune)
    assert st.apply(prune, now)
    pr = st.get_prune(recs[7].wg_key)
    assert pr == prune and pr.target_record is st.record(recs[7].wg_key)
    pruner = st.record(prune.by_wg_key)
    assert pruner is not None and all(
        a is b for a, b in zip(pr.by_chain, pruner.chain, strict=True)
    )
