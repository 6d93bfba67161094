"""What smegd's reconcile passes cost under a storm of mesh changes, paced and not.

    uv run python bench/reconcile_pass_bench.py [--sizes 300,1000,3000] [--rate 20]
                                                [--seconds 4] [--seed 1]

A reconcile pass (``daemon/apply.py``) computes the desired WireGuard
configuration from every live record, applies the difference through the
reconciler, and, with the DNS server on, rebuilds the names: O(N) in the
members. Every state change wakes the loop. This bench runs the pass's real
pieces on N signed records (``smegmesh.sim.state.make_population``):

* ``desired_config`` over the live records (as ``_desired``);
* ``Reconciler.apply`` of that on the in-memory WireGuard backend (read,
  diff, apply: the backend's own cost, netlink or UAPI, is not in it; the
  column "+ apply" is both);
* the DNS names, in the rows "with DNS" only, as ``_update_dns`` keeps them
  (``daemon/dns_wiring.node_name`` reuses the names of unchanged records,
  ``dns/nametable.NameTable`` recomputes the owner names of the changed one,
  ``NameView.of`` takes the snapshot); beside them, the same names built from
  scratch per pass (the code before the sixteenth session), the baseline of
  the same run.

and prints each piece's median time by size, then drives a storm: one
member's record changes ``--rate`` times a second for ``--seconds`` (real
time; 20 a second is a 3,000-member mesh at 20 %/min of churn), and the loop
runs a pass whenever a change is pending, either at once (the loop before
``daemon/pacing.py``) or as ``PassPacer`` allows. For each it reports the
share of a core the passes took (CPU time of the passes over the storm's
length) and the delay from a change to the end of the pass that applied it,
and plots the share of a core by size to ``bench/out/reconcile_pass.png``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from smegmesh.core.desired import desired_config
from smegmesh.core.record import NodeRecord, Role
from smegmesh.core.wgconfig import HostConfig, InterfaceConfig
from smegmesh.daemon import views
from smegmesh.daemon.dns_wiring import node_name
from smegmesh.daemon.pacing import PassPacer
from smegmesh.dns.names import NameView, NodeName, parse_address
from smegmesh.dns.nametable import NameTable
from smegmesh.net.host import MemoryHost
from smegmesh.sim.state import make_population
from smegmesh.wg.memory import MemoryBackend
from smegmesh.wg.reconcile import Reconciler

MESH = "amber-falcon-river-k7q2"
T0 = 1_000_000


class Mesh:
    """N records and the pieces of one pass over them."""

    def __init__(self, n: int, seed: int) -> None:
        pop = make_population(n, seed, MESH, T0)
        self.me = pop.identities[0]
        self.records: list[NodeRecord] = [
            replace(r, wg_endpoint=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:51820")
            for i, r in enumerate(pop.records)
        ]  # canonical endpoints, as daemons publish them (no re-normalising per pass)
        self.reconciler = Reconciler(MemoryBackend(), MemoryHost())
        self.changed = 0
        self.table = NameTable()
        self.cache: dict[tuple[str, bytes], tuple[object, str, object]] = {}

    def change(self) -> None:
        """A member's record changes (its endpoint moves): what a pass must apply."""
        self.changed += 1
        i = 1 + self.changed % (len(self.records) - 1)
        self.records[i] = replace(self.records[i], wg_endpoint=f"10.255.{self.changed % 250}.1:1")

    def desired(self) -> tuple[InterfaceConfig, HostConfig]:
        return desired_config(
            mesh_id=MESH,
            self_key=self.me.wg_public_key,
            private_key=self.me.wg_private_key,
            role=Role.PEER,
            listen_port=51820,
            records=self.records,
            ifname="smeg0",
        )

    def apply(self) -> None:
        self.reconciler.apply(*self.desired())

    def dns(self) -> None:
        """The names as ``_update_dns`` keeps them."""
        owners = views.alias_owners(self.records, None)
        new: dict[tuple[str, bytes], tuple[object, str, object]] = {}
        names = [
            node_name(self.cache, new, MESH, r, r.alias if owners.get(r.alias) == r.wg_key else "")
            for r in self.records
        ]
        self.cache = new
        self.table.sync(names)
        NameView.of(self.table, 2)

    def dns_from_scratch(self) -> None:
        """The names as built before the sixteenth session: every NodeName and owner name anew."""
        owners = views.alias_owners(self.records, None)
        names = [
            NodeName(
                MESH,
                r.alias if owners.get(r.alias) == r.wg_key else "",
                r.wg_key,
                parse_address(r.address),
            )
            for r in self.records
        ]
        NameView(names, serial=2)

    def a_pass(self, with_dns: bool) -> None:
        self.apply()
        if with_dns:
            self.dns()


