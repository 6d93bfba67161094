"""The persist policy and the mesh files (daemon/store.py)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from daemon_inproc import until
from smegmesh.daemon import store
from smegmesh.daemon.event_bus import EventBus
from smegmesh.daemon.malloc import HeapTrimmer
from smegmesh.daemon.ratelog import RateLog
from smegmesh.daemon.store import LEARNED_SAVE_INTERVAL_S, save_due, write_mesh


def rt(**kw: Any) -> Any:
    base = {
        "dirty_disk": True,
        "joining": False,
        "save_soon": False,
        "saved_at": 100.0,
        "save_error": None,
    }
    return SimpleNamespace(**{**base, **kw})


def test_learned_state_is_written_at_most_every_interval() -> None:
    """Issue 14: at 100 daemons on 2 cores, writing the state every second while
    the mesh formed took 15 % of a daemon's CPU (py-spy)."""
    assert not save_due(rt(), 101.0)
    assert not save_due(rt(), 100.0 + LEARNED_SAVE_INTERVAL_S - 0.1)
    assert save_due(rt(), 100.0 + LEARNED_SAVE_INTERVAL_S)
    assert save_due(rt(saved_at=None), 1.0)  # never written: at once


def test_a_local_commands_change_is_written_at_the_next_tick() -> None:
    assert save_due(rt(save_soon=True), 100.5)


def test_nothing_to_write_or_a_join_in_progress_is_not_written() -> None:
    assert not save_due(rt(dirty_disk=False, save_soon=True), 1e9)
    assert not save_due(rt(joining=True, save_soon=True), 1e9)


def test_unchanged_meta_is_not_rewritten(tmp_path: Path, monkeypatch: Any) -> None:
    wrote: list[str] = []
    real = store.atomic_write

    def spy(path: Path, data: bytes, **kw: Any) -> None:
        wrote.append(Path(path).name)
        real(path, data, **kw)

    monkeypatch.setattr(store, "atomic_write", spy)
    meta = {"mesh_id": "m", "opts": {}, "listen_port": 51820}
    write_mesh(tmp_path, "m", meta, [])
    write_mesh(tmp_path, "m", meta, [])
    write_mesh(tmp_path, "m", {**meta, "listen_port": 51821}, [])
    assert wrote == ["m.state", "m.json", "m.state", "m.state", "m.json"]
    assert json.loads((tmp_path / "m.json").read_text())["listen_port"] == 51821


def test_the_state_file_is_the_items_encodings_and_each_item_is_encoded_once(
    monkeypatch: Any,
) -> None:
    """Issue 14: at 100 daemons the persist loop re-encoded every record (with its
    certificate chain) on every write: a quarter of an idle daemon's CPU while
    changes arrived (py-spy). Items are immutable: each is encoded once."""
    import random

    import msgpack

    from smegmesh.core import paging
    from smegmesh.core.codec import encode_item
    from smegmesh.core.identity import NodeIdentity
    from smegmesh.core.memo import ItemMemo
    from smegmesh.core.record import NodeRecord

    ids = [NodeIdentity.from_seed(random.Random(i).randbytes(32)) for i in range(5)]
    recs = [NodeRecord.create(i, "m-0001", version=1, now_ms=1) for i in ids]
    memo = ItemMemo()
    want = msgpack.packb([encode_item(r) for r in recs], use_bin_type=True)
    assert paging.encode_items(recs, memo) == want
    calls: list[object] = []
    real = paging.encode_item
    monkeypatch.setattr(paging, "encode_item", lambda i: calls.append(i) or real(i))
    newer = NodeRecord.create(ids[0], "m-0001", version=2, now_ms=2)
    assert paging.encode_items([newer, *recs[1:]], memo) == msgpack.packb(
        [encode_item(newer), *(encode_item(r) for r in recs[1:])], use_bin_type=True
    )
    assert calls == [newer]  # only the new item was encoded
    assert paging.encode_items([], memo) == msgpack.packb([])


def test_a_write_never_overtakes_a_later_one(tmp_path: Path, monkeypatch: Any) -> None:
    """Writes run in a thread. An admission's write (on the reply path) could start
    while the persist tick's older snapshot was still being written, and that
    older one could land last: the admission lost on disk with nothing left
    dirty to write it again. The same held for the final write at stop()."""
    import asyncio
    import threading

    from smegmesh.daemon.store import StoreOps

    first_writing, release = threading.Event(), threading.Event()
    real = store.write_mesh_files
    order: list[bytes] = []

    def slow_first(d: Path, mesh_id: str, meta: dict[str, Any], state: bytes) -> None:
        if not order:
            order.append(state)
            first_writing.set()
            release.wait(10)
        else:
            order.append(state)
        real(d, mesh_id, meta, state)

    monkeypatch.setattr(store, "write_mesh_files", slow_first)
    items: list[Any] = []
    mesh = SimpleNamespace(all_items=lambda: list(items), memo=None)
    r = rt(
        mesh_id="m",
        opts={},
        listen_port=1,
        node=SimpleNamespace(mesh=mesh),
        save_lock=asyncio.Lock(),
    )
    ops = StoreOps.__new__(StoreOps)
    ops.state_dir = tmp_path  # type: ignore[attr-defined]
    ops.meshes = {"m": r}  # type: ignore[attr-defined]

    async def main() -> None:
        older = asyncio.create_task(ops._save_mesh_off_loop(r))
        await asyncio.to_thread(first_writing.wait, 10)
        items.append({"an": "admission"})  # the state moved on: a newer snapshot
        r.dirty_disk = True
        newer = asyncio.create_task(ops._save_mesh_off_loop(r))
        await asyncio.sleep(0.2)  # the newer write, unordered, would finish now
        release.set()
        await asyncio.gather(older, newer)

    monkeypatch.setattr(store, "encode_items", lambda its, memo: json.dumps(its).encode())
    asyncio.run(main())
    assert (tmp_path / "meshes" / "m.state").read_bytes() == json.dumps(items).encode()


