"""Crash-safe state files (daemon/persist.py) and the order of a mesh's two files."""

from __future__ import annotations

import asyncio
import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from daemon_inproc import running_daemon
from smegmesh.daemon import persist, store
from smegmesh.daemon.persist import PersistError, atomic_write, remove_stale_temps
from smegmesh.daemon.restore import saved_mesh_files


def _fail(err: int) -> Any:
    def fail(*a: Any, **kw: Any) -> Any:
        raise OSError(err, os.strerror(err))

    return fail


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EDQUOT])
def test_no_room_for_the_temporary_file_is_a_persist_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    """A full disk (no free inode), a file system remounted read-only, a quota:
    creating the temporary file failed with a bare OSError, which no caller
    catches (they catch PersistError): the persist loop died for good."""
    (tmp_path / "m.state").write_bytes(b"old")
    monkeypatch.setattr(tempfile, "mkstemp", _fail(err))
    with pytest.raises(PersistError, match=r"m\.state") as e:
        atomic_write(tmp_path / "m.state", b"new")
    assert e.value.errno == err
    assert (tmp_path / "m.state").read_bytes() == b"old"


def test_a_failed_sync_of_the_directory_is_a_persist_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_dir_open(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if flags & os.O_DIRECTORY:
            raise OSError(errno.EIO, "Input/output error")
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", no_dir_open)
    with pytest.raises(PersistError, match=r"m\.state"):
        atomic_write(tmp_path / "m.state", b"new")


def test_a_failed_write_leaves_the_old_version_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "m.state").write_bytes(b"old")
    monkeypatch.setattr(persist.os, "write", _fail(errno.ENOSPC))
    with pytest.raises(PersistError, match="No space left"):
        atomic_write(tmp_path / "m.state", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.state"]
    assert (tmp_path / "m.state").read_bytes() == b"old"


def test_stale_temporary_files_are_removed_and_nothing_else(tmp_path: Path) -> None:
    """A ``kill -9`` in the middle of a write leaves its temporary file: one per
    crash, for ever (the names are random)."""
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    stale = [meshes / ".m.state.ab_c1234.tmp", tmp_path / ".identity.key.x9y8z7w6.tmp"]
    kept = [meshes / "m.state", meshes / "m.json", tmp_path / ".notes.tmp", meshes / "a.tmp"]
    for p in stale + kept:
        p.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 2
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_the_daemon_removes_stale_temporary_files_at_start(root: Path) -> None:
    meshes = root / "state" / "meshes"
    meshes.mkdir(parents=True)
    stale = meshes / ".m.state.ab_c1234.tmp"
    stale.write_bytes(b"half a state")

    async def main() -> None:
        async with running_daemon(root):
            pass

    asyncio.run(main())
    assert not stale.exists()


class _Crash(BaseException):
    """The process dies here (``kill -9``, a power cut)."""


def test_a_crash_between_a_new_meshs_two_files_restores_no_empty_mesh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The options file was written first: a crash before the state file left a
    mesh that was restored with no state at all (no founding record, no
    admission: a member that cannot take part). The state goes first: a crash
    in between leaves no mesh (its command had not answered yet)."""
    real, wrote = store.atomic_write, []

    def crash_after_one(path: Path, data: bytes, **kw: Any) -> None:
        if wrote:
            raise _Crash
        wrote.append(path)
        real(path, data, **kw)

    monkeypatch.setattr(store, "atomic_write", crash_after_one)
    meta = {"mesh_id": "amber-falcon-river-k7q2", "opts": {}, "listen_port": 51820}
    with pytest.raises(_Crash):
        store.write_mesh_files(tmp_path / "meshes", meta["mesh_id"], meta, b"\x90")
    assert saved_mesh_files(tmp_path / "meshes") == []  # no mesh to restore
