"""Free ports for daemons under test, safe when tests run in parallel (pytest-xdist).

Binding port 0 and releasing it hands out a port from the kernel's ephemeral
range: an outgoing connection of any process may take it before the daemon
binds it, and two parallel test workers may both be handed the same one.
Instead each worker owns its own block of ports below the ephemeral range
(``PYTEST_XDIST_WORKER`` ``gwN`` -> block N), walks it round-robin from a random
offset (two test runs on one machine rarely meet) and hands out a port only if
it can bind it right now (TCP, and UDP too if asked).
"""

from __future__ import annotations

import itertools
import os
import random
import re
import socket
from collections import deque

__all__ = ["free_port", "free_port_run", "free_udp_tcp_port", "worker_index"]

#: First port of worker 0's block; every block stays below 32768 (Linux's
#: ephemeral range starts there by default).
BASE = 20000
BLOCK = 600
MAX_WORKERS = (32768 - BASE) // BLOCK

_counter = itertools.count(random.randrange(BLOCK))
#: Ports handed out lately by this process: a port is free until its daemon
#: binds it, so without this a run handed to one process (the swarm's base
#: port and the ones after it) could be handed out again before it is bound.
_recent: deque[int] = deque(maxlen=BLOCK // 2)


def worker_index() -> int:
    """This pytest-xdist worker's number (``gw3`` -> 3); 0 outside xdist."""
    m = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    return int(m.group(1)) % MAX_WORKERS if m else 0


def _bindable(host: str, port: int, kind: int) -> bool:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "::1", *, udp: bool = False) -> int:
    """A port of this worker's block free on ``host`` right now (TCP; and UDP if ``udp``)."""
    return free_port_run(1, host, udp=udp)


def free_port_run(n: int, host: str = "::1", *, udp: bool = False) -> int:
    """The first of ``n`` consecutive ports of this worker's block all free on ``host`` now.

    For a process that listens on a base port and the ones after it (the swarm's
    servers); ``n = 1`` is :func:`free_port`.
    """
    if not 1 <= n <= BLOCK:
        raise ValueError(f"a run of 1..{BLOCK} ports, not {n}")
    first = BASE + worker_index() * BLOCK
    for _ in range(BLOCK):
        port = first + next(_counter) % (BLOCK - n + 1)
        run = range(port, port + n)
        if not any(p in _recent for p in run) and all(
            _bindable(host, p, socket.SOCK_STREAM)
            and (not udp or _bindable(host, p, socket.SOCK_DGRAM))
            for p in run
        ):
            _recent.extend(run)
            return port
    raise RuntimeError(f"no {n} free ports in a row in {first}..{first + BLOCK - 1} on {host}")


def free_udp_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` for both TCP and UDP right now (for a DNS server)."""
    return free_port(host, udp=True)
