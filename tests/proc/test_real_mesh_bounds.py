"""The real-daemon mesh harness in a small configuration (issue 14): bounded connections.

Eight ``smegd`` on loopback (memory backend) form one mesh with joins arriving
four at a time through one invitation, then probe each other for a while
(heartbeat 1 s: two probes a second each, so every member soon has called
every other). Each daemon's TCP connections are classified from ``/proc``
(its socket inodes against ``/proc/net/tcp6``): outgoing (to another
daemon's control port) and incoming (on its own). Asserted, for every daemon,
at every sample, and again after a member was killed and restarted: at most
one outgoing channel per other member and never more than the channel cap
(``maxChannels``, set to 4 where the config has it, else the transport's
default), at most one incoming connection per other member, and no socket
left in CLOSE_WAIT (a channel to the dead incarnation that was never closed).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

from smegmesh.daemon.config import Config
from smegmesh.daemon.transport import MAX_CHANNELS
from smegmesh.testbed.loopback import Smegd, cluster, wait_converged, wait_until

N = 8
JOIN_BATCH = 4
WATCH_S = 8.0
TIMINGS = {"heartbeatInterval": 1, "syncInterval": 1, "pullInterval": 3, "timeout": 3}
_HAS_CAP = any(f.alias == "maxChannels" for f in Config.model_fields.values())
CAP = 4 if _HAS_CAP else MAX_CHANNELS
CLOSE_WAIT = "08"
#: Starting N Pythons at once on a loaded 2-core box takes long: a generous deadline.
START_S = 240


def _tcp6() -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) of every TCP socket over IPv6."""
    out = {}
    with open("/proc/net/tcp6") as f:
        next(f)
        for line in f:
            p = line.split()
            lport, rport = (int(p[i].rsplit(":", 1)[1], 16) for i in (1, 2))
            out[int(p[9])] = (lport, rport, p[3])
    return out


def _conns(d: Smegd, ports: set[int], table: dict[int, tuple[int, int, str]]) -> dict[str, int]:
    assert d.proc is not None
    out = {"out": 0, "in": 0, "close_wait": 0}
    fd_dir = f"/proc/{d.proc.pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            link = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if not link.startswith("socket:["):
            continue
        entry = table.get(int(link[8:-1]))
        if entry is None:
            continue
        lport, rport, state = entry
        if state == CLOSE_WAIT:
            out["close_wait"] += 1
        elif lport == d.grpc_port and rport:
            out["in"] += 1
        elif rport in ports and rport != d.grpc_port:
            out["out"] += 1
    return out


def _check(ds: list[Smegd], seconds: float) -> dict[str, int]:
    """Sample every daemon for ``seconds``; the maxima seen."""
    ports = {d.grpc_port for d in ds}
    worst = {"out": 0, "in": 0, "close_wait": 0}
    end = time.monotonic() + seconds
    while True:
        table = _tcp6()
        for d in ds:
            c = _conns(d, ports, table)
            assert c["out"] <= min(CAP, N - 1), (d.name, c)
            assert c["in"] <= N - 1, (d.name, c)
            for k in worst:
                worst[k] = max(worst[k], c[k])
        if time.monotonic() >= end:
            return worst
        time.sleep(0.5)


def test_eight_daemons_form_with_batched_joins_and_keep_connections_bounded() -> None:
    extra = dict(TIMINGS, **({"maxChannels": CAP} if _HAS_CAP else {}))
    with cluster(0) as c:
        for d in c.add(N, wait=False, extra=extra):
            d.wait_ready(START_S)
        founder, *joiners = c.daemons
        mesh_id = founder.api("POST", "/v1/meshes")["mesh_id"]
        tok = founder.api(
            "POST", f"/v1/meshes/{mesh_id}/invites", json={"ttl_s": 600, "uses": N - 1}
        )["token"]

        def join(d: Smegd) -> None:
            d.api("POST", "/v1/join", json={"token": tok}, timeout=90)

        with ThreadPoolExecutor(JOIN_BATCH) as pool:
            list(pool.map(join, joiners))
        wait_converged(c.daemons, mesh_id, timeout=60)
        worst = _check(c.daemons, WATCH_S)
        assert worst["out"] >= 2, worst  # they did probe each other over real channels

        # a member dies and comes back: connections to its old incarnation are closed
        victim = c.daemons[3]
        victim.kill9()
        victim.restart()
        wait_converged(c.daemons, mesh_id, timeout=60)
        worst = _check(c.daemons, WATCH_S)

        def no_close_wait() -> bool:
            return _check(c.daemons, 0)["close_wait"] == 0

        wait_until(no_close_wait, 20, 0.5, "no connection left half-closed")
