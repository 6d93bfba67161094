"""Reconcile latency against a live wireguard-go interface in a network namespace.

    uv run python bench/reconcile_bench.py [--sizes 100,1000,3000] [--repeat 21]

For each size N: the first full apply of N peers (interface creation included),
then the median (and p90) time of applying a one-peer change, and the time of a
full verify (``get=1`` dump + diff). Needs root and wireguard-go.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from smegmesh.core.wgconfig import HostConfig, InterfaceConfig, PeerConfig
from smegmesh.net.host import HostNetwork
from smegmesh.testbed.netns import Testbed, environment_problem
from smegmesh.wg.reconcile import Reconciler
from smegmesh.wg.userspace import UserspaceBackend


def make_peers(n: int) -> dict[bytes, PeerConfig]:
    peers = {}
    for i in range(1, n + 1):
        key = os.urandom(32)
        peers[key] = PeerConfig(
            key,
            f"[2001:db8:ffff::{i:x}]:51820",
            frozenset({f"fd00:5e:1::{i:x}/128"}),
        )
    return peers


def bench(bed: Testbed, n: int, repeat: int) -> dict[str, float]:
    node = bed.add_node()
    name = node.wg_name()
    backend = UserspaceBackend(socket_dir=os.path.join(node.tmpdir, "wg"), netns=node.ns)
    host = HostNetwork(netns=node.ns)
    rec = Reconciler(backend, host)
    try:
        peers = make_peers(n)
        desired = InterfaceConfig(name, os.urandom(32), 51820, peers)
        hostcfg = HostConfig(name, frozenset({"fd00:5e:1::ffff/64"}))
        t = time.perf_counter()
        first = rec.apply(desired, hostcfg)
        full = time.perf_counter() - t
        assert len(first.wg_ops) == n + 2, len(first.wg_ops)
        assert len(backend.read(name).peers) == n
        keys = list(peers)
        times = []
        for r in range(repeat):
            k = keys[(r * 7919) % n]
            p = peers[k]
            peers = dict(peers)
            peers[k] = PeerConfig(k, p.endpoint, p.allowed_ips, keepalive=0 if p.keepalive else 25)
            desired = InterfaceConfig(name, desired.private_key, 51820, peers)
            res = rec.apply(desired, hostcfg)
            assert len(res.wg_ops) == 1 and not res.full_read, res
            times.append(res.seconds)
        live = backend.read(name)
        assert all(live.peers[k].keepalive == peers[k].keepalive for k in keys)
        t = time.perf_counter()
        rec.verify(name)
        verify = time.perf_counter() - t
        times.sort()
        return {
            "full": full,
            "median": statistics.median(times),
            "p90": times[int(0.9 * (len(times) - 1))],
            "verify": verify,
        }
    finally:
        rec.close()
        host.close()
        backend.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="100,1000,3000")
    ap.add_argument("--repeat", type=int, default=21)
    args = ap.parse_args()
    problem = environment_problem()
    if problem:
        print(f"cannot run: {problem}", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with Testbed() as bed:
        for n in sizes:
            rows.append((n, bench(bed, n, args.repeat)))
    print(
        f"{'peers':>6} | {'first apply':>12} | {'1-peer median':>13} | {'1-peer p90':>10} | "
        f"{'full verify':>11}"
    )
    print("-" * 66)
    for n, r in rows:
        print(
            f"{n:>6} | {r['full'] * 1e3:>9.1f} ms | {r['median'] * 1e3:>10.2f} ms | "
            f"{r['p90'] * 1e3:>7.2f} ms | {r['verify'] * 1e3:>8.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
