"""A member's endpoint name holds none of the threads the daemon shares.

Found by the review of late endpoint names: the control plane connected to a
member's named endpoint with ``asyncio.open_connection``, whose lookup runs in
the event loop's default thread pool (6 threads on 2 cores), the pool that
route computation, state writes and local API work use too. A member whose
nameserver stalls (its own, or any it names) held those threads for as long
as the lookups took, one per name. Names now go through a resolver of the
daemon's own, with threads of its own and a bound on lookups in flight
(``wg.resolver.EndpointResolver.resolve_async``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from daemon_inproc import running_daemon
from smegmesh.daemon.transport import RpcError


def test_a_members_stalled_names_hold_no_thread_of_the_daemons(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real = socket.getaddrinfo

    def stalled(host: Any, *a: Any, **kw: Any) -> Any:
        if isinstance(host, str) and host.endswith(".stalled.test"):
            release.wait(10)
            raise socket.gaierror(socket.EAI_NONAME, "stalled")
        return real(host, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", stalled)

    async def main() -> None:
        async with running_daemon(root) as d:
            calls = [
                asyncio.create_task(
                    d.rpc.call(f"m{i}.stalled.test:4000", bytes(32), b"x", timeout=2.0)
                )
                for i in range(20)
            ]
            await asyncio.sleep(0.3)  # every call is connecting, its name looked up
            t0 = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, lambda: None)
            waited = time.monotonic() - t0
            release.set()
            failed = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(e, RpcError) for e in failed), failed
            # before: 10 s, until the stalled lookups gave up
            assert waited < 1.0, f"the shared pool was busy for {waited:.1f} s"

    asyncio.run(main())
