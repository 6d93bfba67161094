"""smegctl writing to a pipe its reader closed ends as ``git``, ``ip`` and ``wg`` do.

Found by review: ``smegctl status | head -1`` exited 1 (Click's own handling of
EPIPE), which ``set -o pipefail`` scripts take for a failed command, and Python
may print a ``BrokenPipeError`` from the flush at exit. The C tools die of
SIGPIPE, silently: status 141 under ``pipefail`` (``-13`` to ``subprocess``),
nothing on stderr.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from api_fake import FakeNodeService, served_unix

SMEGCTL = [sys.executable, "-m", "smegmesh.cli.main"]
#: As a user runs it. With PYTHONUNBUFFERED, CPython (3.11) takes the partial
#: write of one large ``write`` whose reader goes away mid-way for a whole one
#: and drops the rest: no EPIPE is ever seen, and smegctl ends 0 (its output
#: cut, as any reader that stops reading wants it).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


@pytest.fixture(scope="module")
def daemon() -> Iterator[tuple[Path, str]]:
    """The fake API with a mesh of 3,000 members: ``get-mesh`` prints far more than
    a pipe holds, so its writes outlive the reader's ``head -1``."""
    svc = FakeNodeService()
    with served_unix(svc) as (path, _svc):
        tok = svc.add_remote_mesh("wide-pipe-mesh", peers=3000)
        r = subprocess.run(
            [*SMEGCTL, "--socket", str(path), "join-mesh", "--token", tok],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
        )
        assert r.returncode == 0, r.stderr
        mesh_id = r.stdout.strip()
        yield path, mesh_id


def _piped(sock: Path, *args: str, reader: str = "head -1") -> subprocess.CompletedProcess[str]:
    cmd = shlex.join([*SMEGCTL, "--socket", str(sock), *args])
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{cmd} | {reader}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("get-mesh", "--meshid", "{mesh}"),
        ("get-mesh", "--meshid", "{mesh}", "--json"),
        ("status",),
        ("status", "--json"),
    ],
)
def test_a_reader_that_closes_its_pipe_ends_smegctl_as_sigpipe(
    daemon: tuple[Path, str], args: tuple[str, ...]
) -> None:
    sock, mesh_id = daemon
    r = _piped(sock, *(a.format(mesh=mesh_id) for a in args))
    assert r.stderr == ""
    assert r.returncode == 128 + signal.SIGPIPE, r
    assert len(r.stdout.splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("list-meshes",),
        ("list-meshes", "--json"),
        ("--version",),
        ("status", "--help"),
    ],
)
def test_a_pipe_closed_before_anything_is_written_ends_smegctl_as_sigpipe(
    daemon: tuple[Path, str], args: tuple[str, ...]
) -> None:
    """Any output, a line or two too: the reader's end is closed before smegctl
    starts, so its first write meets EPIPE, wherever it is written."""
    sock, _mesh_id = daemon
    rfd, wfd = os.pipe()
    os.close(rfd)
    try:
        p = subprocess.run(
            [*SMEGCTL, "--socket", str(sock), *args],
            stdout=wfd,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=ENV,
        )
    finally:
        os.close(wfd)
    assert (p.returncode, p.stderr) == (-signal.SIGPIPE, "")


def test_a_reader_that_reads_everything_sees_status_0(daemon: tuple[Path, str]) -> None:
    sock, mesh_id = daemon
    r = _piped(sock, "get-mesh", "--meshid", mesh_id, reader="grep -c peer2999")
    assert (r.returncode, r.stderr, r.stdout) == (0, "", "1\n")
