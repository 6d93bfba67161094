"""Crash-safe files in the state directory.

Every write goes to a temporary file in the same directory, is fsync'd, then
renamed over the target, and the directory is fsync'd: after ``kill -9`` or a
power cut the file is either the old or the new version, never half-written.
Any failure on the way (a full disk, a read-only file system, a quota, even
when creating the temporary file or syncing the directory) raises
``PersistError`` with a message naming the file, and the previous version
stays intact. A temporary file a crash left behind is removed at the next
start (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from pathlib import Path

log = logging.getLogger("smegd")

#: ``tempfile.mkstemp(prefix=".NAME.", suffix=".tmp")``: ``.NAME.`` + 8 random characters + ``.tmp``
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


class PersistError(OSError):
    """A state file could not be written (disk full, permissions...).

    ``strerror``: one line naming the file and the reason.
    """


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    path = Path(path)
    try:
        _write_and_rename(path, data, mode)
        _fsync_dir(path.parent)
    except OSError as e:
        raise PersistError(e.errno, f"cannot write {path}: {e.strerror or e}") from e


def _write_and_rename(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fsync_dir(d: Path) -> None:
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def remove_stale_temps(root: Path) -> int:
    """Remove the temporary files of writes a crash interrupted, under ``root``.

    Called at start, under the state directory's lock: no write is under way.
    Only names :func:`atomic_write` makes; how many were removed.
    """
    removed = 0
    for p in sorted(Path(root).rglob(".*.tmp")):
        if not _TEMP_NAME.fullmatch(p.name) or p.is_symlink() or not p.is_file():
            continue
        try:
            p.unlink()
        except OSError as e:
            log.warning("cannot remove %s, left by an interrupted write: %s", p, e)
        else:
            removed += 1
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write in %s", removed, root)
    return removed
