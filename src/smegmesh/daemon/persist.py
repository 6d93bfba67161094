"""Crash-safe files in the state directory.

Every write goes to a temporary file in the same directory, is fsync'd, then
renamed over the target, and the directory is fsync'd: after ``kill -9`` or a
power cut the file is either the old or the new version, never half-written.
A full disk raises ``PersistError`` with a message naming the file, and the
previous version stays intact.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


class PersistError(OSError):
    """A state file could not be written (disk full, permissions...)."""


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    path = Path(path)
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
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise PersistError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
