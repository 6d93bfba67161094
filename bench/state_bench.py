"""Mesh state / anti-entropy benchmark.

Run: ``uv run python bench/state_bench.py [sizes...]`` (default 1000 3000 10000).

For each mesh size it measures one anti-entropy exchange between two replicas
(every message through the real wire codec) when they are in sync and when one
record changed, and the cost of bringing an empty replica up to date:
``merge`` of an in-memory state (items already validated by their holder) and
a full state transfer by sync (decode + full validation incl. Ed25519
signature checks), serially and with a 2-thread verifier.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from smegmesh.core import wire
from smegmesh.core.identity import NodeIdentity, verify_many
from smegmesh.core.record import NodeRecord
from smegmesh.core.state import MeshState, Verifier
from smegmesh.core.sync import SyncSession

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


def main(sizes: list[int]) -> None:
    rng = random.Random(42)
    biggest = max(sizes)
    print(f"generating {biggest} identities and signed records ...", file=sys.stderr)
    idents = [NodeIdentity.from_seed(rng.randbytes(32)) for _ in range(biggest)]
    recs = [
        NodeRecord.create(
            ident,
            MESH,
            version=T0,
            now_ms=T0,
            wg_endpoint=f"198.51.{i // 256 % 256}.{i % 256}:51820",
            control_endpoint=f"198.51.{i // 256 % 256}.{i % 256}:7443",
            tls_fp=rng.randbytes(32),
            alias=f"node-{i}",
        )
        for i, ident in enumerate(idents)
    ]
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


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 3000, 10000])
