"""The JSON view of a mesh (``GET /v1/meshes/{id}``, ``docs/QUERY.md``).

:func:`mesh_detail` is a pure function of the mesh's records, WireGuard
counters, failure-detector state and the clock; :func:`model_json_bytes` /
:func:`model_json` serialise big models without holding the GIL for long.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from smegmesh.core.addressing import mesh_prefix, node_id_prefix, overlay_address
from smegmesh.core.aliases import alias_owners
from smegmesh.core.authority import Authority
from smegmesh.core.cert import Revocation
from smegmesh.core.identity import key_to_text
from smegmesh.core.record import NodeRecord, Role
from smegmesh.core.wgconfig import PeerStatus
from smegmesh.daemon.api_models import (
    EvictedNode,
    MeshDetail,
    NodeInfo,
    RouteInfo,
    SelectedRoute,
)
from smegmesh.daemon.views.common import _assignments, _first_paths, _present

__all__ = ["evicted_node", "evicted_self", "mesh_detail", "model_json", "model_json_bytes"]


def _leader(nodes: Mapping[bytes, NodeRecord], suspects: set[bytes]) -> bytes | None:
    """The lowest key among live peers (SPEC §3)."""
    live = [k for k, r in nodes.items() if r.role == Role.PEER and k not in suspects]
    return min(live) if live else None


def _selected_routes(
    mesh_id: str,
    nodes: Mapping[bytes, NodeRecord],
    routes: Iterable[tuple[str, str, bytes, int]],
) -> tuple[list[SelectedRoute], dict[bytes, list[str]]]:
    selected: list[SelectedRoute] = []
    gateway_for: dict[bytes, list[str]] = {}
    # One pass over every advertisement (not one per route used: that was
    # quadratic, 20 s for 20 records of 512 routes): who offers each
    # (destination, path length), and each node's path to each destination.
    offered: dict[tuple[str, int], set[bytes]] = {}
    for k, r in nodes.items():
        for a in r.routes:
            offered.setdefault((a.prefix, len(a.path)), set()).add(k)
    paths = _first_paths(nodes)
    for dest, mid, gw, plen in routes:
        if mid != mesh_id:
            continue
        rec = nodes.get(gw)
        path = paths.get((gw, dest), ())
        alternatives = sorted(offered.get((dest, plen), set()) - {gw})
        selected.append(
            SelectedRoute(
                destination=dest,
                gateway=key_to_text(gw),
                gateway_alias=rec.alias if rec is not None else "",
                path=list(path),
                path_length=plen,
                alternatives=[key_to_text(k) for k in alternatives],
            )
        )
        gateway_for.setdefault(gw, []).append(dest)
    selected.sort(key=lambda s: (s.destination, s.gateway))
    return selected, gateway_for


def _wg_fields(wg: PeerStatus | None, now_s: float) -> dict[str, Any]:
    """The :class:`NodeInfo` fields read back from this node's WireGuard interface."""
    if wg is None:
        return {
            "handshake_age_s": None,
            "wg_peer": False,
            "rx_bytes": 0,
            "tx_bytes": 0,
            "keepalive_s": 0,
            "allowed_ips": [],
        }
    age = round(max(0.0, now_s - wg.last_handshake), 3) if wg.last_handshake else None
    return {
        "handshake_age_s": age,
        "wg_peer": True,
        "rx_bytes": wg.rx_bytes,
        "tx_bytes": wg.tx_bytes,
        "keepalive_s": wg.keepalive,
        "allowed_ips": sorted(wg.allowed_ips),
    }


def mesh_detail(
    mesh_id: str,
    ifname: str | None,
    records: Sequence[NodeRecord],
    *,
    self_key: bytes,
    wg_peers: Mapping[bytes, PeerStatus],
    last_heard: Mapping[bytes, int],
    suspects: set[bytes] | frozenset[bytes],
    routes: Iterable[tuple[str, str, bytes, int]] = (),
    now_ms: int,
    authority: Authority | None = None,
) -> MeshDetail:
    """The JSON view of one mesh (``docs/QUERY.md``).

    ``records``: the mesh's current records (departed nodes, ``left``, are
    omitted); ``wg_peers``: this node's WireGuard peers as read back from the
    interface (handshake age and byte counters, when the node is one);
    ``last_heard``: when each node was last heard from (ms, same clock as
    ``now_ms``); ``suspects``: nodes the failure detector suspects;
    ``routes``: :class:`RouteUse` entries of the routed destinations this node
    uses (entries for other meshes are ignored).
    """
    nodes = _present(records)
    assignment = _assignments(nodes)
    owners = alias_owners(nodes.values(), authority)
    selected, gateway_for = _selected_routes(mesh_id, nodes, routes)
    now_s = now_ms / 1000
    vouch = _seen_via(nodes, assignment, self_key)

    def info(r: NodeRecord) -> NodeInfo:
        k = r.wg_key
        wg = wg_peers.get(k)
        heard = now_ms if k == self_key else last_heard.get(k)
        via = assignment.get(k)
        return NodeInfo(
            public_key=key_to_text(k),
            alias=r.alias,
            description=r.description,
            role=r.role.value,
            overlay_address=r.address,
            wg_endpoint=r.wg_endpoint,
            control_endpoint=r.control_endpoint,
            last_seen=heard / 1000 if heard is not None else None,
            seen_via=key_to_text(v) if (v := vouch(k)) is not None else None,
            **_wg_fields(wg, now_s),
            assigned_peer=key_to_text(via) if via is not None else None,
            routes=[RouteInfo(destination=a.prefix, path=list(a.path)) for a in r.routes],
            services=dict(r.services),
            is_self=k == self_key,
            status="suspect" if k in suspects and k != self_key else "live",
            node_id=node_id_prefix(k),
            record_version=r.version,
            nat_endpoint=r.nat_endpoint,
            record_timestamp=r.timestamp_ms / 1000,
            alias_conflict=bool(r.alias) and owners.get(r.alias.lower()) != k,
            gateway_for=sorted(gateway_for.get(k, [])),
            admin=authority is not None and authority.is_admin(k),
        )

    def order(r: NodeRecord) -> tuple[bool, bool, bool, str, bytes]:
        return (r.wg_key != self_key, r.role != Role.PEER, not r.alias, r.alias, r.wg_key)

    leader = _leader(nodes, set(suspects))
    me = nodes.get(self_key)
    return MeshDetail(
        mesh_id=mesh_id,
        interface=ifname,
        prefix=str(mesh_prefix(mesh_id)),
        self_key=key_to_text(self_key),
        leader=key_to_text(leader) if leader is not None else None,
        nodes=[info(r) for r in sorted(nodes.values(), key=order)],
        role=me.role.value if me is not None else None,
        routes=selected,
        invite_policy=authority.policy.value
        if authority is not None and authority.founding is not None
        else None,
        admins=sorted(key_to_text(k) for k in authority.admins) if authority is not None else [],
        evicted=_evicted(authority) if authority is not None else [],
    )


