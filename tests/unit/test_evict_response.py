"""``evict`` reports the node evicted and the nodes this eviction removed, no others.

Found by a review of the authority: with ``--cascade`` EvictResponse.evicted
listed every node ever evicted in the mesh (sorted(revoked)), so smegctl
printed "evicted X (and N it admitted)" with N counting unrelated earlier
evictions, and the nodes the cascade did remove were not listed.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from smegmesh.core.cert import Policy
from smegmesh.core.identity import NodeIdentity, key_to_text
from smegmesh.daemon.authority_ops import AuthorityOps
from smegmesh.testbed.founded import NOW, Mesh, ident, member_node


class Ops(AuthorityOps):
    def __init__(self, identity: NodeIdentity, rt: Any) -> None:
        self.identity, self.rt = identity, rt

    def _get(self, mesh_id: str) -> Any:
        return self.rt

    async def _commit(self, rt: Any, outs: list[Any]) -> None:
        return None

    def device_infos(self, rt: Any) -> list[Any]:
        return []


def _text(i: int) -> str:
    return key_to_text(ident(i).wg_public_key)


def test_evict_reports_what_this_eviction_removed() -> None:
    m = Mesh(Policy.MEMBERS)
    old, bad, child, grandchild, kept = ident(2), ident(3), ident(4), ident(5), ident(6)
    m.admit(old)
    m.admit(bad)
    m.admit(child, by=bad)
    m.admit(grandchild, by=child)
    m.admit(kept, by=old)
    st = m.state()
    node = member_node(m.founder, m.mesh_id, st)
    node.start(NOW)
    for n in (old, bad, child, grandchild, kept):
        assert st.apply(m.record(n, alias=f"n{n.wg_public_key[0]}"), NOW)
    ops = Ops(m.founder, SimpleNamespace(node=node, mesh_id=m.mesh_id))
    res = asyncio.run(ops.evict(m.mesh_id, _text(2), False))  # plain: 'kept' stays
    assert res.evicted == [_text(2)] and res.kept == 1
    res = asyncio.run(ops.evict(m.mesh_id, _text(3), True))
    assert not st.is_member(child.wg_public_key)
    assert res.evicted[0] == _text(3)
    assert sorted(res.evicted[1:]) == sorted([_text(4), _text(5)]), res.evicted


def test_evicting_an_evicted_node_again_says_it_was_evicted() -> None:
    """It said "no node in mesh M matches 'KEY'": as if the key were mistyped."""
    import pytest

    from smegmesh.daemon.service import ServiceError

    m = Mesh(Policy.MEMBERS)
    bad = ident(3)
    m.admit(bad)
    st = m.state()
    node = member_node(m.founder, m.mesh_id, st)
    node.start(NOW)
    assert st.apply(m.record(bad, alias="bad"), NOW)
    ops = Ops(m.founder, SimpleNamespace(node=node, mesh_id=m.mesh_id))
    asyncio.run(ops.evict(m.mesh_id, "bad", False))
    for query in (_text(3), _text(3)[:8]):
        for call in (ops.evict(m.mesh_id, query, False), ops.set_admin(m.mesh_id, query, True)):
            with pytest.raises(ServiceError) as ei:
                asyncio.run(call)
            assert (ei.value.code, ei.value.status) == ("evicted", 409), ei.value
            assert ei.value.message == (
                f"{_text(3)[:12]}… was evicted from mesh {m.mesh_id} already "
                "(get-mesh --all lists evicted nodes)"
            )
    with pytest.raises(ServiceError) as ei:  # a name that was never there: as before
        asyncio.run(ops.evict(m.mesh_id, "nobody", False))
    assert ei.value.code == "unknown_node"


def test_a_bad_alias_to_reserve_names_the_field_once() -> None:
    """It said "alias: alias: must be a DNS label (1-63 of [a-z0-9-])"."""
    import pytest

    from smegmesh.daemon.service import ServiceError

    m = Mesh(Policy.MEMBERS)
    node = member_node(m.founder, m.mesh_id, m.state())
    node.start(NOW)
    ops = Ops(m.founder, SimpleNamespace(node=node, mesh_id=m.mesh_id))
    with pytest.raises(ServiceError) as ei:
        asyncio.run(ops.reserve_alias(m.mesh_id, "bad label", None))
    assert ei.value.message == "alias: must be a DNS label (1-63 of [a-z0-9-])"


def test_reserving_an_alias_others_claim_names_them_in_warnings() -> None:
    """The reservation outranks every other claim in DNS: a node or device that
    answered to the name stops answering, and the admin who reserved it is told
    which (it used to say only "reserved")."""
    m = Mesh(Policy.MEMBERS)
    holder, user = ident(2), ident(3)
    m.admit(holder)
    m.admit(user)
    st = m.state()
    node = member_node(m.founder, m.mesh_id, st)
    node.start(NOW)
    assert st.apply(m.record(holder, alias="app"), NOW)
    assert st.apply(m.record(user, alias="db1"), NOW)
    ops = Ops(m.founder, SimpleNamespace(node=node, mesh_id=m.mesh_id))
    dev = SimpleNamespace(
        public_key="Dev" + "A" * 40, alias="DB1", overlay_address="fd00::d", node_id="d"
    )
    ops.device_infos = lambda rt: [dev]  # type: ignore[method-assign]
    res = asyncio.run(ops.reserve_alias(m.mesh_id, "db1", _text(2)))
    assert res.node == _text(2)
    assert res.warnings == [
        f"node {_text(3)[:12]}… claims alias db1 too: the reservation outranks it in DNS",
        f"device {'Dev' + 'A' * 9}… claims alias db1 too: the reservation outranks it in DNS",
    ]
    # the holder's own claim, and a release, warn of nothing
    assert asyncio.run(ops.reserve_alias(m.mesh_id, "app", _text(2))).warnings == []
    assert asyncio.run(ops.reserve_alias(m.mesh_id, "db1", None)).warnings == []


def test_the_warnings_of_a_reservation_are_bounded() -> None:
    """Named one by one up to MAX_CLAIM_WARNINGS, the rest counted in one line."""
    from smegmesh.daemon.authority_ops import MAX_CLAIM_WARNINGS

    m = Mesh(Policy.MEMBERS)
    holder = ident(2)
    m.admit(holder)
    st = m.state()
    node = member_node(m.founder, m.mesh_id, st)
    node.start(NOW)
    assert st.apply(m.record(holder, alias="app"), NOW)
    ops = Ops(m.founder, SimpleNamespace(node=node, mesh_id=m.mesh_id))
    devs = [
        SimpleNamespace(
            public_key=f"D{i:02d}" + "A" * 40, alias="db1", overlay_address="fd00::d", node_id="d"
        )
        for i in range(MAX_CLAIM_WARNINGS + 4)
    ]
    ops.device_infos = lambda rt: devs  # type: ignore[method-assign]
    res = asyncio.run(ops.reserve_alias(m.mesh_id, "db1", _text(2)))
    assert len(res.warnings) == MAX_CLAIM_WARNINGS + 1
    tail = "4 more nodes or devices claim alias db1 too: the reservation outranks them"
    assert res.warnings[-1] == tail