def median_ms(fn: Callable[[], object], reps: int = 5) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def storm(mesh: Mesh, with_dns: bool, paced: bool, rate: float, seconds: float) -> dict[str, float]:
    """Changes at ``rate``/s for ``seconds``; passes at once or paced. Real time."""
    pacer = PassPacer()
    start = time.monotonic()
    arrivals = [start + i / rate for i in range(int(rate * seconds))]
    pending: list[float] = []
    delays: list[float] = []
    cpu = 0.0
    i = passes = 0
    while i < len(arrivals) or pending:
        now = time.monotonic()
        while i < len(arrivals) and arrivals[i] <= now:
            mesh.change()
            pending.append(arrivals[i])
            i += 1
        wait = pacer.wait_s(now) if paced else 0.0
        if pending and wait <= 0:
            c = time.thread_time()
            mesh.a_pass(with_dns)
            busy = time.thread_time() - c
            cpu += busy
            passes += 1
            end = time.monotonic()
            pacer.done(end, busy)
            delays.extend(end - t for t in pending)
            pending.clear()
            continue
        nxt = arrivals[i] if i < len(arrivals) else float("inf")
        until = min(nxt, now + wait) if pending else nxt
        time.sleep(max(0.0, min(until - time.monotonic(), 0.05)))
    wall = time.monotonic() - start
    delays.sort()
    return {
        "passes": passes,
        "core": cpu / wall,
        "p50_ms": delays[len(delays) // 2] * 1e3,
        "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1e3,
    }


def plot(rows: dict[tuple[int, bool, bool], dict[str, float]], path: Path) -> bool:
    """Share of a core in passes by mesh size: at once against paced, DNS off and on."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = sorted({n for n, _, _ in rows})
    fig, ax = plt.subplots(figsize=(7, 4))
    for dns in (False, True):
        for paced in (False, True):
            ys = [rows[(n, dns, paced)]["core"] * 100 for n in sizes]
            style = "-" if paced else "--"
            label = f"{'paced' if paced else 'at once'}, DNS {'on' if dns else 'off'}"
            ax.plot(sizes, ys, style, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("members")
    ax.set_ylabel("% of a core in reconcile passes")
    ax.set_title("smegd's reconcile passes under a storm of changes", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="300,1000,3000")
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    meshes = {n: Mesh(n, args.seed) for n in sizes}
    gc.collect()
    gc.freeze()  # the records live for ever, as smegd freezes its start-up heap
    print("median ms per piece of a pass")
    print(f"{'members':>8} {'desired':>9} {'+ apply':>9} {'DNS names':>10} {'scratch':>10}")
    for n, m in meshes.items():
        m.apply()  # the interface exists
        m.dns()  # the table holds the mesh
        # one member changed since the last pass (a record replaced), as under churn
        dns = median_ms(lambda m=m: (m.change(), m.dns()))
        before = median_ms(lambda m=m: (m.change(), m.dns_from_scratch()))
        print(
            f"{n:>8,} {median_ms(m.desired):>9.2f} {median_ms(m.apply):>9.2f} "
            f"{dns:>10.2f} {before:>10.2f} ({dns / before:.2f}x)"
        )
    print(
        f"\nstorm: {args.rate:g} changes/s for {args.seconds:g} s; "
        "share of a core in passes, delay change -> applied"
    )
    cols = ("passes", 7), ("core", 6), ("p50 ms", 8), ("p99 ms", 8)
    print(f"{'members':>8} {'DNS':>4} {'loop':>7} " + " ".join(f"{c:>{w}}" for c, w in cols))
    rows: dict[tuple[int, bool, bool], dict[str, float]] = {}
    for n, m in meshes.items():
        for with_dns in (False, True):
            for paced in (False, True):
                r = rows[(n, with_dns, paced)] = storm(m, with_dns, paced, args.rate, args.seconds)
                print(
                    f"{n:>8,} {'on' if with_dns else 'off':>4} "
                    f"{'paced' if paced else 'at once':>7} {r['passes']:>7.0f} "
                    f"{r['core']:>6.0%} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f}"
                )
    out = Path(__file__).resolve().parent / "out" / "reconcile_pass.png"
    if plot(rows, out):
        print(f"plot: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
