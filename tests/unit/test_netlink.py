"""net/netlink.py: pyroute2 calls off the event loop, one socket per thread."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
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


def _fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter (its own ``sys.modules``) and return its stdout."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def test_the_classes_smegd_uses_come_without_the_rest_of_pyroute2() -> None:
    """pyroute2's package ``__init__`` imports all of the library (NDB with
    sqlite3, IPDB, 9P, ...): 8.6 MB of a daemon's RSS it never uses."""
    got = _fresh_python(
        """
        import sys
        from smegmesh.net.netlink import iproute_class, wireguard_class
        ipr, wg = iproute_class(), wireguard_class()
        print(ipr.__name__, wg.__name__, ipr.__module__)
        unused = ("pyroute2.ndb", "pyroute2.ipdb", "pyroute2.plan9", "sqlite3", "pyroute2.nslink")
        print(sorted(m for m in unused if m in sys.modules))
        import pyroute2  # code that wants the whole package still gets it
        print(pyroute2.IPRoute is ipr, pyroute2.NDB.__name__, "pyroute2.ndb" in sys.modules)
        """
    )
    assert got.splitlines() == [
        "IPRoute WireGuard pyroute2.iproute.linux",
        "[]",
        "True NDB True",
    ]


def test_a_whole_pyroute2_imported_first_is_the_one_used() -> None:
    got = _fresh_python(
        """
        import pyroute2
        from smegmesh.net.netlink import iproute_class, wireguard_class
        print(iproute_class() is pyroute2.IPRoute, wireguard_class() is pyroute2.WireGuard)
        """
    )
    assert got == "True True"
