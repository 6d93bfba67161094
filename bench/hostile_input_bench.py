"""Hostile inputs that once held smegd's event loop: an older version against this one, same run.

    uv run python bench/hostile_input_bench.py --compare 3fc5f61^ --compare 2eb3646^

Each case is one input a stranger or a member can send, timed where the
daemon runs it (on its event loop), median of ``--reps`` runs:

* ``dns <kind>``: the crafted messages of :mod:`smegmesh.testbed.hostile_dns`
  (as many compressed questions or records as fit in 64 KiB: 10,919
  questions, 5,039 records; one message)
  through the DNS answerer (``Answerer.answer``, what the server runs for
  each message on the loop). Fixed in ``3fc5f61``: refused from the header
  unparsed; before it, dnspython parsed the whole message first.
* ``void statements``: 1,000 authority statements a client may not make
  (admin changes naming itself), pushed one a message to a founder's engine
  (``MeshNode.handle_request``). Fixed in ``2eb3646``: refused before they
  are kept; before it each was kept and rebuilt the authority from all.

``--compare REV`` (repeatable) runs the same cases against the sources of
git revision ``REV`` (a temporary worktree), in a child process, one after
the other with this tree's, so each figure has its baseline from the same
run and machine. Prints a table (ms, and the ratio this tree / REV), writes
``bench/out/hostile_input_bench.json`` and a plot beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dns_bench import cpu_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
VOID_STATEMENTS = 1000


def _crafted() -> dict[str, bytes]:
    """This tree's crafted messages, loaded by path (the child may import an older smegmesh)."""
    path = ROOT / "src" / "smegmesh" / "testbed" / "hostile_dns.py"
    spec = importlib.util.spec_from_file_location("hostile_dns", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out: dict[str, bytes] = mod.crafted_messages()  # as many items as fit in 64 KiB
    return out


def _median_ms(run: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _dns_cases(reps: int) -> dict[str, float]:
    from smegmesh.dns.answer import Answerer
    from smegmesh.dns.names import NameView

    answerer = Answerer(NameView(()))
    return {
        f"dns {kind}": _median_ms(lambda m=msg: answerer.answer(m, tcp=True), reps)
        for kind, msg in _crafted().items()
    }


def _void_statements(reps: int) -> dict[str, float]:
    from smegmesh.core.cert import AdminChange, Policy
    from smegmesh.core.sync import Push
    from smegmesh.testbed.founded import NOW, Mesh, ident, member_node

    def run() -> None:
        m = Mesh(Policy.PEERS)
        client = ident(2)
        m.admit(client)
        founder = member_node(m.founder, m.mesh_id, m.state())
        founder.start(NOW)
        founder.mesh.apply(m.record(client), NOW)
        void = [
            AdminChange.create(
                client, m.mesh_id, subject=client.wg_public_key, admin=bool(i % 2), now_ms=NOW + i
            )
            for i in range(VOID_STATEMENTS)
        ]
        t0 = time.perf_counter()
        for st in void:
            founder.handle_request(client.wg_public_key, Push(m.mesh_id, (st,)), NOW + 5000)
        took.append((time.perf_counter() - t0) * 1000)

    took: list[float] = []
    for _ in range(reps):
        run()
    return {f"void statements ({VOID_STATEMENTS:,})": statistics.median(took)}


def measure(reps: int) -> dict[str, float]:
    return {**_dns_cases(reps), **_void_statements(reps)}


def _child(tree: Path, reps: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONHASHSEED": "0"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--reps", str(reps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _worktree(rev: str, parent: Path) -> Path:
    path = parent / re.sub(r"[^\w.-]", "_", rev)
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev], check=True
    )
    return path


def _plot(results: dict[str, dict[str, float]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cases = list(next(iter(results.values())))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(results)
    for i, (label, row) in enumerate(results.items()):
        xs = [j + i * width for j in range(len(cases))]
        ax.bar(xs, [max(row.get(c, 0.0), 1e-3) for c in cases], width, label=label)
    ax.set_yscale("log")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))], cases, rotation=20)
    ax.set_ylabel("ms of the event loop (median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", action="append", default=[], metavar="REV")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.reps)))
        return
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="hib-") as tmp:
        trees = [(rev, _worktree(rev, Path(tmp))) for rev in args.compare]
        try:
            for rev, tree in trees:
                results[rev] = _child(tree, args.reps)
            results["this tree"] = _child(ROOT, args.reps)
        finally:
            for _rev, tree in trees:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                    check=False,
                )
    now = results["this tree"]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; median of {args.reps} runs (ms)")
    head = ["case", *results]
    ratios = [f"this / {rev}" for rev in args.compare]
    print(" | ".join(head + ratios))
    for case in now:
        cells = [f"{results[label].get(case, float('nan')):.3g}" for label in results]
        rs = [f"{now[case] / results[r][case]:.2g}" for r in args.compare if case in results[r]]
        print(" | ".join([case, *cells, *rs]))
    OUT.mkdir(exist_ok=True)
    data: dict[str, Any] = {
        "machine": cpu_model(),
        "cores": os.cpu_count(),
        "reps": args.reps,
        "results": results,
    }
    (OUT / "hostile_input_bench.json").write_text(json.dumps(data, indent=2))
    if _plot(results, OUT / "hostile_input_bench.png"):
        print(f"plot: {OUT / 'hostile_input_bench.png'}")


if __name__ == "__main__":
    main()
