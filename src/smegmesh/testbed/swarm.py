"""A swarm: thousands of mesh members in a few processes, for measuring real daemons at scale.

``python -m smegmesh.testbed.swarm --members 3000 --procs 2 --dir /tmp/swarm`` starts
``--procs`` worker processes that together host ``--members`` members of one
mesh, each a real :class:`~smegmesh.core.meshnode.MeshNode` (the same engine
as smegd: gossip, SWIM with local health, anti-entropy, invitations). The
swarm writes an invitation token to ``DIR/token``; ordinary ``smegd``
processes join with it (``smegctl join-mesh``) and are then measured as
members of a mesh of ``--members`` + 1 nodes.

What is real, what is shared (docs/SCALE.md, "The swarm", says more):

* **Towards a smegd, every member is a node of its own**: its own record
  (signed by its own identity), its own control endpoint (``127.S.x.y:PORT``:
  a distinct loopback address per member, so the smegd keeps one channel per
  member it calls, as it would with real nodes), its own
  :class:`~smegmesh.daemon.transport.RpcClient` (its own pinned channels, cap
  and idle close: the smegd sees one inbound connection per member that
  called it recently), per-call signatures by its own key.
* **Shared per process**: one event loop; one gRPC TLS server on
  ``0.0.0.0:PORT`` that accepts every member's address and routes a call by
  the ``x-smeg-to`` hint (so members of a process share one TLS certificate:
  their records pin the same fingerprint); one timer heap for all members
  (a member is ticked at its own deadline, due ticks run in one batch).
* **Between members**: calls inside a process are delivered in process
  (encoded and decoded with ``core.wire``, no socket); calls to a member of
  another swarm process go over one pinned channel per process pair (real TLS,
  real per-call signatures). So swarm members do not pay for N² connections;
  only the daemons under measurement do.
* **Start**: every member starts holding every member's record (the settled
  state after the joins, built once and cloned copy-on-write, as the
  simulator does); only the measured daemons join through invitations.

This module is the command line and the process control (start, stop, stats);
the plan and the members are built in :mod:`smegmesh.testbed.swarm_plan`, a
worker process runs :class:`~smegmesh.testbed.swarm_worker.Worker`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from smegmesh.daemon.runtime import now_ms
from smegmesh.daemon.transport import TlsIdentity
from smegmesh.testbed.swarm_plan import MESH_ID
from smegmesh.testbed.swarm_worker import Worker, worker_main

__all__ = [
    "MESH_ID",
    "Worker",
    "main",
    "now_ms",
    "read_stats",
    "start_swarm",
    "stop_swarm",
]

log = logging.getLogger("smegmesh.swarm")


def start_swarm(
    directory: Path,
    members: int,
    procs: int = 2,
    base_port: int = 47100,
    seed: int = 1,
    *,
    channel_idle_s: float = 60.0,
    datagrams: bool = True,
    churn_per_min: float = 0.0,
    churn_downtime_s: float = 10.0,
    authority: bool = False,
    dissemination: str = "gossip",
) -> list[subprocess.Popen[bytes]]:
    """Start the worker processes (returns at once; ``DIR/token`` appears when ready).

    With ``churn_per_min``, members crash and restart once ``DIR/churn`` exists.
    With ``authority``, the mesh is founded (``DIR/mesh_id`` has its id).
    """
    directory.mkdir(parents=True, exist_ok=True)
    for p in range(procs):  # certificates first: every worker pins every other's
        d = directory / f"tls-{p}"
        d.mkdir(exist_ok=True)
        TlsIdentity.load_or_create(d)
    old = [directory / n for n in ("token", "churn", "mesh_id")]
    old += [*directory.glob("ready-*"), *directory.glob("linked-*")]
    for f in [*old, *directory.glob("stats-*.json")]:
        f.unlink(missing_ok=True)
    t0 = now_ms()
    common = [
        sys.executable,
        "-m",
        "smegmesh.testbed.swarm",
        "--members",
        str(members),
        "--procs",
        str(procs),
        "--base-port",
        str(base_port),
        "--seed",
        str(seed),
        "--dir",
        str(directory),
        "--t0",
        str(t0),
        "--channel-idle",
        str(channel_idle_s),
        "--churn-per-min",
        str(churn_per_min),
        "--churn-downtime",
        str(churn_downtime_s),
        *([] if datagrams else ["--no-datagrams"]),
        *(["--authority"] if authority else []),
        "--dissemination",
        dissemination,
    ]
    return [
        subprocess.Popen([*common, "--worker", str(p)], start_new_session=True)
        for p in range(procs)
    ]


def stop_swarm(procs: list[subprocess.Popen[bytes]], timeout: float = 20) -> None:
    """Stop the workers (SIGTERM, then SIGKILL after ``timeout``)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def read_stats(directory: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted(directory.glob("stats-*.json")):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(f.read_text()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m smegmesh.testbed.swarm", description=__doc__)
    ap.add_argument("--members", type=int, required=True)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--base-port", type=int, default=47100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", default="/tmp/smeg-swarm")
    ap.add_argument(
        "--channel-idle",
        type=float,
        default=60.0,
        help="seconds before a member closes an idle channel to an outside node (smegd: 60)",
    )
    ap.add_argument(
        "--no-datagrams",
        action="store_true",
        help="members make every call on the gRPC stream (smegd: datagrams: false)",
    )
    ap.add_argument(
        "--churn-per-min",
        type=float,
        default=0.0,
        help="share of the members crashed a minute (0.2: 20 %%/min), each restarting "
        "after --churn-downtime with the state it had; starts when DIR/churn exists",
    )
    ap.add_argument("--churn-downtime", type=float, default=10.0, help="seconds (default 10)")
    ap.add_argument(
        "--authority",
        action="store_true",
        help="a founded mesh, as smegctl create makes (member 0 its founder, the others "
        "admitted by random earlier members, records carrying their admission chains); "
        "its id, swarm-SUFFIX, is written to DIR/mesh_id",
    )
    ap.add_argument("--dissemination", choices=("gossip", "tree"), default="gossip")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--t0", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.members < 2 or a.procs < 1 or a.members < a.procs:
        ap.error("need --members >= 2 and at least one member per process")
    if not 0 <= a.churn_per_min <= 10 or a.churn_downtime <= 0:
        ap.error("need 0 <= --churn-per-min <= 10 and --churn-downtime > 0")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s swarm %(message)s")
    if a.worker is not None:
        return worker_main(a)
    d = Path(a.dir)
    procs = start_swarm(
        d,
        a.members,
        a.procs,
        a.base_port,
        a.seed,
        channel_idle_s=a.channel_idle,
        datagrams=not a.no_datagrams,
        churn_per_min=a.churn_per_min,
        churn_downtime_s=a.churn_downtime,
        authority=a.authority,
        dissemination=a.dissemination,
    )
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    announced = False
    try:
        while not stop and all(p.poll() is None for p in procs):
            if not announced and (d / "token").exists():
                mesh = (d / "mesh_id").read_text()
                print(
                    f"swarm of {a.members} members ready (mesh {mesh}); token in {d / 'token'}",
                    flush=True,
                )
                announced = True
            time.sleep(0.5)
    finally:
        stop_swarm(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
