"""What a burst frees in glibc's heap goes back to the OS while smegd runs (daemon/malloc).

In a founded swarm of 3,000 members one smegd held 17.6 MB free inside its
heap after the join; RSS was 142-150 MB against the 150 MB target. The
daemon trimmed only once, after start-up.
"""

from __future__ import annotations

import asyncio
import ctypes
from pathlib import Path

import pytest

from daemon_inproc import running_daemon, until
from smegmesh.daemon.malloc import HeapTrimmer, glibc_free_bytes, glibc_trim


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])


def test_a_trim_gives_back_the_free_pages_inside_the_heap() -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 * 1024  # below the mmap threshold: from the heap
    blocks = [libc.malloc(size) for _ in range(400)]  # 25 MB
    assert all(blocks)
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in blocks[:-1]:  # the last one holds the top: glibc cannot shrink the heap
        libc.free(b)
    try:
        free = glibc_free_bytes()
        if free is None:
            pytest.skip("glibc without mallinfo2")
        assert free >= 20 * 1024 * 1024
        before = _rss_kb()
        glibc_trim()
        after = _rss_kb()
        assert before - after >= 15 * 1024, (before, after)
    finally:
        libc.free(blocks[-1])


def test_the_trimmer_looks_every_interval_and_trims_only_a_heap_with_room() -> None:
    free = [0]
    trims: list[float] = []
    t = HeapTrimmer(lambda: free[0], lambda: trims.append(1.0), interval_s=30, min_free=4 << 20)
    assert not t.tick(0.0)  # looked: too little free
    free[0] = 10 << 20
    assert not t.tick(29.9)  # not due
    assert t.tick(30.0) and t.trims == 1
    assert not t.tick(45.0)
    free[0] = 1 << 20
    assert not t.tick(60.0) and t.trims == 1
    # no mallinfo2 (an older glibc): trim when due, as at start-up
    blind = HeapTrimmer(lambda: None, lambda: trims.append(2.0), interval_s=30)
    assert blind.tick(0.0) and not blind.tick(10.0) and blind.tick(30.0)
    assert trims == [1.0, 2.0, 2.0]


def test_a_running_daemon_looks_at_its_heap(tmp_path: Path) -> None:
    """The persist pass (every second) ticks the daemon's trimmer."""

    async def main() -> None:
        async with running_daemon(tmp_path) as d:
            looked: list[int] = []
            d.heap = HeapTrimmer(lambda: looked.append(1) or None, lambda: None, interval_s=0)
            await until(lambda: len(looked) >= 2, timeout=10)
            assert d.heap.trims >= 2

    asyncio.run(main())