def _seen_via(
    nodes: Mapping[bytes, NodeRecord], assignment: Mapping[bytes, bytes | None], self_key: bytes
) -> Callable[[bytes], bytes | None]:
    """The peer through which this node knows ``k`` alive (None: it hears from ``k`` itself).

    Members do not probe clients: a client's assigned peer hears its pings and
    prunes it after a ``clientTimeout`` of silence; the other members know it
    alive only because that peer keeps it. A client hears from its own peer
    only: the rest of the mesh's liveness comes to it from that peer.
    """
    me = nodes.get(self_key)
    if me is not None and me.role == Role.CLIENT:
        mine = assignment.get(self_key)
        return lambda k: mine if k not in (self_key, mine) else None

    def via(k: bytes) -> bytes | None:
        p = assignment.get(k)
        return p if p != self_key else None

    return via


def _evicted(authority: Authority) -> list[EvictedNode]:
    return [evicted_node(authority.mesh_id, revs) for _k, revs in sorted(authority.revoked.items())]


def evicted_node(mesh_id: str, revs: Sequence[Revocation]) -> EvictedNode:
    """The node ``revs`` (one or more evictions of one node, the first first) evicted."""
    first = min(revs, key=lambda r: r.issued_ms)
    return _evicted_entry(mesh_id, first.target, first, any(r.cascade for r in revs))


def evicted_self(mesh_id: str, key: bytes, rev: Revocation) -> EvictedNode:
    """This node (``key``), evicted by ``rev``: of it, or of an admitter in its chain."""
    through = rev.target != key  # by cascade: so are the nodes it admitted
    return _evicted_entry(
        mesh_id, key, rev, rev.cascade or through, key_to_text(rev.target) if through else None
    )


def _evicted_entry(
    mesh_id: str, key: bytes, rev: Revocation, cascade: bool, through: str | None = None
) -> EvictedNode:
    return EvictedNode(
        public_key=key_to_text(key),
        node_id=node_id_prefix(key),
        overlay_address=str(overlay_address(mesh_id, key)),
        by=key_to_text(rev.issuer),
        time=rev.issued_ms / 1000,
        cascade=cascade,
        through=through,
    )


# --------------------------------------------------------------------------- serialising
#
# pydantic serialises in Rust holding the GIL: one model_dump_json() of a
# mesh at the largest legal state holds it for about a second, and the event
# loop, in another thread, stalls that long. These helpers serialise the big
# lists item by item, so the GIL is released between items.


def _big_lists(model: BaseModel) -> dict[str, list[BaseModel]]:
    return {
        name: value
        for name in type(model).model_fields
        if isinstance(value := getattr(model, name), list)
        and value
        and isinstance(value[0], BaseModel)
    }


def model_json_bytes(model: BaseModel) -> bytes:
    """``model.model_dump_json()``, in pieces (see above); the same JSON document."""
    lists = _big_lists(model)
    if not lists:
        return model.model_dump_json().encode()
    parts: list[bytes] = []
    for name in type(model).model_fields:
        if name in lists:
            items = b",".join(m.model_dump_json().encode() for m in lists[name])
            parts.append(json.dumps(name).encode() + b":[" + items + b"]")
        else:
            parts.append(model.model_dump_json(include={name}).encode()[1:-1])
    return b"{" + b",".join(p for p in parts if p) + b"}"


def model_json(model: BaseModel) -> Any:
    """``model.model_dump(mode="json")``, in pieces (see above)."""
    lists = _big_lists(model)
    out = model.model_dump(mode="json", exclude=set(lists))
    for name, items in lists.items():
        out[name] = [m.model_dump(mode="json") for m in items]
    return {name: out[name] for name in type(model).model_fields if name in out}
