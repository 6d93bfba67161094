"""Mesh state / anti-entropy benchmark.

Run: ``uv run python bench/state_bench.py [--authority] [sizes...]`` (default 1000 3000 10000).

For each mesh size it measures one anti-entropy exchange between two replicas
(every message through the real wire codec) when they are in sync and when one
record changed, and the cost of bringing an empty replica up to date:
``merge`` of an in-memory state (items already validated by their holder) and
a full state transfer by sync (decode + full validation incl. Ed25519
signature checks), serially and with a 2-thread verifier.

``--authority`` adds, in the same run, the cost of admission proofs: the same
records in a mesh with a founding record where every record carries its
admission chain (a random recursive admission tree: node i admitted by a
random earlier node, see ``smegmesh.sim.state.admission_chains``), received
by a state that enforces admission. It prints the chain depths, bytes per
record with and without its chain, the verify time per record (chain check,
cert signatures first time and cached) and the full state transfer before
(``admission=False``, no chains) and after, side by side with the ratio.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack

from smegmesh.core import wire
from smegmesh.core.cert import Founding, Revocation
from smegmesh.core.identity import NodeIdentity, verify_many
from smegmesh.core.record import NodeRecord
from smegmesh.core.state import MeshState, Verifier
from smegmesh.core.sync import SyncSession
from smegmesh.sim.scenarios import depth_summary
from smegmesh.sim.state import admission_chains

MESH = "amber-falcon-river-k7q2"
T0 = 1_700_000_000_000


def exchange(a: MeshState, b: MeshState, seed: int) -> tuple[int, float, int]:
    """One full session a -> b; returns (bytes, seconds CPU, messages)."""
    responders: dict[tuple[bytes, int], SyncSession] = {}
    t = time.process_time()
    sess = SyncSession.initiator(a, T0, rng=random.Random(seed), count_bytes=False)
    msg = sess.start()
    total = 0
    n = 0
    nxt: object = msg
    while nxt is not None:
        data = wire.encode(nxt)
        total += len(data)
        reply, _, _ = SyncSession.respond(b, responders, b"\x00" * 32, wire.decode(data), T0)
        rdata = wire.encode(reply)
        total += len(rdata)
        nxt, _ = sess.receive(wire.decode(rdata), T0)
        n += 2
    return total, time.process_time() - t, n


def full_transfer(a: MeshState, b: MeshState, seed: int) -> tuple[int, int]:
    """Sessions a -> b until a holds what b holds (one page of items per
    session, as the daemon goes on with the next page at once); (bytes, sessions)."""
    total = sessions = 0
    while a.digest() != b.digest():
        sessions += 1
        assert sessions <= 1000, "no progress"
        total += exchange(a, b, seed + sessions)[0]
    return total, sessions


def threaded_verifier(pool: ThreadPoolExecutor, workers: int) -> Verifier:
    def verify(jobs: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
        if len(jobs) < 64:
            return verify_many(jobs)
        step = (len(jobs) + workers - 1) // workers
        parts = [jobs[i : i + step] for i in range(0, len(jobs), step)]
        out: list[bool] = []
        for res in pool.map(verify_many, parts):
            out.extend(res)
        return out

    return verify


def make_records(
    idents: list[NodeIdentity], rng: random.Random, mesh: str, chains: Sequence[tuple] = ()
) -> list[NodeRecord]:
    return [
        NodeRecord.create(
            ident,
            mesh,
            version=T0,
            now_ms=T0,
            wg_endpoint=f"198.51.{i // 256 % 256}.{i % 256}:51820",
            control_endpoint=f"198.51.{i // 256 % 256}.{i % 256}:7443",
            tls_fp=rng.randbytes(32),
            alias=f"node-{i}",
            chain=chains[i] if chains else (),
        )
        for i, ident in enumerate(idents)
    ]


def main(sizes: list[int]) -> None:
    rng = random.Random(42)
    biggest = max(sizes)
    print(f"generating {biggest} identities and signed records ...", file=sys.stderr)
    idents = [NodeIdentity.from_seed(rng.randbytes(32)) for _ in range(biggest)]
    recs = make_records(idents, rng, MESH)
    pool = ThreadPoolExecutor(2)
    header = (
        f"{'nodes':>6} | {'in-sync B':>9} {'in-sync ms':>10} | {'1-change B':>10} "
        f"{'1-change ms':>11} {'msgs':>4} | {'merge s':>7} | {'sync-full s':>11} "
        f"{'2-thread s':>10} {'MB':>5}"
    )
    print(header)
    print("-" * len(header))
    for n in sizes:
        full = MeshState(MESH)
        changed, errors = full.apply_many(recs[:n], T0)
        assert len(changed) == n and not errors
        replica = MeshState(MESH)
        replica.merge(full)
        # in sync
        b_sync, t_sync, _ = exchange(replica, full, 1)
        # one record changed on the responder side
        i = n // 2
        new = recs[i].evolve(idents[i], T0 + 1000, description="changed")
        assert full.apply(new, T0 + 1000)
        b_one, t_one, msgs = exchange(replica, full, 2)
        assert replica.digest() == full.digest()
        # merge into an empty replica (items already validated by their holder)
        empty = MeshState(MESH)
        t = time.process_time()
        empty.merge(full)
        t_merge = time.process_time() - t
        # full state transfer by sync with validation, serial then 2 threads
        empty = MeshState(MESH)
        t = time.perf_counter()
        b_full, _, _ = exchange(empty, full, 3)
        t_full = time.perf_counter() - t
        assert empty.digest() == full.digest()
        empty = MeshState(MESH, verifier=threaded_verifier(pool, 2))
        t = time.perf_counter()
        exchange(empty, full, 4)
        t_full2 = time.perf_counter() - t
        assert empty.digest() == full.digest()
        print(
            f"{n:>6} | {b_sync:>9} {t_sync * 1e3:>10.3f} | {b_one:>10} {t_one * 1e3:>11.3f} "
            f"{msgs:>4} | {t_merge:>7.3f} | {t_full:>11.3f} {t_full2:>10.3f} {b_full / 1e6:>5.1f}"
        )
    pool.shutdown()


def _time_per(fn: Any, reps: int) -> float:
    """Seconds per call of ``fn(i)`` for i in range(reps)."""
    t = time.perf_counter()
    for i in range(reps):
        fn(i)
    return (time.perf_counter() - t) / reps


def authority_main(sizes: list[int]) -> None:
    """Admission proofs: bytes, verify time, full transfer before/after (see the docstring)."""
    rng = random.Random(42)
    biggest = max(sizes)
    print(f"generating {biggest} identities, admission chains, records ...", file=sys.stderr)
    idents = [NodeIdentity.from_seed(rng.randbytes(32)) for _ in range(biggest)]
    founding = Founding.create(idents[0], "amber-falcon", now_ms=T0 - 30 * 86_400_000)
    mesh_a = founding.mesh_id
    chains, _ = admission_chains(idents, founding, 42)
    recs = make_records(idents, random.Random(7), MESH)
    recs_a = make_records(idents, random.Random(7), mesh_a, chains)
    depths = [len(c) for c in chains]
    ds = depth_summary(depths)
    print(
        f"admission chain depth over {biggest} nodes: mean {ds['depth_mean']}, "
        f"p50 {ds['depth_p50']}, p99 {ds['depth_p99']}, max {ds['depth_max']}"
    )
    print(f"  histogram depth:count  {ds['depth_hist']}")

    # -- bytes and verify time per record, at the measured depths
    def size(r: NodeRecord) -> int:
        return len(msgpack.packb(wire.encode_item(r), use_bin_type=True))

    print()
    print("per record, by chain depth (bytes: msgpack of the record as sent; times: us)")
    hdr = (
        f"{'depth':>5} | {'B no chain':>10} {'B chain':>8} {'ratio':>5} | {'sig rec':>7} "
        f"{'chain chk':>9} {'certs 1st':>9} {'total 1st':>9} {'total cached':>12} {'ratio':>5}"
    )
    print(hdr)
    print("-" * len(hdr))
    st = MeshState(mesh_a, admission=True)
    st.apply(founding, T0)
    auth = st.authority
    by_depth: dict[int, int] = {}
    for i, d in enumerate(depths):
        by_depth.setdefault(d, i)
    picks = sorted({1, ds["depth_p50"], round(ds["depth_mean"]), ds["depth_p99"], ds["depth_max"]})
    reps = 200
    for d in picks:
        if d not in by_depth:
            continue
        i = by_depth[d]
        plain, chained = recs[i], recs_a[i]

        job = (plain.sign_key, plain.signed_payload(), plain.signature)
        t_sig = _time_per(lambda _, j=job: verify_many([j]), reps)
        t_chk = _time_per(lambda _, c=chained: auth.check_chain(c.wg_key, c.chain), reps)

        def first(_: int, c: NodeRecord = chained) -> None:
            st._good_certs.clear()
            st._check_member(c.wg_key, c.chain, "chain")

        t_first = _time_per(first, max(20, reps // max(1, d)))
        st._check_member(chained.wg_key, chained.chain, "chain")
        t_cached = _time_per(
            lambda _, c=chained: st._check_member(c.wg_key, c.chain, "chain"), reps
        )
        b0, b1 = size(plain), size(chained)
        tot1, totc = t_sig + t_first, t_sig + t_cached
        print(
            f"{d:>5} | {b0:>10} {b1:>8} {b1 / b0:>5.2f} | {t_sig * 1e6:>7.1f} "
            f"{t_chk * 1e6:>9.1f} {(t_first - t_chk) * 1e6:>9.1f} {tot1 * 1e6:>9.1f} "
            f"{totc * 1e6:>12.1f} {totc / t_sig:>5.2f}"
        )
    mean_b0 = sum(size(r) for r in recs) / len(recs)
    mean_b1 = sum(size(r) for r in recs_a) / len(recs_a)
    print(
        f"mean over all {biggest} records: {mean_b0:.0f} B without chain, "
        f"{mean_b1:.0f} B with (x{mean_b1 / mean_b0:.2f})"
    )

    # -- full state transfer into an empty replica: before / after, same run
    print()
    print("full state transfer by sync into an empty replica (decode + full validation)")
    hdr = (
        f"{'nodes':>6} | {'MB before':>9} {'MB after':>8} {'ratio':>5} | {'s before':>8} "
        f"{'s after':>7} {'ratio':>5} | {'2-thr before':>12} {'2-thr after':>11} {'ratio':>5} | "
        f"{'merge before':>12} {'merge after':>11} | sessions"
    )
    print(hdr)
    print("-" * len(hdr))
    pool = ThreadPoolExecutor(2)
    evict_ms: dict[int, tuple[float, int]] = {}
    for n in sizes:
        row: list[tuple[float, float, float, float]] = []
        nsess: list[int] = []
        for mesh, admission, items in (
            (MESH, False, recs[:n]),
            (mesh_a, True, [founding, *recs_a[:n]]),
        ):
            full = MeshState(mesh, admission=admission)
            changed, errors = full.apply_many(items, T0)
            assert len(changed) == len(items) and not errors, errors[:3]
            # A replica of a mesh with an authority always starts from the
            # founding record (pinned from the invitation, first in the join
            # reply): without it no record can be checked.
            seed_items = items[:1] if admission else []
            empty = MeshState(mesh, admission=admission)
            empty.apply_many(seed_items, T0)
            t = time.perf_counter()
            nbytes, sessions = full_transfer(empty, full, 3)
            t_full = time.perf_counter() - t
            assert empty.digest() == full.digest()
            empty = MeshState(mesh, admission=admission, verifier=threaded_verifier(pool, 2))
            empty.apply_many(seed_items, T0)
            t = time.perf_counter()
            full_transfer(empty, full, 4)
            t_full2 = time.perf_counter() - t
            assert empty.digest() == full.digest()
            empty = MeshState(mesh, admission=admission)
            t = time.process_time()
            empty.merge(full)
            t_merge = time.process_time() - t
            row.append((nbytes / 1e6, t_full, t_full2, t_merge))
            nsess.append(sessions)
            if admission:  # one eviction at one replica: authority rebuilt, state purged
                victim = idents[n // 2].wg_public_key  # keeps the nodes it admitted, as evict
                kept = {c.subject for r in recs_a[:n] for c in r.chain if c.issuer == victim}
                rev = Revocation.create(
                    idents[0], mesh, target=victim, cascade=False, keep=tuple(kept), now_ms=T0
                )
                t = time.process_time()
                purged, _ = full.apply_many([rev], T0)
                evict_ms[n] = ((time.process_time() - t) * 1e3, len(purged))
        (b0, s0, s02, m0), (b1, s1, s12, m1) = row
        print(
            f"{n:>6} | {b0:>9.2f} {b1:>8.2f} {b1 / b0:>5.2f} | {s0:>8.2f} {s1:>7.2f} "
            f"{s1 / s0:>5.2f} | {s02:>12.2f} {s12:>11.2f} {s12 / s02:>5.2f} | "
            f"{m0:>12.3f} {m1:>11.3f} | {nsess[0]}/{nsess[1]}"
        )
    pool.shutdown()
    print()
    for n, (ms, k) in evict_ms.items():
        print(
            f"one eviction applied at one replica of {n} nodes: {ms:.1f} ms CPU ({k} keys changed)"
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    sizes_ = [int(a) for a in args if a != "--authority"] or [1000, 3000, 10000]
    if "--authority" in args:
        authority_main(sizes_)
    else:
        main(sizes_)
