"""Topology and offline routing of the multi-mesh simulator (:mod:`smegmesh.sim.routesim`).

:func:`make_topology` draws meshes joined by bridges; :func:`offline_routes`
converges the routes offline (``compute_routes`` iterated over the bridges
until a fixed point, which is unique: shortest paths, deterministic
tie-break).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from smegmesh.core.record import NodeRecord, RouteAdv
from smegmesh.core.routing import RouteEntry, compute_routes

__all__ = [
    "Table",
    "Topology",
    "control_endpoint",
    "make_topology",
    "offline_routes",
    "wg_endpoint",
]

Table = tuple[RouteEntry, ...]


@dataclass(frozen=True)
class Topology:
    """Meshes, their members and the bridges between them.

    Nodes ``0 .. meshes*per_mesh-1`` are ordinary members (``per_mesh`` per
    mesh, in mesh order); the others are bridges, each in exactly two meshes.
    """

    mesh_ids: tuple[str, ...]
    node_meshes: tuple[tuple[int, ...], ...]  # node -> indices of its meshes
    links: tuple[tuple[int, int], ...]  # mesh graph edges (a < b)
    bridges_of_link: dict[tuple[int, int], tuple[int, ...]]

    @property
    def nodes(self) -> int:
        return len(self.node_meshes)

    @property
    def bridges(self) -> list[int]:
        return [i for i, ms in enumerate(self.node_meshes) if len(ms) >= 2]

    def members(self, mesh: int) -> list[int]:
        return [i for i, ms in enumerate(self.node_meshes) if mesh in ms]

    def cut_links(self) -> set[tuple[int, int]]:
        """Links whose removal disconnects the mesh graph."""
        out = set()
        for e in self.links:
            if not _connected(len(self.mesh_ids), [x for x in self.links if x != e]):
                out.add(e)
        return out


def _connected(n: int, edges: Sequence[tuple[int, int]]) -> bool:
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    seen = {0}
    todo = [0]
    while todo:
        x = todo.pop()
        for y in adj[x]:
            if y not in seen:
                seen.add(y)
                todo.append(y)
    return len(seen) == n


def make_topology(
    meshes: int,
    per_mesh: int,
    *,
    seed: int,
    extra_links: float = 0.25,
    redundant: float = 0.2,
) -> Topology:
    """A random connected mesh graph: a random recursive tree plus
    ``extra_links * meshes`` extra links (average degree ~2.5); each link gets
    one bridge, or two with probability ``redundant``."""
    rng = random.Random(f"topology/{seed}")
    links: set[tuple[int, int]] = set()
    for i in range(1, meshes):
        j = rng.randrange(i)
        links.add((j, i))
    want = len(links) + round(extra_links * meshes)
    tries = 0
    while len(links) < want and tries < 100 * meshes and meshes > 2:
        tries += 1
        a, b = sorted(rng.sample(range(meshes), 2))
        links.add((a, b))
    ordered = tuple(sorted(links))
    node_meshes: list[tuple[int, ...]] = [(m,) for m in range(meshes) for _ in range(per_mesh)]
    by_link: dict[tuple[int, int], tuple[int, ...]] = {}
    for a, b in ordered:
        k = 2 if rng.random() < redundant else 1
        ids = []
        for _ in range(k):
            ids.append(len(node_meshes))
            node_meshes.append((a, b))
        by_link[(a, b)] = tuple(ids)
    mesh_ids = tuple(f"rmesh-{seed}-{m:03d}" for m in range(meshes))
    return Topology(mesh_ids, tuple(node_meshes), ordered, by_link)


# ---------------------------------------------------------------------- offline routing


def _node_seed(seed: int, i: int) -> bytes:
    return hashlib.sha256(f"smegmesh-routesim/{seed}/{i}".encode()).digest()


def control_endpoint(i: int) -> str:
    return f"[fd00:5f::{i // 65536:x}:{i % 65536:x}]:7443"


def wg_endpoint(i: int) -> str:
    return f"[2001:db8:5f::{i // 65536:x}:{i % 65536:x}]:51820"


def offline_routes(
    topo: Topology,
    records: dict[tuple[int, int], NodeRecord],
    dead: Iterable[int] = (),
    *,
    max_rounds: int | None = None,
    rank_keys: Sequence[bytes] | None = None,
) -> tuple[dict[tuple[int, int], tuple[RouteAdv, ...]], list[Table | None], int]:
    """Converge routes offline: ``compute_routes`` over the bridges until nothing changes.

    ``records[(node, mesh)]`` are the base records (their ``routes`` are
    ignored). Returns the bridges' adverts per (node, mesh), every live
    node's table (None for dead nodes) and the number of rounds.
    ``rank_keys[i]``: node ``i``'s rendezvous secret (``NodeIdentity.rank_key``),
    as its engine ranks gateways; None: the public keys.
    """
    gone = set(dead)
    cur = {k: replace(r, routes=()) for k, r in records.items() if k[0] not in gone}
    members: list[list[int]] = [[] for _ in topo.mesh_ids]
    for i, ms in enumerate(topo.node_meshes):
        if i not in gone:
            for m in ms:
                members[m].append(i)
    ids = topo.mesh_ids

    def compute(i: int, adv: bool) -> Any:
        recs = {ids[m]: [cur[(j, m)] for j in members[m]] for m in topo.node_meshes[i]}
        return compute_routes(
            records[(i, topo.node_meshes[i][0])].wg_key,
            recs,
            advertise_routes=adv,
            advertise_defaults=False,
            accept_defaults=False,
            rank_key=None if rank_keys is None else rank_keys[i],
        )

    bridges = [b for b in topo.bridges if b not in gone]
    limit = max_rounds if max_rounds is not None else 4 * len(ids) + 10
    rounds = 0
    changed = True
    while changed:
        rounds += 1
        if rounds > limit:
            raise RuntimeError("offline routing did not converge")
        changed = False
        for b in bridges:  # Gauss-Seidel: the fixed point is unique, order only changes speed
            res = compute(b, True)
            for m in topo.node_meshes[b]:
                new = tuple(res.adverts.get(ids[m], ()))
                if cur[(b, m)].routes != new:
                    cur[(b, m)] = replace(cur[(b, m)], routes=new)
                    changed = True
    adverts = {(b, m): cur[(b, m)].routes for b in bridges for m in topo.node_meshes[b]}
    tables: list[Table | None] = [
        None if i in gone else tuple(compute(i, len(topo.node_meshes[i]) >= 2).table)
        for i in range(topo.nodes)
    ]
    return adverts, tables, rounds
