"""Liveness under CPU starvation (issue 14): a slow member sets off no storm of suspicion.

One daemon of five is duty-cycled with SIGSTOP / SIGCONT (stopped 1.5 s of
every 2 s: it runs a quarter of the time, in bursts, like a process on a
starved CPU). Its timers fire late and the answers it waits for arrive while
it is stopped. The others may suspect (and even prune) the slow member: that
is what it looks like from outside; the storm would be the slow member
suspecting and pruning the healthy ones, and their refutations.

What this does *not* test: local health (Lifeguard's multiplier in
``core/liveness.py``). The test passes with the multiplier forced to 1,
measured: when a stopped process resumes, asyncio polls the sockets before it
runs the due timers, so the queued acks are handled before the probe
timeouts and the slow member's own probes do not fail. Local health is
exercised where its input really happens, lost or late answers: the unit
tests of ``core/liveness.py`` and the simulator's loss scenarios.

Asserted: no healthy member is ever pruned by anyone (including the slow
one), the mesh settles by itself afterwards (all five live everywhere), and
the indirect probes (``PingReq``) the healthy members send stay bounded.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import httpx

from smegmesh.testbed.loopback import Smegd, cluster, create_mesh, free_port, wait_converged

_PRUNED = re.compile(r"member (\S+?)… .*pruned \(unreachable\)")
STOP_S, RUN_S, CYCLES = 1.5, 0.5, 6


def _pruned_prefixes(d: Smegd) -> list[str]:
    return _PRUNED.findall(d.log())


def _pingreqs_sent(d: Smegd) -> float:
    port = d.extra["metricsListen"].rsplit(":", 1)[1]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("smegd_rpc_sent_total{") and 'type="PingReq"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_starved_member_prunes_nobody_and_is_not_a_storm() -> None:
    with cluster(0) as c:
        for _ in range(5):
            port = free_port("127.0.0.1")
            c.add(1, wait=False, extra={"metricsListen": f"127.0.0.1:{port}"})
        for d in c.daemons:
            d.wait_ready(240)  # five Pythons starting at once on a loaded 2-core box
        slow, *healthy = c.daemons
        mesh_id = create_mesh(slow, healthy)
        keys = {d.name: d.self_key(mesh_id)[:8] for d in c.daemons}
        healthy_prefixes = {keys[d.name] for d in healthy}
        before = {d.name: _pingreqs_sent(d) for d in healthy}
        assert slow.proc is not None
        pid = slow.proc.pid
        t0 = time.monotonic()
        stop = threading.Event()

        def duty_cycle() -> None:
            try:
                for _ in range(CYCLES):
                    os.kill(pid, signal.SIGSTOP)
                    if stop.wait(STOP_S):
                        return
                    os.kill(pid, signal.SIGCONT)
                    if stop.wait(RUN_S):
                        return
            finally:
                os.kill(pid, signal.SIGCONT)

        th = threading.Thread(target=duty_cycle)
        th.start()
        try:
            th.join(CYCLES * (STOP_S + RUN_S) + 30)
        finally:
            stop.set()
            th.join()
        window = time.monotonic() - t0
        # the mesh settles by itself: all five live everywhere again
        wait_converged(c.daemons, mesh_id, timeout=60)
        wrongly = {
            d.name: [p for p in _pruned_prefixes(d) if p in healthy_prefixes] for d in c.daemons
        }
        assert not any(wrongly.values()), f"healthy members pruned: {wrongly}"
        sent = sum(_pingreqs_sent(d) - before[d.name] for d in healthy)
        # each healthy member probes once a second; an indirect round is 3 PingReqs.
        # Suspecting the slow member on most of its probes of it is expected; a storm
        # (everyone suspecting everyone) would be ~3 per probe of every member.
        per_member_s = sent / len(healthy) / window
        assert per_member_s <= 1.5, f"{sent} PingReqs in {window:.0f} s from {len(healthy)} members"
