"""smegctl as a real subprocess against the in-memory API server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from api_fake import FakeNodeService, served_unix, short_tmpdir


@pytest.fixture
def daemon() -> Iterator[tuple[Path, FakeNodeService]]:
    with served_unix() as (path, svc):
        yield path, svc


def smegctl_proc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ)
    e.pop("SMEG_SOCKET", None)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "smegmesh.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=e,
    )


def test_subprocess_roundtrip_and_no_traceback(daemon: tuple[Path, FakeNodeService]) -> None:
    sock, svc = daemon
    env = {"SMEG_SOCKET": str(sock)}
    r = smegctl_proc("new-mesh", "--json", env=env)
    assert r.returncode == 0, r.stderr
    mesh_id = json.loads(r.stdout)["mesh_id"]
    assert mesh_id in svc.meshes
    r = smegctl_proc("get-mesh", "--meshid", mesh_id, env=env)
    assert r.returncode == 0 and "ALIAS" in r.stdout
    r = smegctl_proc("get-mesh", "--meshid", "nope", env=env)
    assert r.returncode == 1
    assert r.stderr == "smegctl: not a member of mesh 'nope'\n"
    # a daemon bug (500) is still one line, no traceback
    r = smegctl_proc("get-mesh", "--meshid", "boom", env=env)
    assert r.returncode == 1
    assert r.stderr.startswith("smegctl: internal error in smegd")
    assert "Traceback" not in r.stderr + r.stdout


def test_subprocess_daemon_down() -> None:
    d = short_tmpdir()
    # a socket file with nobody listening: connection refused
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "dead.sock"))
    s.close()
    for path in (d / "dead.sock", d / "missing.sock"):
        r = smegctl_proc("--socket", str(path), "list-meshes")
        assert r.returncode == 1
        assert r.stdout == ""
        assert r.stderr == (
            f"smegctl: cannot reach smegd at {path} (is it running? start it with: "
            "smegd /etc/smegmesh/smegd.yaml)\n"
        )


def test_subprocess_help_has_examples() -> None:
    r = smegctl_proc("--help")
    assert r.returncode == 0
    for cmd in (
        "new-mesh",
        "invite",
        "join-mesh",
        "leave-mesh",
        "list-meshes",
        "get-mesh",
        "get-graph",
        "query-mesh",
        "put-alias",
        "put-description",
        "set-service",
        "delete-service",
    ):
        assert cmd in r.stdout
    r = smegctl_proc("invite", "--help")
    assert r.returncode == 0 and "Example" in r.stdout and "--ttl" in r.stdout
