"""A real smegd in a swarm mesh: its connections stay bounded as the mesh grows (issue 14).

Two swarms (20 and 40 members, ``smegmesh.testbed.swarm``) run side by side,
one ordinary ``smegd`` joins each with an invitation. The daemons run with
``maxChannels: 8``, fewer than the members either one probes in the window,
so the cap is what bounds them; the swarm members close an idle channel
after 4 s, so the connections members hold open to the daemon are the same
few at both sizes. Asserted from outside (``/proc``, Prometheus): outgoing
channels never exceed the cap, and the daemon's open descriptors at 40
members are within a few of those at 20. Datagrams are off (``datagrams:
false``, the swarm's ``--no-datagrams``): with them the probes would not use
channels at all, and this is about the channel pool. A second case runs the
product default, datagrams on, and asserts the same flat descriptor count.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from smegmesh.testbed.measured import MeasuredSmegd
from smegmesh.testbed.ports import free_port_run
from smegmesh.testbed.swarm import MESH_ID, start_swarm, stop_swarm
from smegmesh.testbed.wait import wait_until

pytestmark = pytest.mark.proc

CAP = 8
SIZES = (20, 40)


def _watch(daemons: dict[int, MeasuredSmegd], seconds: float) -> dict[int, list[tuple[int, int]]]:
    """(open descriptors, outgoing channels) of each daemon, every half second."""
    seen: dict[int, list[tuple[int, int]]] = {n: [] for n in daemons}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for n, d in daemons.items():
            seen[n].append((d.sample().fds, int(d.metrics()["smegd_rpc_channels"])))
        time.sleep(0.5)
    return seen


def _swarms_and_daemons(
    tmp_path: Path, datagrams: bool
) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Both sizes run and watched: (open descriptors, outgoing channels) by size."""
    swarms: list[list[subprocess.Popen[bytes]]] = []
    daemons: dict[int, MeasuredSmegd] = {}
    try:
        for n in SIZES:
            swarms.append(
                start_swarm(
                    tmp_path / f"swarm{n}",
                    n,
                    2,
                    free_port_run(2, "0.0.0.0"),
                    channel_idle_s=4.0,
                    datagrams=datagrams,
                )
            )
            extra = {"maxChannels": CAP, "datagrams": datagrams}
            daemons[n] = MeasuredSmegd(tmp_path / f"d{n}", extra=extra).start()
        for n, d in daemons.items():
            token = tmp_path / f"swarm{n}" / "token"
            wait_until(token.exists, 120, 0.2, f"the swarm of {n} to write its token")
            assert d.join(token.read_text()) == MESH_ID
        for n, d in daemons.items():
            # Known in any state: on a starved machine members may suspect each other.
            wait_until(lambda d=d, n=n: d.known_members(MESH_ID) >= n + 1, 120, 0.5, f"{n} members")
        # Past the join's burst and the members' idle close, then watched for a while.
        time.sleep(5)
        seen = _watch(daemons, 8)
        for d in daemons.values():
            assert "Traceback" not in d.log(), d.log()[-3000:]
        fds = {n: [f for f, _c in s] for n, s in seen.items()}
        channels = {n: [c for _f, c in s] for n, s in seen.items()}
        return fds, channels
    finally:
        for d in daemons.values():
            d.stop()
        for procs in swarms:
            stop_swarm(procs)


def test_smegd_connections_bounded_by_the_cap_not_the_member_count(tmp_path: Path) -> None:
    fds, channels = _swarms_and_daemons(tmp_path, datagrams=False)
    for n in SIZES:
        assert max(channels[n]) <= CAP, (n, channels[n])
    # It probes a new member every second: the cap is reached at both sizes.
    assert max(channels[40]) == CAP, channels
    # Descriptors: the same at 40 members as at 20, give or take a few
    # connections the members opened and have not yet closed.
    assert min(fds[40]) <= max(fds[20]) + 6, fds


def test_with_datagrams_the_default_descriptors_stay_flat(tmp_path: Path) -> None:
    """The product default (``datagrams: true``): probes, pushes and in-sync pulls
    go by datagram, so the daemon's descriptors do not follow the member count
    either (only sync sessions with news and joins use channels)."""
    fds, channels = _swarms_and_daemons(tmp_path, datagrams=True)
    for n in SIZES:
        assert max(channels[n]) <= CAP, (n, channels[n])
    assert min(fds[40]) <= max(fds[20]) + 6, fds


def test_two_swarm_processes_take_each_others_datagrams(tmp_path: Path) -> None:
    """Twenty-first session: the members of one swarm process send their
    datagrams to another process from one address, so the swarm raises the
    server's per-address budget. It did so by changing a module constant the
    server had stopped reading (its buckets took their budget as arguments):
    at 300 members in two processes, 3,400 datagrams were refused "rate
    limited" in 30 s, calls failed and members suspected each other (224 of
    300 live in the first member's view), and one smegd in that mesh moved
    15 KB/s idle, its calls falling back to new TLS connections."""
    from smegmesh.testbed.swarm import read_stats

    d = tmp_path / "swarm"
    n = 300
    procs = start_swarm(d, n, 2, free_port_run(2, "0.0.0.0"))
    try:
        wait_until((d / "token").exists, 120, 0.2, "the swarm to start")
        time.sleep(12)  # every member probes and pushes across the processes for a while
        stats = read_stats(d)
        assert len(stats) == 2
        refused = [s.get("datagram_refused", {}).get("rate limited", 0) for s in stats]
        assert refused == [0, 0], stats
        assert all(s["live_seen_by_first"] == n for s in stats), stats
    finally:
        stop_swarm(procs)
