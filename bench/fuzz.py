"""Fuzz campaign: atheris (coverage-guided, libFuzzer) over every decoder of untrusted input.

    uv run python bench/fuzz.py [--runs 100000] [--only join,token] [--out bench/out/fuzz]

The targets (:mod:`smegmesh.testbed.fuzztargets`): the wire decoder, one target
per message type (records, prunes, liveness, join, sync), the join and member
request handlers behind it (on a founded mesh too), the invitation token
parser, the DNS query handler and the config loader. Each runs in its own
process, instrumented by atheris (smegmesh, plus dnspython for ``dns`` and
PyYAML for ``config``), seeded with real messages of a small mesh, for
``--runs`` cases (three times as many for the join request, which strangers
can send). A *crash* is any exception
outside the target's allowed error types, or a broken invariant (round trip,
answer id, size). Inputs that crash are kept under ``OUT/<target>/crashes``.

Line coverage is measured afterwards with coverage.py, by replaying the seeds
and then the corpus libFuzzer kept (the inputs that found new coverage)
through the same target, over the target's own modules: "seeds" against
"campaign" shows what the fuzzer reached beyond the hand-made inputs.
The table is printed and written to ``OUT/fuzz.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HEAVY = {"join": 3, "founded-join": 3, "wire:JoinRequest": 3}  # strangers send joins
# dnspython is instrumented for the DNS target (the slow path parses with it);
# PyYAML is not (it would cut the config target to about 100 cases a second).
EXTRA_INSTRUMENT = {"dns": ["dns"]}


def child(name: str, runs: int, work: Path) -> None:
    """Fuzz one target in this process (atheris), then write ``report.json``."""
    import atheris

    with atheris.instrument_imports(include=["smegmesh", *EXTRA_INSTRUMENT.get(name, [])]):
        import smegmesh.core.invite
        import smegmesh.core.meshnode
        import smegmesh.core.messages
        import smegmesh.core.record
        import smegmesh.core.state
        import smegmesh.core.sync
        import smegmesh.core.wire
        import smegmesh.daemon.config
        import smegmesh.dns.names
        import smegmesh.dns.server  # noqa: F401
        from smegmesh.testbed.fuzztargets import check, targets

        if name == "dns":
            import dns.message  # noqa: F401

    target = targets()[name]
    corpus = work / "corpus"
    crashes = work / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(exist_ok=True)
    seeds = target.seeds()
    (work / "seeds").mkdir(exist_ok=True)
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i:04d}").write_bytes(seed)
        (work / "seeds" / f"seed-{i:04d}").write_bytes(seed)
    stats: dict[str, Any] = {
        "target": name,
        "doc": target.doc,
        "allowed": [e.__name__ for e in target.allowed] or ["(none)"],
        "seeds": len(seeds),
        "cases": 0,
        "crashes": 0,
        "kinds": {},
        "slowest_ms": 0.0,
    }
    check(target, b"\x00")  # builds the target's lazy state: not a timed case
    t0 = time.monotonic()

    def finish() -> None:
        stats["seconds"] = time.monotonic() - t0
        (work / "report.json").write_text(json.dumps(stats, indent=1))
        sys.stdout.flush()
        os._exit(0)

    def one(data: bytes) -> None:
        t = time.perf_counter()
        exc = check(target, data)
        stats["slowest_ms"] = max(stats["slowest_ms"], (time.perf_counter() - t) * 1e3)
        stats["cases"] += 1
        if exc is not None:
            stats["crashes"] += 1
            kind = f"{type(exc).__name__}: {str(exc)[:120]}"
            kinds = stats["kinds"]
            if kind not in kinds:
                kinds[kind] = 0
                if len(kinds) <= 50:
                    (crashes / f"crash-{len(kinds):03d}").write_bytes(data)
                    tb = "".join(traceback.format_exception(exc))
                    (crashes / f"crash-{len(kinds):03d}.txt").write_text(tb)
            kinds[kind] += 1
        if stats["cases"] >= runs:
            finish()

    args = [
        sys.argv[0],
        str(corpus),
        f"-max_len={target.max_len}",
        "-rss_limit_mb=3072",
        "-timeout=20",
        f"-runs={runs * 4}",
        "-print_final_stats=0",
        "-close_fd_mask=1",
    ]
    atheris.Setup(args, one)
    atheris.Fuzz()
    finish()  # libFuzzer ran out of runs first (not expected)


def coverage_child(name: str, work: Path, phase: str) -> None:
    """Line coverage of the target's modules for the seeds, or seeds + kept corpus.

    Each phase runs in a fresh process, so caches filled by one (the DNS
    server's rendered answers) do not hide lines from the other.
    """
    import coverage

    from smegmesh.testbed.fuzztargets import check, targets

    target = targets()[name]
    inputs = [p.read_bytes() for p in sorted((work / "seeds").iterdir())]
    kept = [p.read_bytes() for p in sorted((work / "corpus").iterdir())]
    kept += [p.read_bytes() for p in sorted((work / "crashes").glob("crash-???"))]
    if phase == "campaign":
        inputs += kept
    check(target, b"\x00")  # build the lazy state (mesh, server) outside the measurement
    files = []
    for mod in target.modules:
        __import__(mod)
        files.append(sys.modules[mod].__file__)
    cov = coverage.Coverage(data_file=None, include=files, branch=False)
    cov.start()
    for inp in inputs:
        check(target, inp)
    cov.stop()
    total = hit = 0
    for f in files:
        _, statements, _, missing, _ = cov.analysis2(f)
        total += len(statements)
        hit += len(statements) - len(missing)
    out_file = work / "coverage.json"
    out = json.loads(out_file.read_text()) if out_file.exists() else {}
    out[phase] = 100.0 * hit / total if total else 0.0
    out["corpus"] = len(kept)
    out["modules"] = [m.removeprefix("smegmesh.") for m in target.modules]
    out_file.write_text(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=100_000, help="cases per target")
    ap.add_argument("--only", help="comma-separated target names")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "fuzz")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="do not fuzz: recompute coverage and the table from a previous run in --out",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--coverage", help=argparse.SUPPRESS)
    ap.add_argument("--phase", default="campaign", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.runs, args.out)
        return
    if args.coverage:
        coverage_child(args.coverage, args.out, args.phase)
        return

    from smegmesh.testbed.fuzztargets import targets

    names = list(targets())
    if args.only:
        wanted = [n.strip() for n in args.only.split(",")]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            sys.exit(f"unknown targets {unknown}; known: {', '.join(names)}")
        names = wanted
    rows = []
    for name in names:
        work = args.out / name.replace(":", "-")
        report_file = work / "report.json"
        t0 = time.monotonic()
        if args.report_only:
            if not report_file.exists():
                print(f"{name}: no report in {work}, skipped")
                continue
            (work / "coverage.json").unlink(missing_ok=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            runs = args.runs * HEAVY.get(name, 1)
            cmd = [sys.executable, __file__, "--child", name, "--runs", str(runs)]
            proc = subprocess.run([*cmd, "--out", str(work)], capture_output=True, text=True)
        if not report_file.exists():
            tail = (proc.stdout + proc.stderr)[-3000:]
            print(f"{name}: the fuzzer process died (exit {proc.returncode}):\n{tail}")
            rep: dict[str, Any] = {
                "target": name,
                "cases": 0,
                "crashes": 1,
                "kinds": {f"process died, exit {proc.returncode}": 1},
                "seconds": time.monotonic() - t0,
                "allowed": [],
                "slowest_ms": 0.0,
                "doc": "",
            }
        else:
            rep = json.loads(report_file.read_text())
        for phase in ("seeds", "campaign"):
            cov_cmd = [sys.executable, __file__, "--coverage", name, "--out", str(work)]
            subprocess.run([*cov_cmd, "--phase", phase], check=False)
        cov_file = work / "coverage.json"
        cov = json.loads(cov_file.read_text()) if cov_file.exists() else {}
        rep.update(coverage=cov)
        rows.append(rep)
        print(
            f"{name:18} {rep['cases']:>8} cases  {rep['crashes']:>4} crashes  "
            f"{rep['cases'] / max(rep['seconds'], 1e-9):7.0f}/s  "
            f"coverage {cov.get('seeds', 0):.0f}% -> {cov.get('campaign', 0):.0f}%",
            flush=True,
        )
        for kind, count in rep["kinds"].items():
            print(f"    {count:6} x {kind}")

    lines = [
        "| target | what | allowed errors | cases | crashes | cases/s | slowest case | "
        "line coverage: seeds → campaign (modules) |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cov = r["coverage"]
        mods = ", ".join(cov.get("modules", []))
        lines.append(
            f"| `{r['target']}` | {r['doc']} | {', '.join(r['allowed'])} | {r['cases']:,} | "
            f"{r['crashes']} | {r['cases'] / max(r['seconds'], 1e-9):,.0f} | "
            f"{r['slowest_ms']:.0f} ms | {cov.get('seeds', 0):.0f} % → "
            f"{cov.get('campaign', 0):.0f} % ({mods}; corpus {cov.get('corpus', 0)}) |"
        )
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz.md").write_text(table + "\n")
    print()
    print(table)
    total = sum(r["crashes"] for r in rows)
    print(f"\n{len(rows)} targets, {sum(r['cases'] for r in rows):,} cases, {total} crashes")
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
