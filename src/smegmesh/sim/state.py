"""Identities, records and pre-built steady states for the simulator.

Building a 10,000-node steady state by simulating 10,000 joins costs far more
than the steady state itself, so the simulator can start every node from one
shared, pre-built :class:`MeshState` that already holds every record (what
the mesh looks like after the joins settled). Each node gets a
:class:`SharedState`: a copy-on-write view of the shared state. The dict
tables are copied shallowly (pointers only) and the per-key objects the core
mutates in place (entries, digest-tree counters, leaf buckets) are unshared
just before the first write. Behaviour is exactly that of ``MeshState``:
every read and every write goes through the core's code; only the memory
layout is shared. ``tests/test_sim.py`` checks that a cloned state and a
state built by merging have the same digest and evolve identically.

This relies on the private layout of ``MeshState`` (``_entries``,
``_levels``, ``_buckets``, ``_install``); if the core changes it, the
determinism/equivalence tests fail loudly.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from smegmesh.core.identity import NodeIdentity
from smegmesh.core.record import NodeRecord, Prune, Role
from smegmesh.core.state import DEPTH, MeshState

__all__ = ["Population", "SharedState", "clone_state", "make_population"]


class SharedState(MeshState):
    """A ``MeshState`` sharing unchanged entries with a base state (copy-on-write)."""

    _base: MeshState | None

    def __init__(self, mesh_id: str, **kw: Any) -> None:
        super().__init__(mesh_id, **kw)
        self._base = None

    def _install(self, key: bytes, record: NodeRecord | None, prune: Prune | None) -> None:
        base = self._base
        if base is not None:
            e = self._entries.get(key)
            if e is not None and e is base._entries.get(key):
                self._entries[key] = type(e)(e.record, e.prune, e.h)
            top = int.from_bytes(key[:4], "big")
            for d in range(DEPTH + 1):
                p = top >> (32 - 4 * d)
                n = self._levels[d].get(p)
                if n is not None and n is base._levels[d].get(p):
                    self._levels[d][p] = [n[0], n[1]]
            p = top >> (32 - 4 * DEPTH)
            b = self._buckets.get(p)
            if b is not None and b is base._buckets.get(p):
                self._buckets[p] = set(b)
        super()._install(key, record, prune)


def clone_state(base: MeshState) -> SharedState:
    """A copy-on-write replica of ``base`` (``base`` must not change afterwards)."""
    st = SharedState.__new__(SharedState)
    st.mesh_id = base.mesh_id
    st._verifier = base._verifier
    st._horizon = base._horizon
    st._entries = dict(base._entries)
    st._levels = [dict(lvl) for lvl in base._levels]
    st._buckets = dict(base._buckets)
    st._base = base
    st._version = 0
    return st


def node_seed(sim_seed: int, index: int) -> bytes:
    return hashlib.sha256(f"smegmesh-sim/{sim_seed}/{index}".encode()).digest()


@dataclass
class Population:
    """Identities and initial records of ``n`` nodes, plus build timings (seconds)."""

    identities: list[NodeIdentity]
    records: list[NodeRecord]
    base: MeshState
    t_identities: float
    t_records: float
    t_state: float


_CACHE: dict[tuple[int, int, str, int], Population] = {}


def control_endpoint(i: int) -> str:
    return f"[fd00:5e::{i // 65536:x}:{i % 65536:x}]:7443"


def make_population(n: int, seed: int, mesh_id: str, now_ms: int) -> Population:
    """``n`` identities (seeds derived from ``seed``), their signed records, the full state.

    Cached per process: benchmarks reuse it across scenarios.
    """
    ck = (n, seed, mesh_id, now_ms)
    hit = _CACHE.get(ck)
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    ids = [NodeIdentity.from_seed(node_seed(seed, i)) for i in range(n)]
    t1 = time.perf_counter()
    recs = [
        NodeRecord.create(
            ident,
            mesh_id,
            version=now_ms,
            now_ms=now_ms,
            role=Role.PEER,
            wg_endpoint=f"[2001:db8::{i // 65536:x}:{i % 65536:x}]:51820",
            control_endpoint=control_endpoint(i),
        )
        for i, ident in enumerate(ids)
    ]
    t2 = time.perf_counter()
    # Our own freshly signed records: skip re-verification (measured separately).
    base = MeshState(mesh_id, verifier=lambda jobs: [True] * len(jobs))
    changed, errors = base.apply_many(recs, now_ms)
    assert not errors and len(changed) == n
    base._verifier = MeshState(mesh_id)._verifier
    t3 = time.perf_counter()
    pop = Population(ids, recs, base, t1 - t0, t2 - t1, t3 - t2)
    if len(_CACHE) > 4:
        _CACHE.clear()
    _CACHE[ck] = pop
    return pop
