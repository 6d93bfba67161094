"""smegd's paths that cannot be used: one line naming the key and the path, no errno.

A regular file where controlSocket should go said "cannot start: [Errno 17]
/x/file.sock exists and is not a socket"; a stateDir that is a file said
"cannot start: [Errno 17] File exists: '/x/file'": neither said which key.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from smegmesh.testbed.loopback import Smegd, short_tmpdir

pytestmark = pytest.mark.timeout(120)


def _start(d: Smegd) -> str:
    """Run ``d`` until it exits (it must not start); its one ERROR line."""
    d.config_path.write_text(json.dumps(d.config()))
    p = subprocess.run(
        [sys.executable, "-m", "smegmesh.daemon.main", str(d.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and "[Errno" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, p.stderr
    return errors[0]


def test_a_file_where_the_control_socket_goes() -> None:
    d = Smegd(short_tmpdir(), "x")
    d.sock.write_text("not a socket\n")
    line = _start(d)
    assert line.endswith(
        f"cannot start: controlSocket {d.sock}: exists and is not a socket "
        "(remove it, or give another path)"
    ), line


def test_a_control_socket_someone_listens_on() -> None:
    d = Smegd(short_tmpdir(), "x")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(d.sock))
        s.listen()
        line = _start(d)
    assert line.endswith(
        f"cannot start: controlSocket {d.sock}: in use (another smegd is running?)"
    ), line


def test_a_state_dir_that_is_a_file(tmp_path: Path) -> None:
    d = Smegd(short_tmpdir(), "x", extra={"stateDir": str(tmp_path / "file")})
    (tmp_path / "file").write_text("")
    line = _start(d)
    assert line.endswith(f"cannot start: stateDir {tmp_path / 'file'}: not a directory"), line


def test_list_meshes_names_saved_meshes_that_did_not_start() -> None:
    """A saved mesh whose file was damaged is not running after a restart, and
    list-meshes said "not in any mesh (create one with: smegctl new-mesh)", exit 0:
    as if the mesh were gone, inviting a new one. smegctl status said why."""
    d = Smegd(short_tmpdir(), "x").start().wait_ready()
    try:
        mesh = d.ctl_json("new-mesh")["mesh_id"]
        d.stop()
        (d.dir / "state" / "meshes" / f"{mesh}.json").write_text("{garbage")
        d.restart()
        r = d.ctl("list-meshes")
        assert "create one" not in r.stdout, r.stdout
        assert r.stdout == (
            f"no mesh running; saved but not running: {mesh} (smegctl status says why)\n"
        ), r.stdout
        assert d.ctl_json("list-meshes") == []  # the JSON stays the list of running meshes
        st = d.ctl("status").stdout
        assert f"mesh {mesh} NOT RUNNING" in st and "create one" not in st, st
        other = d.ctl_json("new-mesh")["mesh_id"]
        r = d.ctl("list-meshes")
        assert other in r.stdout and mesh not in r.stdout, r.stdout
        assert r.stderr == (
            f"smegctl: saved but not running: {mesh} (smegctl status says why)\n"
        ), r.stderr
    finally:
        d.stop()
