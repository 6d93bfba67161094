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

from smegmesh.core.cert import Cert
from smegmesh.core.codec import Elided
from smegmesh.core.elide import elide, expand
from smegmesh.core.identity import verify_many
from smegmesh.core.record import NodeRecord, Prune
from smegmesh.core.state import MeshState
from smegmesh.core.sync import Push
from smegmesh.core.wire import decode, encode
from smegmesh.testbed.founded import Mesh, ident
from test_elide import LATER, _mesh, _state


def _decoded(items: list[NodeRecord | Prune], mesh_id: str) -> list[NodeRecord | Prune]:
    """Each item as a daemon gets it: decoded from its own bytes."""
    out = []
    for it in items:
        push = decode(encode(Push(mesh_id, (it,))))
        assert isinstance(push, Push)
        out.extend(push.items)  # type: ignore[arg-type]
    return out


def _decoded_items(items: list[object], mesh_id: str) -> list[object]:
    push = decode(encode(Push(mesh_id, tuple(items))))  # type: ignore[arg-type]
    assert isinstance(push, Push)
    return list(push.items)


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
    (prune,) = _decoded([m.prune(ident(3), recs[7], now)], m.mesh_id)
    assert isinstance(prune, Prune)
    assert st.apply(prune, now)
    pr = st.get_prune(recs[7].wg_key)
    assert pr == prune and pr.target_record is st.record(recs[7].wg_key)
    pruner = st.record(prune.by_wg_key)
    assert pruner is not None and all(
        a is b for a, b in zip(pr.by_chain, pruner.chain, strict=True)
    )


def _counting_state(m: Mesh, recs: list[NodeRecord], now: int) -> tuple[MeshState, list[object]]:
    """A founded state holding ``recs`` (decoded), and the signature checks it makes."""
    jobs: list[object] = []

    def counting(js: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
        jobs.extend(js)
        return verify_many(js)

    st = MeshState(m.mesh_id, admission=True, verifier=counting)
    assert st.apply(m.founding, now)
    changed, errors = st.apply_many(_decoded(recs, m.mesh_id), now)
    assert not errors and len(changed) == len(recs)
    return st, jobs


def test_a_held_record_keeps_what_the_memo_knew_of_it() -> None:
    """Review (same session): the record put in the state in place of the
    decoded one lost its memo facts, so a held record that came back inside a
    prune by reference was checked and verified again: two signature checks
    per prune, and a push of forged elided prunes cost two per prune where
    the forgery stop promises one for the message."""
    m, recs = _mesh(40)
    now = m.t + LATER
    st, jobs = _counting_state(m, recs, now)
    held = [st.record(r.wg_key) for r in recs]
    assert all(h is not None and st.memo.sig_ok(h) for h in held)
    assert all(st.memo.checked_for(h) == m.mesh_id for h in held)
    jobs.clear()
    short = elide(m.prune(ident(3), recs[7], now), now)
    got = expand(st, _decoded_items([short], m.mesh_id))
    changed, errors = st.apply_many(got.items, now)
    assert changed and not errors and len(jobs) == 1  # the prune's signature alone
    forged = []
    for t in recs[8:]:
        p = elide(m.prune(ident(3), t, now), now)
        assert type(p) is Elided
        forged.append(Elided(p.kind, (*p.fields[:-1], b"\xff" * 64)))
    got = expand(st, _decoded_items(forged, m.mesh_id))
    jobs.clear()
    changed, errors = st.apply_many(got.items, now)
    assert not changed and len(errors) == len(forged) and len(jobs) == 1


def test_other_meshes_statements_are_remembered_by_key_only() -> None:
    """Review: the verified-statement cache kept every object, also the
    foundings of other meshes a member's membership proofs carry (847 B each
    kept, to 262,144 entries: ~212 MiB); only this mesh's certificates are
    kept whole (chains point at them)."""
    m, recs = _mesh(12)
    now = m.t + LATER
    st, _jobs = _counting_state(m, recs, now)
    st._note_good([m.founding])  # a statement that is not one of this mesh's certificates
    kept = [v for v in st._good_certs.values() if v is not None]
    assert kept and all(type(v) is Cert and v.mesh_id == m.mesh_id for v in kept)
    assert st._good_certs[m.founding.key] is None
