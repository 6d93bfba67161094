"""A node in two meshes publishes the other mesh's prefix into each (route_meshes)."""

from __future__ import annotations

import random

from smegmesh.core.addressing import mesh_prefix
from smegmesh.core.gossip import GossipParams
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.meshnode import Changed, MeshNode, MeshSettings
from smegmesh.core.multimesh import MeshRouting, route_meshes

M1, M2 = "amber-falcon-river-k7q2", "cedar-fjord-jade-g27t"


def node(ident: NodeIdentity, mesh: str) -> MeshNode:
    n = MeshNode(
        ident,
        mesh,
        MeshSettings(wg_endpoint="192.0.2.1:51820", control_endpoint="192.0.2.1:4000"),
        GossipParams(),
        LivenessParams(),
        random.Random(1),
    )
    n.start(1_000)
    return n


def test_bridge_advertises_each_mesh_into_the_other() -> None:
    ident = NodeIdentity.from_seed(b"\x07" * 32)
    nodes = {M1: node(ident, M1), M2: node(ident, M2)}
    opts = {M1: MeshRouting(advertise_routes=True), M2: MeshRouting(advertise_routes=True)}
    result, outs = route_meshes(nodes, opts, accept_defaults=False, now_ms=2_000)
    assert result is not None
    assert set(outs) == {M1, M2}
    assert any(isinstance(o, Changed) for o in outs[M1])
    r1, r2 = nodes[M1].record, nodes[M2].record
    assert r1 is not None and r2 is not None
    assert [(r.prefix, r.path) for r in r1.routes] == [(str(mesh_prefix(M2)), (M2,))]
    assert [(r.prefix, r.path) for r in r2.routes] == [(str(mesh_prefix(M1)), (M1,))]
    # Nothing changed: nothing published again.
    _, again = route_meshes(nodes, opts, accept_defaults=False, now_ms=3_000)
    assert again == {}


def test_without_advertise_route_nothing_is_published() -> None:
    ident = NodeIdentity.from_seed(b"\x08" * 32)
    nodes = {M1: node(ident, M1), M2: node(ident, M2)}
    _, outs = route_meshes(nodes, {}, accept_defaults=False, now_ms=2_000)
    assert outs == {}
    assert all(n.record is not None and n.record.routes == () for n in nodes.values())


def test_flags_of_one_mesh_do_not_leak_into_another() -> None:
    """Defaults offered only into M1, routes only into M2 (per-mesh flags)."""
    ident = NodeIdentity.from_seed(b"\x09" * 32)
    nodes = {M1: node(ident, M1), M2: node(ident, M2)}
    opts = {
        M1: MeshRouting(advertise_defaults=True),
        M2: MeshRouting(advertise_routes=True),
    }
    route_meshes(nodes, opts, accept_defaults=False, now_ms=2_000)
    r1, r2 = nodes[M1].record, nodes[M2].record
    assert r1 is not None and r2 is not None
    # M1: only our own default, not M2's prefix (advertiseRoute is off there)
    assert [(r.prefix, r.path) for r in r1.routes] == [("::/0", ())]
    # M2: M1's prefix, and no default (advertiseDefaults is off there)
    assert [(r.prefix, r.path) for r in r2.routes] == [(str(mesh_prefix(M1)), (M1,))]
