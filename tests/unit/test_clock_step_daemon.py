"""smegd finds steps of the wall clock and tells its engines (``engine.ClockStepped``).

Review of the liveness code: the engines ran on ``time.time()`` (``daemon/runtime.py``)
while the stall detection measured on the monotonic clock, so a step of the
wall clock (chrony makestep, a VM resumed, fake-hwclock at boot) was neither
a stall nor ordinary time. Here the daemon's wall clock is moved while a
member that does not answer is suspect: set back an hour, the member was not
found dead for the hour; set forward 10 s, it was found dead at once, before
its suspicion had run.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from daemon_inproc import running_daemon, until
from smegmesh.core.cert import Cert
from smegmesh.core.record import NodeRecord
from smegmesh.core.sync import Push
from smegmesh.daemon import runtime
from smegmesh.daemon.config import MeshOptions
from smegmesh.daemon.node import Daemon
from smegmesh.testbed.founded import ident


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The daemon's wall clock: the real one plus ``wall[0]`` seconds (a step)."""
    offset = [0.0]
    fake = SimpleNamespace(time=lambda: time.time() + offset[0], monotonic=time.monotonic)
    monkeypatch.setattr(runtime, "time", fake)
    # the process's clock forgets the fake readings afterwards (no step for later tests)
    monkeypatch.setattr(runtime.CLOCK, "_last", None)
    return offset


def _add_silent_member(d: Daemon, mesh_id: str, signed_at: int) -> bytes:
    """A member admitted by the daemon at an address where nothing answers."""
    who, now = ident(9), runtime.now_ms()
    key = who.wg_public_key
    cert = Cert.create(d.identity, mesh_id, subject=key, may_admit=False, now_ms=now)
    rec = NodeRecord.create(
        who,
        mesh_id,
        version=signed_at,
        now_ms=signed_at,
        chain=(cert,),
        control_endpoint="[::1]:1",
        tls_fp=bytes(32),
    )
    rt = d.meshes[mesh_id]
    _reply, outs = rt.node.handle_request(key, Push(mesh_id, (rec,)), now)
    rt.driver.dispatch(outs)
    rt.wake.set()
    assert rt.node.mesh.live_record(key) is not None
    return key


async def _suspected(root: Path, step_s: float, wall: list[float], then: float) -> bool:
    """Whether the silent member is live ``then`` s after a step of ``step_s``
    made while it is suspect (or when it was found dead, if sooner).

    Set back, its record is signed by the clock after the step: the daemon's
    clock was wrong by the step, the member's right (a node whose clock is
    behind the members' records by more than MAX_CLOCK_SKEW_MS takes their
    records as from the future, its own prunes of them too).
    """
    async with running_daemon(root) as d:
        mesh_id = await d.new_mesh(MeshOptions())
        rt = d.meshes[mesh_id]
        key = _add_silent_member(d, mesh_id, runtime.now_ms() + int(min(0, step_s) * 1000))
        await until(lambda: key in rt.node.suspects)
        wall[0] += step_s
        deadline = time.monotonic() + then
        while time.monotonic() < deadline and rt.node.mesh.live_record(key) is not None:
            await asyncio.sleep(0.02)
        return rt.node.mesh.live_record(key) is not None


def test_a_clock_stepped_forward_does_not_end_a_suspicion_at_once(
    root: Path, wall: list[float]
) -> None:
    assert asyncio.run(_suspected(root, 10.0, wall, 0.5)), "pruned at once after the step"


def test_a_clock_stepped_back_does_not_stop_failure_detection(
    root: Path, wall: list[float]
) -> None:
    # the suspicion (2 s) ends as it would have: the member is found dead
    assert not asyncio.run(_suspected(root, -3600.0, wall, 10.0)), "not found dead for an hour"


def test_the_clock_tells_a_step_before_the_reading_that_found_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = {"wall": 1_000.0, "mono": 50.0}
    monkeypatch.setattr(
        runtime, "time", SimpleNamespace(time=lambda: t["wall"], monotonic=lambda: t["mono"])
    )
    clock = runtime.WallClock()
    seen: list[tuple[int, int | None]] = []
    last: list[int] = []
    unsubscribe = clock.subscribe(lambda d: seen.append((d, last[-1] if last else None)))

    def read(dwall: float, dmono: float) -> None:
        t["wall"] += dwall
        t["mono"] += dmono
        last.append(clock.now_ms())

    read(0, 0)
    read(1.0, 1.0)
    read(1.05, 1.0)  # a slew (50 ms in a second): ordinary time
    read(0.5 - 3600, 0.5)  # set back an hour
    read(10.2, 0.2)  # set forward 10 s
    read(3600.0, 0.0)  # resumed from an hour's suspend (monotonic time stood still)
    # each told before its reading was returned (the previous reading is the last seen)
    assert [d for d, _ in seen] == [-3_600_000, 10_000, 3_600_000]
    assert [before for _, before in seen] == last[2:5]
    unsubscribe()
    read(-60.0, 0.0)
    assert len(seen) == 3
