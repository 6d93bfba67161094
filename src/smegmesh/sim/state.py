"""Identities, records and pre-built steady states for the simulator.

Building a 10,000-node steady state by simulating 10,000 joins costs far more
than the steady state itself, so the simulator can start every node from one
shared, pre-built :class:`MeshState` that already holds every record (what
the mesh looks like after the joins settled). Each node gets a
:class:`SharedState`: a copy-on-write view of the shared state. Each table
(entries, each digest-tree level, leaf buckets) is a :class:`CowDict`: the
base's dict shared read-only plus a small dict of this node's own changes, so
a clone costs O(1) memory until it changes (a shallow ``dict`` copy per node
cost ~2.3 MB per node at 10,000 nodes). The per-key objects the core mutates
in place (entries, digest-tree counters, leaf buckets) are copied into the
clone just before the first write. Behaviour is exactly that of
``MeshState``: every read and every write goes through the core's code, and
``CowDict`` keeps ``dict`` semantics, iteration order included; only the
memory layout is shared. ``tests/unit/test_sim.py`` checks that a cloned state and
a state built by merging hold the same items in the same order, have the same
digest tree and evolve identically, and that whole simulations give the same
metrics either way.

This relies on the private layout of ``MeshState`` (``_entries``,
``_levels``, ``_buckets``, ``_install``); if the core changes it, the
determinism/equivalence tests fail loudly.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from smegmesh.core.authority import copy_authority
from smegmesh.core.cert import AuthItem, Cert, Founding
from smegmesh.core.delta import RecordBases
from smegmesh.core.identity import NodeIdentity, verify_many
from smegmesh.core.memo import DEFAULT_MEMO_ITEMS, ItemMemo
from smegmesh.core.record import NodeRecord, Prune, Role
from smegmesh.core.state import DEPTH, MeshState

#: The simulator's meshes are as large as the scenario asks (maxMembers is a daemon's bound).
SIM_MAX_MEMBERS = 1_000_000

__all__ = [
    "SIM_MAX_MEMBERS",
    "CowDict",
    "Population",
    "SharedState",
    "admission_chains",
    "clone_state",
    "make_population",
    "tls_fp",
]


_MISS: Any = object()
_GONE: Any = object()


class CowDict:
    """A dict that shares a read-only ``base`` dict and keeps its own changes aside.

    Implements exactly the part of the ``dict`` interface ``MeshState`` uses
    (``get``, ``[]``, ``in``, ``len``, iteration, ``items``, ``setdefault``,
    assignment, ``del``) with ``dict`` semantics, including iteration order:
    a key overridden in place keeps its position, a new key (or one deleted
    then re-inserted) goes to the end. Memory per clone is O(changes), not
    O(len(base)). ``base`` must not change afterwards.
    """

    __slots__ = ("_base", "_local", "_n", "_tail")

    def __init__(self, base: dict[Any, Any]) -> None:
        self._base = base
        self._local: dict[Any, Any] = {}  # overrides and additions; _GONE = deleted base key
        self._tail: dict[Any, None] = {}  # keys iterated after the base's (insertion order)
        self._n = len(base)

    def get(self, k: Any, default: Any = None) -> Any:
        v = self._local.get(k, _MISS)
        if v is _MISS:
            return self._base.get(k, default)
        return default if v is _GONE else v

    def __getitem__(self, k: Any) -> Any:
        v = self.get(k, _MISS)
        if v is _MISS:
            raise KeyError(k)
        return v

    def __contains__(self, k: object) -> bool:
        return self.get(k, _MISS) is not _MISS

    def __len__(self) -> int:
        return self._n

    def __setitem__(self, k: Any, v: Any) -> None:
        local = self._local
        old = local.get(k, _MISS)
        if old is _MISS:
            if k not in self._base:
                self._n += 1
                self._tail[k] = None
        elif old is _GONE:  # re-inserted after a delete: goes to the end, as in a dict
            self._n += 1
            self._tail[k] = None
        local[k] = v

    def __delitem__(self, k: Any) -> None:
        local = self._local
        old = local.get(k, _MISS)
        in_base = k in self._base
        if old is _GONE or (old is _MISS and not in_base):
            raise KeyError(k)
        self._n -= 1
        self._tail.pop(k, None)
        if in_base:
            local[k] = _GONE
        else:
            del local[k]

    def setdefault(self, k: Any, default: Any = None) -> Any:
        v = self.get(k, _MISS)
        if v is _MISS:
            self[k] = default
            return default
        return v

    def __iter__(self) -> Iterator[Any]:
        local, tail = self._local, self._tail
        if not local:
            yield from self._base
            return
        for k in self._base:
            if k in local and (k in tail or local[k] is _GONE):
                continue
            yield k
        yield from tail

    def keys(self) -> Iterator[Any]:
        return iter(self)

    def items(self) -> Iterator[tuple[Any, Any]]:
        local, tail = self._local, self._tail
        if not local:
            yield from self._base.items()
            return
        for k, v in self._base.items():
            w = local.get(k, _MISS)
            if w is _MISS:
                yield k, v
            elif w is not _GONE and k not in tail:
                yield k, w
        for k in tail:
            yield k, local[k]

    def values(self) -> Iterator[Any]:
        return (v for _, v in self.items())

    def own(self, k: Any, copy: Callable[[Any], Any]) -> None:
        """Before an in-place mutation: replace a shared value by ``copy(value)``."""
        if k not in self._local:
            v = self._base.get(k, _MISS)
            if v is not _MISS:
                self._local[k] = copy(v)

    @property
    def changes(self) -> int:
        return len(self._local)


def _flat(d: Any) -> dict[Any, Any]:
    return d if type(d) is dict else dict(d.items())


class SharedState(MeshState):
    """A ``MeshState`` sharing unchanged entries with a base state (copy-on-write).

    Every table (``_entries``, each digest level, ``_buckets``) is a
    :class:`CowDict` over the base's; the per-key objects the core mutates in
    place (entries, digest-tree counters, leaf buckets) are copied into the
    clone just before the core writes them (:meth:`_install`).
    """

    _base: MeshState | None

    def __init__(self, mesh_id: str, **kw: Any) -> None:
        super().__init__(mesh_id, **kw)
        self._base = None

    def _install(
        self,
        key: bytes,
        record: NodeRecord | None,
        prune: Prune | None,
        auth: AuthItem | None = None,
    ) -> None:
        if self._base is not None:
            ents: Any = self._entries
            ents.own(key, _copy_entry)
            top = int.from_bytes(key[:4], "big")
            levels: Any = self._levels
            for d in range(DEPTH + 1):
                levels[d].own(top >> (32 - 4 * d), list)
            buckets: Any = self._buckets
            buckets.own(top >> (32 - 4 * DEPTH), set)
        super()._install(key, record, prune, auth)


def _copy_entry(e: Any) -> Any:
    return type(e)(e.record, e.prune, e.h, e.auth)


def clone_state(base: MeshState, *, share: bool = True) -> MeshState:
    """A replica of ``base``, which must not change afterwards.

    ``share=True``: a copy-on-write :class:`SharedState` (O(1) memory until it
    changes). ``share=False``: an independent ``MeshState`` built by merging
    (the reference the equivalence tests compare against).
    """
    if not share:
        st = MeshState(
            base.mesh_id,
            max_members=base.max_members,
            verifier=base._verifier,
            gc_horizon_ms=base._horizon,
            admission=base.admission,
            memo=base.memo,
        )
        st.merge(base)
        return st
    sh = SharedState.__new__(SharedState)
    sh.mesh_id = base.mesh_id
    sh._verifier = base._verifier
    sh.memo = base.memo  # one memo of item facts for all of the simulation's states
    sh.prune_budget = None  # the node owning the state sets its own
    sh._horizon = base._horizon
    cow: Any = CowDict(_flat(base._entries))
    sh._entries = cow
    levels: Any = [CowDict(_flat(lvl)) for lvl in base._levels]
    sh._levels = levels
    buckets: Any = CowDict(_flat(base._buckets))
    sh._buckets = buckets
    sh._base = base
    sh.admission = base.admission
    sh._authority = copy_authority(base._authority)
    sh._auth_count = base._auth_count
    sh._issuer_counts = dict(base._issuer_counts)
    sh._pending_auth = dict(base._pending_auth)
    sh._defer_rebuild = False
    sh._rebuild_due = False
    sh._good_certs = base._good_certs  # shared cache of verified signatures (append-only)
    sh._purged = set()
    sh.max_members = base.max_members
    sh.max_bytes = base.max_bytes
    sh._records = base._records
    sh._record_bytes = base._record_bytes
    sh._version = 0
    sh._changes = []
    sh._changes_base = 0
    sh._refuted = {}
    sh.bases = RecordBases()
    return sh


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
    mesh_id: str = ""
    #: authority mode: the founding record (node 0 is the founder) and the
    #: depth of every node's admission chain (0 for the founder)
    founding: Founding | None = None
    depths: list[int] | None = None
    t_chains: float = 0.0


_CACHE: dict[tuple[int, int, str, int, bool, bool], Population] = {}

#: authority mode: the mesh was founded this long before the simulation starts,
#: and its members were admitted one after the other in between
FOUNDED_AGO_MS = 30 * 86_400_000
TOKEN_TTL_MS = 86_400_000


def admission_chains(
    ids: list[NodeIdentity], founding: Founding, seed: int
) -> tuple[list[tuple[Cert, ...]], list[int]]:
    """A realistic admission history: node ``i`` was admitted by a random earlier node.

    Every node may admit (policy ``peers``, all nodes are peers), so the
    admission tree is a random recursive tree: chain depth grows like ln N
    (mean depth of node ``i`` ~ H_i - 1), not all 1 as if the founder had
    admitted everyone. Each cert carries a (since expired) one-use token, as
    a real invitation would; admissions are spread over the time since the
    founding, in order. Returns (chains, admitter index per node; -1 for the founder).
    """
    rng = random.Random(f"admission/{seed}")
    n = len(ids)
    step = max(1, FOUNDED_AGO_MS // max(1, n))
    chains: list[tuple[Cert, ...]] = [()]
    parents = [-1]
    for i in range(1, n):
        j = rng.randrange(i)
        issued = founding.created_ms + i * step
        cert = Cert.create(
            ids[j],
            founding.mesh_id,
            subject=ids[i].wg_public_key,
            may_admit=True,
            now_ms=issued,
            token_hash=hashlib.sha256(f"token/{seed}/{i}".encode()).digest()[:16],
            token_expiry_ms=issued + TOKEN_TTL_MS,
            token_uses=1,
        )
        chains.append((*chains[j], cert))
        parents.append(j)
    return chains, parents


def control_endpoint(i: int) -> str:
    return f"[fd00:5e::{i // 65536:x}:{i % 65536:x}]:7443"


def tls_fp(i: int) -> bytes:
    """Node ``i``'s TLS certificate pin (SHA-256): a real record always carries one.

    Left out, every simulated record was 34 bytes smaller than a real one
    (a real smegd under churn moved 1.3x the simulator's bytes per change;
    docs/SCALE.md, "One smegd under churn").
    """
    return hashlib.sha256(b"sim-tls/%d" % i).digest()


def make_population(
    n: int, seed: int, mesh_id: str, now_ms: int, *, authority: bool = False, verify: bool = False
) -> Population:
    """``n`` identities (seeds derived from ``seed``), their signed records, the full state.

    ``authority``: the mesh has a founding record (node 0 is its founder, the
    mesh id becomes the self-certifying ``NAME-SUFFIX`` with NAME =
    ``mesh_id``), the state enforces admission and every record carries its
    admission chain (:func:`admission_chains`). ``verify``: the full state
    verifies every signature it takes, like a daemon's (see :func:`steady_state`).
    Cached per process: benchmarks reuse it across scenarios.
    """
    ck = (n, seed, mesh_id, now_ms, authority, verify)
    hit = _CACHE.get(ck)
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    ids = [NodeIdentity.from_seed(node_seed(seed, i)) for i in range(n)]
    t1 = time.perf_counter()
    founding: Founding | None = None
    chains: list[tuple[Cert, ...]] = [()] * n
    depths: list[int] | None = None
    if authority:
        founding = Founding.create(ids[0], mesh_id, now_ms=now_ms - FOUNDED_AGO_MS)
        mesh_id = founding.mesh_id
        chains, _ = admission_chains(ids, founding, seed)
        depths = [len(c) for c in chains]
    t_chains = time.perf_counter() - t1
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
            tls_fp=tls_fp(i),
            chain=chains[i],
        )
        for i, ident in enumerate(ids)
    ]
    t2 = time.perf_counter()
    base = steady_state(mesh_id, founding, recs, now_ms, verify=verify)
    t3 = time.perf_counter()
    pop = Population(
        ids, recs, base, t1 - t0, t2 - t1, t3 - t2, mesh_id, founding, depths, t_chains
    )
    if len(_CACHE) > 4:
        _CACHE.clear()
    _CACHE[ck] = pop
    return pop


def steady_state(
    mesh_id: str,
    founding: Founding | None,
    recs: list[NodeRecord],
    now_ms: int,
    *,
    verify: bool = False,
) -> MeshState:
    """The settled state holding ``recs`` (and ``founding``: admission enforced).

    The token ledger entries (admission certs as statements) of the joins are
    not in it: their tokens expired long ago and garbage collection dropped
    them; each record still carries its chain.
    """
    # Our own freshly signed records and certs: skip re-verification (measured
    # separately, see bench/state_bench.py --authority) unless ``verify``.
    base = MeshState(
        mesh_id,
        verifier=verify_many if verify else (lambda jobs: [True] * len(jobs)),
        admission=founding is not None,
        max_members=SIM_MAX_MEMBERS,
        # shared by every clone: one object delivered to all nodes is checked,
        # verified and measured once (room for every record a few times over)
        memo=ItemMemo(max(DEFAULT_MEMO_ITEMS, 4 * len(recs))),
    )
    items: list[Any] = [founding, *recs] if founding is not None else list(recs)
    changed, errors = base.apply_many(items, now_ms)
    assert not errors and len(changed) == len(items), errors[:3]
    base.set_verifier(verify_many)  # receivers verify what arrives
    return base
