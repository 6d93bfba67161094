"""net/netlink.py: pyroute2 calls off the event loop, one socket per thread."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from smegmesh.net.netlink import PerThread, off_loop


def test_off_loop_runs_in_another_thread_and_raises_what_the_call_raised() -> None:
    async def main() -> int:  # in the thread of a running loop, as smegd is
        return off_loop(threading.get_ident)

    assert asyncio.run(main()) != threading.get_ident()

    def fails(why: str) -> None:
        raise OSError(why)

    with pytest.raises(OSError, match="no netlink"):
        off_loop(fails, "no netlink")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        off_loop(threading.Event().wait, 2.0, timeout=0.05)
    # the caller is not held until the call ends (a pool's `with` waited for it)
    assert time.monotonic() - t0 < 1.0


def test_one_object_per_thread_the_previous_closed() -> None:
    made: list[int] = []
    closed: list[int] = []

    def make() -> int:
        made.append(threading.get_ident())
        return made[-1]

    def close(obj: int) -> None:
        closed.append(obj)
        raise OSError("close errors are ignored")

    held = PerThread(make, close)
    me = threading.get_ident()
    assert held.get() == me and held.get() == me and made == [me]
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(held.get).result()
    assert other != me and closed == [me]
    held.close()
    held.close()
    assert closed == [me, other]
    assert held.get() == me and made == [me, other, me]
