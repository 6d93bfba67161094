"""Traffic hijack through routing by a member turned bad (review of routing).

Each test plays one attack found by the review on the real core and failed
before its fix; see docs/SECURITY.md, "What a member turned bad can do with
routing".
"""

from __future__ import annotations

import pytest

from smegmesh.core.addressing import mesh_prefix
from smegmesh.core.record import MembershipProof, NodeRecord, RecordError, Role, RouteAdv
from smegmesh.core.routing import compute_routes
from smegmesh.core.state import MeshState
from smegmesh.testbed.founded import NOW, Mesh, ident

#: a mesh of the old style (4-character suffix: no authority, no admission)
OLD = "here-mesh-abcd"


def _old_record(who: int, **kw: object) -> NodeRecord:
    return NodeRecord.create(
        ident(who),
        OLD,
        version=NOW,
        now_ms=NOW,
        role=Role.PEER,
        wg_endpoint=f"192.0.2.{who}:51820",
        **kw,  # type: ignore[arg-type]
    )


def test_a_copied_membership_proof_is_refused_in_a_mesh_without_an_authority() -> None:
    """A member of an old-style mesh took a share of a founded mesh's traffic.

    Records of a mesh without an authority skipped every admission check, the
    membership proofs of other meshes included, so a member that copied the
    real bridge's proof (the founding record and chain are in its record)
    advertised the founded mesh at length 1 and tied with the bridge.
    """
    there = Mesh(name="there-mesh-b", founder=ident(3))
    dest = str(mesh_prefix(there.mesh_id))
    advert = (RouteAdv(dest, (there.mesh_id,)),)
    proof = (MembershipProof(there.founding, ()),)  # the bridge founded 'there'
    st = MeshState(OLD)
    assert st.apply(_old_record(3, routes=advert, proofs=proof), NOW)
    liar = _old_record(4, routes=advert, proofs=proof)
    with pytest.raises(RecordError, match="proofs"):
        st.apply(liar, NOW)
    res = compute_routes(
        ident(2).wg_public_key,
        {OLD: st.live_records()},
        advertise_routes=False,
        advertise_defaults=False,
        accept_defaults=False,
    )
    [entry] = res.table
    assert entry.gateway == ident(3).wg_public_key and entry.alternatives == 0
