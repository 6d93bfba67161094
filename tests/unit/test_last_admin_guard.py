"""leave-mesh's guard of the last admin (daemon/membership.py ``_refuse_last_admin``).

Review: the guard counted every admin of the authority, and leaving does not
drop a node's admin right: with a second admin that had left the mesh, the
last admin still in it left unasked, and nobody could evict or name an admin
after.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from smegmesh.core.cert import AdminChange
from smegmesh.core.meshnode import MeshNode, NotAllowed
from smegmesh.daemon import service as svc
from smegmesh.daemon.membership import MembershipOps
from smegmesh.testbed.founded import NOW, Mesh, each_over_own_state, ident


def _nodes() -> tuple[Mesh, MeshNode, MeshNode, MeshNode]:
    """The founder (admin), X made an admin, and a member B: one state of all three."""
    m = Mesh()
    x, b = ident(2), ident(3)
    made = AdminChange.create(
        m.founder, m.mesh_id, subject=x.wg_public_key, admin=True, now_ms=NOW + 1
    )
    founder, nx, nb = each_over_own_state(m, [x, b], (made,), NOW + 2)
    return m, founder, nx, nb


def _guard(node: MeshNode) -> None:
    me = SimpleNamespace(identity=node.identity)
    MembershipOps._refuse_last_admin(me, SimpleNamespace(node=node, mesh_id=node.mesh_id))  # type: ignore[arg-type]


def test_an_admin_among_several_leaves_freely() -> None:
    _m, founder, _x, _b = _nodes()
    _guard(founder)


def test_the_last_admin_still_in_the_mesh_is_refused() -> None:
    _m, founder, x, _b = _nodes()
    x.leave(NOW + 10)  # the other admin left: its right stays in the authority
    founder.mesh.apply(x.mesh.record(x.key), NOW + 11)  # type: ignore[arg-type]
    assert x.key in founder.mesh.authority.admins
    with pytest.raises(svc.ServiceError, match="last admin"):
        _guard(founder)


def test_a_member_that_is_no_admin_leaves_freely() -> None:
    _m, _founder, _x, b = _nodes()
    _guard(b)


def test_an_evicted_admin_told_so_is_refused_admin_acts_that_change_nothing() -> None:
    """Review of 447db3d: ``admin add`` of a node that already is an admin skipped
    the engine's checks when this node is an admin by its own view, so an admin
    evicted (and told so, core.evicted) heard 'was already an admin', not 403."""
    import asyncio

    from smegmesh.core.evicted import eviction_of
    from smegmesh.core.sync import Push
    from smegmesh.daemon.authority_ops import AuthorityOps

    _m, founder, x, _b = _nodes()
    founder.evict(NOW + 10, x.key)
    told = Push(founder.mesh_id, tuple(founder.mesh.authority.revoked[x.key]))
    x.evicted = eviction_of(x.mesh, x.key, told)
    assert x.evicted is not None and x.is_admin()  # its own state does not hold the eviction
    rt = SimpleNamespace(node=x, mesh_id=x.mesh_id)

    async def commit(_rt: object, _outs: object) -> None:
        raise AssertionError("nothing to publish")

    ops = SimpleNamespace(
        _get=lambda _mid: rt,
        _target=lambda _rt, _n: (founder.key, None, "founder"),
        _commit=commit,
    )
    with pytest.raises(svc.ServiceError, match="evicted"):
        asyncio.run(AuthorityOps.set_admin(ops, x.mesh_id, "founder", True))  # type: ignore[arg-type]


def test_making_an_admin_of_an_admin_publishes_nothing_but_a_member_is_refused() -> None:
    _m, founder, x, b = _nodes()
    assert founder.set_admin(NOW + 5, x.key, True) == []  # already: no statement
    assert founder.set_admin(NOW + 5, b.key, False) == []  # already not
    with pytest.raises(NotAllowed):
        b.set_admin(NOW + 5, x.key, True)  # who may not is told so, change or not


def test_an_admin_cannot_drop_its_right_when_the_only_other_admin_left() -> None:
    """Review: ``set_admin``'s own guard counted every admin of the authority, and
    leaving keeps a node's admin right there: with the only other admin gone, the
    last admin in the mesh dropped its right and the mesh had none left in it."""
    _m, founder, x, _b = _nodes()
    x.leave(NOW + 10)
    founder.mesh.apply(x.mesh.record(x.key), NOW + 11)  # type: ignore[arg-type]
    with pytest.raises(NotAllowed, match="last admin"):
        founder.set_admin(NOW + 12, founder.key, False)
    assert founder.is_admin()


def test_an_admin_drops_its_right_while_another_admin_is_in_the_mesh() -> None:
    _m, founder, x, _b = _nodes()
    assert founder.set_admin(NOW + 12, founder.key, False)
    assert not founder.is_admin() and x.key in founder.mesh.authority.admins


def test_the_only_admin_alone_in_its_mesh_keeps_its_right() -> None:
    m = Mesh()
    (founder,) = each_over_own_state(m, [], (), NOW + 2)
    with pytest.raises(NotAllowed, match="last admin"):
        founder.set_admin(NOW + 3, founder.key, False)
