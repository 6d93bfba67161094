"""Find the node a user means: ``NODE`` as an alias, public key, overlay address or prefix.

:func:`resolve_node` is the one resolver every command that takes a NODE uses
(``ping``; ``evict``/``admin`` later). It works on the mesh views the daemon
serves (:class:`~smegmesh.daemon.api_models.MeshDetail`), so it runs the same
in the daemon and in a client that fetched ``GET /v1/meshes/{id}``.

Rules, in order:

1. exact matches: an alias (any case), a public key, an overlay address (any
   spelling of the same IPv6 address) or a node id (``NODEID.MESH.smeg.``);
2. otherwise unique prefixes of one of those (case-insensitive for aliases,
   node ids and addresses; exact case for keys, which are base64);
3. the same node found in several meshes is ambiguous too (its address differs
   per mesh): the error asks for ``--meshid``;
4. an IPv6 address that is no member's (e.g. behind a bridge) resolves to
   itself, without a node.

Errors are :class:`~smegmesh.daemon.service.ServiceError`: ``unknown_node``
(404) and ``ambiguous_node`` (400), whose messages list the candidates.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from smegmesh.daemon.api_models import MeshDetail, NodeInfo
from smegmesh.daemon.service import ServiceError

__all__ = ["MAX_CANDIDATES_SHOWN", "Resolved", "describe", "resolve_node"]

#: Candidates named in an "ambiguous" message (the rest are counted).
MAX_CANDIDATES_SHOWN = 8


@dataclass(frozen=True)
class Resolved:
    """The node (and mesh) ``NODE`` named, or a bare address when it is no member's."""

    address: str
    mesh_id: str | None = None
    node: NodeInfo | None = None


def describe(mesh_id: str, n: NodeInfo) -> str:
    """``alias (KEYPREFIX…, ADDRESS in MESH)`` for messages."""
    name = n.alias or n.public_key[:12] + "…"
    return f"{name} ({n.public_key[:8]}…, {n.overlay_address} in {mesh_id})"


def _ip(text: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def _exact(q: str, ip: ipaddress.IPv6Address | None, n: NodeInfo) -> bool:
    if n.public_key == q or (n.alias and n.alias.lower() == q.lower()):
        return True
    if n.node_id is not None and n.node_id.lower() == q.lower():
        return True
    return ip is not None and _ip(n.overlay_address) == ip


def _prefix(q: str, n: NodeInfo) -> bool:
    ql = q.lower()
    return (
        n.public_key.startswith(q)
        or (bool(n.alias) and n.alias.lower().startswith(ql))
        or (n.node_id is not None and n.node_id.lower().startswith(ql))
        or n.overlay_address.lower().startswith(ql)
    )


def _ambiguous(query: str, found: list[tuple[str, NodeInfo]], same_node: bool) -> ServiceError:
    shown = "; ".join(describe(m, n) for m, n in found[:MAX_CANDIDATES_SHOWN])
    more = len(found) - MAX_CANDIDATES_SHOWN
    if more > 0:
        shown += f"; and {more} more"
    if same_node:
        meshes = ", ".join(m for m, _ in found)
        msg = f"{query!r} is in several meshes ({meshes}): pass --meshid"
    else:
        msg = f"{query!r} matches {len(found)} nodes: {shown}; give more of it"
    return ServiceError("ambiguous_node", msg, 400)


def resolve_node(query: str, meshes: Sequence[MeshDetail], mesh_id: str | None = None) -> Resolved:
    """The node ``query`` names among ``meshes`` (only ``mesh_id`` if given); see module doc."""
    q = query.strip()
    if not q:
        raise ServiceError("invalid_argument", "NODE is empty", 400)
    pool = [m for m in meshes if mesh_id is None or m.mesh_id == mesh_id]
    ip = _ip(q)
    found = [(m.mesh_id, n) for m in pool for n in m.nodes if _exact(q, ip, n)]
    if not found and ip is None:
        found = [(m.mesh_id, n) for m in pool for n in m.nodes if _prefix(q, n)]
    if len(found) == 1:
        mid, n = found[0]
        return Resolved(address=n.overlay_address, mesh_id=mid, node=n)
    if found:
        same = len({n.public_key for _, n in found}) == 1
        raise _ambiguous(q, found, same)
    if ip is not None:
        return Resolved(address=str(ip))
    where = f"mesh {mesh_id!r}" if mesh_id is not None else "any mesh of this node"
    raise ServiceError(
        "unknown_node",
        f"no node in {where} matches {q!r} (an alias, public key, overlay address, "
        "or a prefix of one)",
        404,
    )
