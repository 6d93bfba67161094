"""Rendezvous hashing (core.hashing, ours) against a hash ring (uhashring).

    uv run python bench/hashing_bench.py [--keys 3000] [--seed 1]

The two jobs consistent hashing does in smegmesh: spread clients over peers
(and nodes over redundant exits), and move as few of them as possible when a
peer dies. For n candidates and K keys (random 32-byte node keys, as real
WireGuard keys are) this prints, for each method:

* **balance**: the most loaded candidate against the mean (1.00 is perfect),
  and the coefficient of variation of the loads;
* **disruption** when one candidate is removed: the share of keys that moved
  (ideal: exactly those of the removed candidate, about 1/n) and how many
  keys moved *between surviving candidates* (ideal: 0).

uhashring is used with its defaults (ketama, 160 virtual points per node).
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections import Counter
from collections.abc import Callable, Sequence

from uhashring import HashRing

from smegmesh.core.hashing import choose

Assign = Callable[[Sequence[bytes], Sequence[bytes]], dict[bytes, bytes]]


def rendezvous(cands: Sequence[bytes], keys: Sequence[bytes]) -> dict[bytes, bytes]:
    out = {}
    for k in keys:
        c = choose(k, cands)
        assert c is not None
        out[k] = c
    return out


def ring(cands: Sequence[bytes], keys: Sequence[bytes]) -> dict[bytes, bytes]:
    by_name = {c.hex(): c for c in cands}
    r = HashRing(nodes=list(by_name))
    return {k: by_name[r.get_node(k.hex())] for k in keys}


def measure(assign: Assign, n: int, keys: Sequence[bytes], rng: random.Random) -> dict[str, float]:
    cands = [rng.randbytes(32) for _ in range(n)]
    before = assign(cands, keys)
    loads = Counter(before.values())
    counts = [loads.get(c, 0) for c in cands]
    mean = len(keys) / n
    gone = cands[0]
    after = assign(cands[1:], keys)
    moved = [k for k in keys if before[k] != after[k]]
    between = [k for k in moved if before[k] != gone]
    return {
        "max/mean": max(counts) / mean,
        "cv": statistics.pstdev(counts) / mean,
        "moved %": 100 * len(moved) / len(keys),
        "ideal %": 100 * counts[0] / len(keys),
        "between": float(len(between)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=3000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--trials", type=int, default=5, help="candidate sets per size (averaged)")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    keys = [rng.randbytes(32) for _ in range(args.keys)]
    print(f"{args.keys} keys, mean of {args.trials} random candidate sets per row")
    head = f"{'n':>4} {'method':<11} {'max/mean':>9} {'cv':>6} {'moved %':>8} {'ideal %':>8}"
    print(head + f" {'moved between survivors':>24}")
    print("-" * (len(head) + 25))
    for n in (3, 10, 30, 100):
        for name, fn in (("rendezvous", rendezvous), ("ring", ring)):
            runs = [
                measure(fn, n, keys, random.Random(args.seed * 1000 + t))
                for t in range(args.trials)
            ]
            avg = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
            print(
                f"{n:>4} {name:<11} {avg['max/mean']:>9.2f} {avg['cv']:>6.3f} "
                f"{avg['moved %']:>8.2f} {avg['ideal %']:>8.2f} {avg['between']:>24.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
