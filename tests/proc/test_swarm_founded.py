"""A real smegd in a founded swarm mesh, under churn (issue 14).

Every mesh ``smegctl create`` makes is founded: its records carry admission
chains, and gossip pushes leave a settled chain out (``core/elide.py``). The
swarm's ``--authority`` builds such a mesh (member 0 founded it, the others
were admitted by random earlier members). Here a smegd joins a founded swarm
of 24 with the invitation the founder wrote, is admitted into the founded
mesh (its id is the swarm's ``swarm-SUFFIX``, and a daemon that enforces
admission holds every member), and under churn it takes restarts' records
pushed by reference and puts their chains back (none unresolved enough to
stall it: every crashed member is live again in its view once churn ends).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from smegmesh.testbed.measured import MeasuredSmegd
from smegmesh.testbed.ports import free_port_run
from smegmesh.testbed.swarm import read_stats, start_swarm, stop_swarm
from smegmesh.testbed.wait import wait_until

pytestmark = pytest.mark.proc

MEMBERS = 24


def _by_reference(d: MeasuredSmegd, outcome: str) -> float:
    m = d.metrics()
    return sum(
        v
        for k, v in m.items()
        if k.startswith("smegd_pushed_items_by_reference") and f'outcome="{outcome}"' in k
    )


def test_a_smegd_in_a_founded_swarm_takes_chains_by_reference(tmp_path: Path) -> None:
    sd = tmp_path / "swarm"
    procs = start_swarm(
        sd,
        MEMBERS,
        1,
        free_port_run(1, "0.0.0.0"),
        churn_per_min=3.0,
        churn_downtime_s=3.0,
        authority=True,
    )
    d = MeasuredSmegd(tmp_path / "d").start()
    try:
        wait_until((sd / "token").exists, 120, 0.2, "the swarm to write its token")
        mesh = (sd / "mesh_id").read_text()
        assert mesh.startswith("swarm-") and mesh != "swarm"
        assert d.join((sd / "token").read_text()) == mesh
        wait_until(lambda: d.live_members(mesh) >= MEMBERS + 1, 120, 0.5, "all members live")
        (sd / "churn").touch()
        wait_until(lambda: _by_reference(d, "resolved") >= 4, 90, 0.5, "pushes by reference")
        (sd / "churn").unlink()

        def back() -> bool:
            s = read_stats(sd)
            return bool(s) and s[0].get("restarts") == s[0].get("crashes")

        wait_until(back, 60, 0.5, "every crashed member restarted")
        wait_until(lambda: d.live_members(mesh) == MEMBERS + 1, 60, 0.5, "all live again")
        assert "Traceback" not in d.log(), d.log()[-3000:]
    finally:
        d.stop()
        stop_swarm(procs)
