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


def test_a_refusal_by_a_member_that_has_not_heard_of_the_invitation_is_not_final() -> None:
    """Seen at 100 real daemons on 2 cores: 22 joins failed with 403. The issuer
    (first in the token) was too slow to answer; the joiner went on to another
    member named in the token, which had not yet received the issuer's record
    with the invitation, refused, and that refusal ended the join. Here the
    second member is one that can never know the invitation (it is in another
    mesh) and the issuer is stopped for the first attempt."""
    from dataclasses import replace

    from smegmesh.core.invite import parse_token

    with cluster(3, extra={"timeout": 2}) as c:
        a, b, d = c.daemons
        mesh_id = a.api("POST", "/v1/meshes")["mesh_id"]
        other = d.api("POST", "/v1/meshes")["mesh_id"]
        tok = a.api("POST", f"/v1/meshes/{mesh_id}/invites", json={"ttl_s": 600, "uses": 1})
        tok_d = d.api("POST", f"/v1/meshes/{other}/invites", json={"ttl_s": 600, "uses": 1})
        t = parse_token(tok["token"])
        stranger = parse_token(tok_d["token"]).bootstrap[0]
        mixed = replace(t, bootstrap=(t.bootstrap[0], stranger)).encode()
        assert a.proc is not None
        result: dict[str, Any] = {}

        def join() -> None:
            try:
                result["ok"] = b.api("POST", "/v1/join", json={"token": mixed}, timeout=90)
            except Exception as e:
                result["err"] = e

        os.kill(a.proc.pid, signal.SIGSTOP)
        try:
            th = threading.Thread(target=join)
            th.start()
            wait_until(
                lambda: "may not know the invitation yet" in b.log() or result,
                60,
                0.1,
                "the other member's refusal",
            )
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        th.join(90)
        assert "ok" in result, result
        assert result["ok"]["mesh_id"] == mesh_id
        wait_converged([a, b], mesh_id, 60)
