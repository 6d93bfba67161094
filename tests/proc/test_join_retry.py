"""Joins ride out a busy or briefly unreachable bootstrap member (issue 14).

A member starved of CPU (or restarting) answered nothing for a few seconds and
the join failed at once: one call per bootstrap member, the second pass refused
by the client's endpoint back-off. The joiner now retries with back-off until a
deadline.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from smegmesh.testbed.loopback import cluster, wait_converged, wait_until


def test_join_waits_out_a_stopped_bootstrap_member() -> None:
    with cluster(2, extra={"timeout": 2}) as c:
        a, b = c.daemons
        mesh_id = a.api("POST", "/v1/meshes")["mesh_id"]
        tok = a.api("POST", f"/v1/meshes/{mesh_id}/invites", json={"ttl_s": 600, "uses": 1})
        assert a.proc is not None
        result: dict[str, Any] = {}

        def join() -> None:
            try:
                result["ok"] = b.api("POST", "/v1/join", json={"token": tok["token"]}, timeout=90)
            except Exception as e:
                result["err"] = e

        os.kill(a.proc.pid, signal.SIGSTOP)  # the only bootstrap member answers nothing
        try:
            th = threading.Thread(target=join)
            th.start()
            # the joiner's first attempt times out (2 s) while the member is stopped
            wait_until(lambda: "failed connection to" in b.log(), 30, 0.1, "a failed attempt")
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        th.join(90)
        assert "err" not in result, (result, b.log()[-2000:])
        assert result["ok"]["mesh_id"] == mesh_id
        wait_converged([a, b], mesh_id)


def test_attempts_pace_rounds_skip_backing_off_members_and_stop_at_the_deadline() -> None:
    import asyncio
    import random

    from smegmesh.daemon.joinretry import JOIN_PAUSE_CAP_S, attempts

    now = [0.0]
    pauses: list[float] = []
    backing_off = {"b": 100.0}  # b's endpoint backs off for the whole join

    async def sleep(s: float) -> None:
        pauses.append(s)
        now[0] += s

    async def run() -> list[str]:
        out = []
        async for m in attempts(
            ["a", "b", "c"],
            lambda m: max(0.0, backing_off.get(m, 0.0) - now[0]),
            deadline_s=30.0,
            rng=random.Random(1),
            clock=lambda: now[0],
            sleep=sleep,
        ):
            out.append(m)
            now[0] += 1.0  # each attempt takes 1 s
        return out

    tried = asyncio.run(run())
    assert "b" not in tried
    assert tried[:2] == ["a", "c"]
    assert len(tried) >= 6  # several rounds, not one pass
    assert all(p <= JOIN_PAUSE_CAP_S * 1.5 for p in pauses)
    assert pauses[1] > pauses[0] * 0.6  # grows (jittered)
    assert now[0] <= 30.0 + 2.0  # no new round after the deadline


def test_attempts_make_a_second_round_even_when_one_attempt_outlasts_the_deadline() -> None:
    import asyncio

    from smegmesh.daemon.joinretry import MIN_ROUNDS, attempts

    now = [0.0]

    async def sleep(s: float) -> None:
        now[0] += s

    async def run() -> list[str]:
        out = []
        async for m in attempts(
            ["a", "b"], lambda m: 0.0, deadline_s=5.0, clock=lambda: now[0], sleep=sleep
        ):
            out.append(m)
            now[0] += 17.0  # a starved machine: one call took longer than the deadline
        return out

    assert asyncio.run(run()) == ["a", "b"] * MIN_ROUNDS
