"""Routing against a hostile member (core/routing.py, core/multimesh.py).

Found by a review of routing: an unprovable first hop needed no proof at all
(finding 4), one member's invented destinations crowded every real route out
of an honest bridge's record (finding 2), and a bridge in more than
MAX_PROOFS + 1 meshes published adverts its receivers dropped (finding 5).
"""

from __future__ import annotations

from smegmesh.core.addressing import mesh_prefix
from smegmesh.core.record import MembershipProof, NodeRecord, Role, RouteAdv
from smegmesh.core.routing import compute_routes
from smegmesh.core.state import MeshState
from smegmesh.testbed.founded import NOW, Mesh, ident


def pfx(m: str) -> str:
    return str(mesh_prefix(m))


def _routes(me: bytes, meshes: dict[str, MeshState], **kw: bool) -> dict[str, tuple]:
    res = compute_routes(
        me,
        {m: st.live_records() for m, st in meshes.items()},
        advertise_routes=kw.get("advertise_routes", False),
        advertise_defaults=False,
        accept_defaults=False,
    )
    return {e.destination: (e.gateway, e.path, e.alternatives) for e in res.table}


# --------------------------------------------------------------------------- finding 4


def _unproven_liar(honest_path_len: int) -> tuple[Mesh, MeshState, str, NodeRecord, NodeRecord]:
    """Mesh 'here': an honest bridge to X (proven first hop P) and a liar ("zz", X)."""
    bridge, liar = ident(21), ident(22)
    here = Mesh(name="here-mesh-a")
    p = Mesh(name="pine-mesh-p", founder=bridge)  # the bridge is P's founder
    x = Mesh(name="there-mesh-x", founder=ident(23))  # neither is a member of X
    for n in (bridge, liar):
        here.admit(n)
    dest = pfx(x.mesh_id)
    middle = tuple(f"old-mesh-{i}" for i in range(honest_path_len - 2))
    real = here.record(
        bridge,
        role=Role.PEER,
        wg_endpoint="192.0.2.8:51820",
        routes=(RouteAdv(dest, (p.mesh_id, *middle, x.mesh_id)),),
        proofs=(MembershipProof(p.founding, ()),),
    )
    fake = here.record(
        liar,
        role=Role.PEER,
        wg_endpoint="192.0.2.9:51820",
        routes=(RouteAdv(dest, ("zz", x.mesh_id)),),  # "zz": an old-style id, no proof
    )
    st = here.state()
    assert st.apply(real, NOW)
    assert st.apply(fake, NOW)
    return here, st, dest, real, fake


def test_an_unprovable_first_hop_never_ties_with_a_proven_one() -> None:
    """A member that proves nothing shared every length-2 route with the real bridge."""
    here, st, dest, real, _fake = _unproven_liar(2)
    chosen, alternatives = set(), set()
    for i in range(40, 72):  # 32 members of 'here', each with its own rendezvous
        got = _routes(ident(i).wg_public_key, {here.mesh_id: st})
        chosen.add(got[dest][0])
        alternatives.add(got[dest][2])
    assert chosen == {real.wg_key}
    assert alternatives == {0}  # the unproven advert is no alternative either


def test_an_unprovable_first_hop_is_still_used_when_it_is_shortest() -> None:
    """Length first (SPEC): old-style meshes keep routing; the liar wins only where
    it could also win with a mesh of its own as proven first hop (docs/ROUTING.md)."""
    here, st, dest, _real, fake = _unproven_liar(3)
    got = _routes(ident(40).wg_public_key, {here.mesh_id: st})
    assert got[dest][0] == fake.wg_key and len(got[dest][1]) == 2
