"""smegd's command line as a subprocess: one-line config errors, --check, --version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _smegd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smegmesh.daemon.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_smegd_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("baseConfiguration:\n  role: server\n")
    r = _smegd(str(f))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("smegd: ") and "baseConfiguration.role" in lines[0]
    assert "Traceback" not in r.stderr


def test_smegd_check(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("skipCertVerification: true\nstubWg: true\n")
    r = _smegd("--check", str(f))
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
    assert "skipCertVerification is ignored" in r.stderr
    r = _smegd("--version")
    assert r.returncode == 0 and r.stdout.startswith("smegd ")
    r = _smegd()  # no argument: /etc/smegmesh/smegd.yaml (test_packaging.py checks the message)
    assert r.returncode == 2 and "smegd.yaml" in r.stderr
