"""Churn in the swarm: members crash and restart as real daemons do (issue 14).

``smegmesh.testbed.swarm --churn-per-min`` makes the swarm's members crash
and restart with the state they had, so one real smegd can be measured in
a mesh under churn (bench/member_scale_bench.py ``--churn-per-min``). Here
a swarm of 24 members crashes 1.2 of them a second (3/min each) for a few
seconds, down 3 s each: crashes and restarts happen, the members see the
crashed ones pruned, and once the churn ends every member is live again in
the first member's view (restarts refute their prunes).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from smegmesh.testbed.ports import free_port_run
from smegmesh.testbed.swarm import read_stats, start_swarm, stop_swarm
from smegmesh.testbed.wait import wait_until

pytestmark = pytest.mark.proc

MEMBERS = 24


def test_swarm_members_crash_restart_and_come_back(tmp_path: Path) -> None:
    d = tmp_path / "swarm"
    procs = start_swarm(
        d, MEMBERS, 1, free_port_run(1, "0.0.0.0"), churn_per_min=3.0, churn_downtime_s=3.0
    )
    try:
        wait_until(lambda: (d / "token").exists(), 120, 0.2, "the swarm to start")

        def first() -> dict[str, int]:
            stats = read_stats(d)
            return stats[0] if stats else {}

        wait_until(lambda: first().get("live_seen_by_first") == MEMBERS, 60, 0.5, "all live")
        assert first().get("crashes") == 0  # no churn before DIR/churn exists
        (d / "churn").touch()
        lowest = MEMBERS
        end = time.monotonic() + 60
        # until 4 restarts and a prune seen: a crash is pruned only when its
        # detection beats the 3 s downtime, so the first restarts may come before
        # any prune (the loop stopped at the restarts alone: 1 run in 3 failed)
        while time.monotonic() < end and (first().get("restarts", 0) < 4 or lowest == MEMBERS):
            lowest = min(lowest, first().get("live_seen_by_first", MEMBERS))
            time.sleep(0.2)
        (d / "churn").unlink()
        s = first()
        assert s["crashes"] >= 4 and s["restarts"] >= 4, s
        assert lowest < MEMBERS  # crashed members were pruned

        def back() -> bool:  # every crashed member restarted, and seen live
            s = first()
            return s.get("restarts") == s.get("crashes") and s.get("live_seen_by_first") == MEMBERS

        wait_until(back, 60, 0.5, "every member restarted and live again")
    finally:
        stop_swarm(procs)
