"""One node in several meshes: routing across them. Pure.

The per-mesh engines (``core.meshnode``) know nothing of each other; this
module joins them for a node that is in several meshes: it runs the
path-vector computation (``core.routing``) over all of the node's meshes and
publishes the resulting adverts into the node's own record in each mesh. The
daemon and the simulator both call :func:`route_meshes` after a state change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from smegmesh.core.cert import founding_name
from smegmesh.core.meshnode import MeshNode, Out
from smegmesh.core.record import MAX_PROOFS, MembershipProof, RouteAdv
from smegmesh.core.routing import DEFAULT_ROUTE, RoutingResult, compute_routes


@dataclass(frozen=True, slots=True)
class MeshRouting:
    """Per-mesh routing options (``advertiseRoute``/``advertiseDefaults``).

    They say what this node publishes *into that mesh*: ``advertise_defaults``
    its own ``::/0`` (it is an exit for the mesh), ``advertise_routes`` the
    prefixes of its other meshes and the routes it learned (a learned default
    included). A flag set on one mesh never makes the node advertise into
    another.
    """

    advertise_routes: bool = False
    advertise_defaults: bool = False

    def allows(self, advert: RouteAdv) -> bool:
        if advert.prefix == DEFAULT_ROUTE and not advert.path:
            return self.advertise_defaults
        return self.advertise_routes


def route_meshes(
    nodes: Mapping[str, MeshNode],
    options: Mapping[str, MeshRouting],
    *,
    accept_defaults: bool,
    now_ms: int,
) -> tuple[RoutingResult | None, dict[str, list[Out]]]:
    """Recompute routes over ``nodes`` (mesh id -> engine of this node in it).

    Returns the routing result and, per mesh, the engine outputs of publishing
    changed adverts (to be handled like any other engine output).
    """
    if not nodes:
        return None, {}
    self_key = next(iter(nodes.values())).key
    opts = {m: options.get(m, MeshRouting()) for m in nodes}
    result = compute_routes(
        self_key,
        {m: n.live_records() for m, n in nodes.items()},
        advertise_routes=any(o.advertise_routes for o in opts.values()),
        advertise_defaults=any(o.advertise_defaults for o in opts.values()),
        accept_defaults=accept_defaults,
    )
    outs: dict[str, list[Out]] = {}
    for mesh_id, node in nodes.items():
        o = opts[mesh_id]
        adverts = tuple(a for a in result.adverts.get(mesh_id, ()) if o.allows(a))
        proofs = _proofs(nodes, {a.path[0] for a in adverts if a.path})
        # nothing a receiver would drop (compute_routes already keeps the
        # first meshes that need a proof to MAX_PROOFS; this is the founding
        # record missing here)
        proven = {p.founding.mesh_id for p in proofs}
        adverts = tuple(
            a
            for a in adverts
            if not a.path or a.path[0] in proven or founding_name(a.path[0]) is None
        )
        rec = node.record
        if (
            rec is not None
            and not rec.left
            and (tuple(rec.routes) != tuple(adverts) or rec.proofs != proofs)
        ):
            outs[mesh_id] = node.update_self(now_ms, routes=tuple(adverts), proofs=proofs)
    return result, outs


def _proofs(nodes: Mapping[str, MeshNode], meshes: set[str]) -> tuple[MembershipProof, ...]:
    """Our membership proofs of the meshes our adverts cross first (sorted, bounded)."""
    out = []
    for m in sorted(meshes):
        n = nodes.get(m)
        founding = n.mesh.authority.founding if n is not None and n.mesh.admission else None
        if founding is not None:
            assert n is not None
            out.append(MembershipProof(founding, n.chain))
    return tuple(out[:MAX_PROOFS])
