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
