"""The daemon side of direct sessions (daemon/direct.py): WhereAmI answers, the loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from nat_nodes import IDS, MESH
from smegmesh.daemon import direct as ddirect
from smegmesh.daemon.direct import DirectManager


async def _until(cond: Any, deadline_s: float = 10.0) -> None:
    """Wait until ``cond()`` holds (fails the test after ``deadline_s``)."""
    end = asyncio.get_running_loop().time() + deadline_s
    while not cond():
        assert asyncio.get_running_loop().time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


def _peer_node(read: Any) -> Any:
    """A node answering WhereAmI: one WireGuard worker thread, ``read`` its status reads."""
    return SimpleNamespace(
        meshes={},
        config=None,
        _wg_pool=concurrent.futures.ThreadPoolExecutor(1),
        backend=SimpleNamespace(read=read),
    )


def test_concurrent_whereami_calls_share_one_status_read() -> None:
    """docs/NAT.md: "at most one status read per mesh per 2 s". The cache was
    written only once a read finished: every call while it was stale started
    a read of its own on the one WireGuard thread (16 calls, 16 full reads)."""
    reads: list[float] = []
    lock = threading.Lock()
    peer_key = IDS[3].wg_public_key

    def read(ifname: str) -> Any:
        with lock:
            reads.append(time.monotonic())
        time.sleep(0.05)  # a full dump of a big interface
        p = SimpleNamespace(last_handshake=1.0, endpoint="192.0.2.7:51820")
        return SimpleNamespace(peers={peer_key: p})

    m = DirectManager(_peer_node(read), 8)
    rt = SimpleNamespace(mesh_id=MESH, ifname="smeg0")

    async def burst() -> list[str | None]:
        # 17 calls in flight at once, and one caller gives up (its cancel
        # must not cancel the read the others wait for)
        gone = asyncio.ensure_future(m.observed(rt, peer_key))
        calls = [m.observed(rt, IDS[i % 8].wg_public_key) for i in range(1, 16)]
        await asyncio.sleep(0)
        gone.cancel()
        return await asyncio.gather(m.observed(rt, peer_key), *calls)

    answers = asyncio.run(burst())
    assert len(reads) == 1, f"{len(reads)} status reads for 17 concurrent WhereAmI calls"
    assert answers[0] == "192.0.2.7:51820" and answers[1:3] == [None, None]
    assert answers[3] == "192.0.2.7:51820"  # IDS[3]


def test_whereami_status_is_read_again_after_the_cache_time_and_then_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The status read is kept ``STATUS_CACHE_S`` and then dropped, whether or
    not another call comes (it was kept for every mesh ever asked about, a mesh
    left included, and only the direct loop, which does not run without
    ``directPeers``, would have cleaned it)."""
    monkeypatch.setattr(ddirect, "STATUS_CACHE_S", 0.2)
    reads: list[str] = []

    def read(ifname: str) -> Any:
        reads.append(ifname)
        return SimpleNamespace(peers={})

    m = DirectManager(_peer_node(read), 0)  # a peer: directPeers 0
    rt = SimpleNamespace(mesh_id=MESH, ifname="smeg0")

    async def go() -> None:
        assert await m.observed(rt, IDS[1].wg_public_key) is None
        assert await m.observed(rt, IDS[2].wg_public_key) is None
        assert reads == ["smeg0"]  # within the cache time: one read
        await _until(lambda: MESH not in m._status_cache)
        assert await m.observed(rt, IDS[1].wg_public_key) is None
        assert reads == ["smeg0", "smeg0"]
        await _until(lambda: not m._status_cache)

    asyncio.run(go())