def store_ops(state_dir: Path, meshes: dict[str, Any]) -> Any:
    """A ``StoreOps`` with what its persist loop needs of the daemon."""
    ops = store.StoreOps.__new__(store.StoreOps)
    ops.state_dir = state_dir  # type: ignore[attr-defined]
    ops.meshes = meshes  # type: ignore[attr-defined]
    ops.config = SimpleNamespace(gc_horizon=86400)  # type: ignore[attr-defined]
    smegd = logging.getLogger("smegd")
    ops.dropped_items = RateLog(smegd, "dropped")  # type: ignore[attr-defined]
    ops.refuted_prunes = RateLog(smegd, "refuted")  # type: ignore[attr-defined]
    ops.refused_joins = RateLog(smegd, "refused")  # type: ignore[attr-defined]
    ops.save_failures = RateLog(  # type: ignore[attr-defined]
        smegd, "failed", unit="writes", prep="of mesh", level=logging.ERROR
    )
    ops.member_events = SimpleNamespace(sweep=lambda *a: None)  # type: ignore[attr-defined]
    ops.events = EventBus()  # type: ignore[attr-defined]
    ops.heap = HeapTrimmer()  # type: ignore[attr-defined]
    return ops


def test_the_persist_loop_outlives_a_full_disk_and_writes_once_it_is_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk (ENOSPC on the temporary file) ended the persist loop for good:
    nothing was written again once the disk was freed, and the change it failed
    to write counted as written (its flags were cleared before the write)."""
    monkeypatch.setattr(store, "PERSIST_TICK_S", 0.01, raising=False)
    real, tries, disk = tempfile.mkstemp, [], {"full": True}

    def mkstemp(*a: Any, **kw: Any) -> Any:
        tries.append(1)
        if disk["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    mesh = SimpleNamespace(all_items=lambda: [], memo=None, gc=lambda now, horizon: False)
    r = rt(
        mesh_id="m",
        opts={},
        listen_port=1,
        node=SimpleNamespace(mesh=mesh),
        save_lock=asyncio.Lock(),
        save_soon=True,
        saved_at=None,
    )
    ops = store_ops(tmp_path, {"m": r})
    saved = tmp_path / "meshes" / "m.json"  # the second of the two files

    async def main() -> None:
        task = asyncio.create_task(ops._persist_loop())
        try:
            await until(lambda: len(tries) >= 3 or task.done())
            assert not task.done(), f"the persist loop ended: {task.exception()!r}"
            assert r.dirty_disk and r.save_soon, "a change not written counts as written"
            disk["full"] = False
            await until(lambda: (saved.exists() and r.save_error is None) or task.done())
            assert not task.done(), f"the persist loop ended: {task.exception()!r}"
            assert not r.dirty_disk
        finally:
            task.cancel()

    with caplog.at_level(logging.INFO, "smegd"):
        asyncio.run(main())
    errors = [x.getMessage() for x in caplog.records if x.levelno >= logging.ERROR]
    assert len(errors) == 1, errors  # then summarised once a minute, not once a second
    assert "m.state: No space left on device" in errors[0]
    assert any("mesh m: saved again" in x.getMessage() for x in caplog.records)


def test_a_pass_that_fails_does_not_end_the_persist_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Any error in a pass (here the GC's) ended the loop: nothing was written again."""
    monkeypatch.setattr(store, "PERSIST_TICK_S", 0.01, raising=False)
    passes: list[int] = []

    def gc(now: int, horizon: int) -> bool:
        passes.append(1)
        if len(passes) == 1:
            raise RuntimeError("a bug")
        return False

    mesh = SimpleNamespace(all_items=lambda: [], memo=None, gc=gc)
    r = rt(
        mesh_id="m",
        opts={},
        listen_port=1,
        node=SimpleNamespace(mesh=mesh),
        save_lock=asyncio.Lock(),
        save_soon=True,
    )
    ops = store_ops(tmp_path, {"m": r})

    async def main() -> None:
        task = asyncio.create_task(ops._persist_loop())
        try:
            await until(lambda: (tmp_path / "meshes" / "m.json").exists() or task.done())
            assert not task.done(), f"the persist loop ended: {task.exception()!r}"
        finally:
            task.cancel()

    with caplog.at_level(logging.INFO, "smegd"):
        asyncio.run(main())
    assert any("persist pass failed" in x.getMessage() for x in caplog.records)
