"""Installing and running smegd as a service: the wheel, the example config, the unit.

- The wheel built by ``uv build`` installs into a fresh virtual environment
  (versions pinned by ``uv.lock``, from uv's cache when it has them) and its
  ``smegd``/``smegctl`` work from there: ``--check`` of the shipped example
  config, and a short daemon start (memory backend) driven by ``smegctl``.
- ``packaging/systemd/smegd.service`` passes ``systemd-analyze verify`` with no
  warning at all.
- ``smegd`` with no argument reads ``/etc/smegmesh/smegd.yaml`` and says how to
  create it when it is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from envcheck import missing
from smegmesh.daemon.defaults import DEFAULT_CONFIG_PATH
from smegmesh.daemon.main import example_config
from smegmesh.testbed.loopback import free_port, short_tmpdir, wait_until

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "smegd.service"


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload,no-any-return]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SMEG_SOCKET")}
    env["UV_PYTHON_DOWNLOADS"] = "never"  # the interpreter running the tests will do
    return env


@pytest.fixture(scope="module")
def wheel_venv() -> Iterator[tuple[Path, Path]]:
    """(venv, wheel): the project's wheel installed into a fresh virtual environment."""
    uv = shutil.which("uv")
    if uv is None:
        missing("uv is not installed (scripts/bootstrap.sh installs it)")
    tmp = short_tmpdir("whl")
    try:
        env = _clean_env()
        dist = tmp / "dist"
        r = _run([uv, "build", "--wheel", "--out-dir", str(dist)], cwd=ROOT, env=env)
        assert r.returncode == 0, r.stderr
        (wheel,) = dist.glob("smegmesh-*.whl")
        req = tmp / "requirements.txt"
        export = [uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes"]
        r = _run([*export, "-q", "-o", str(req)], cwd=ROOT, env=env)
        assert r.returncode == 0, r.stderr
        venv = tmp / "venv"
        r = _run([uv, "venv", "-q", "--python", sys.executable, str(venv)], cwd=tmp, env=env)
        assert r.returncode == 0, r.stderr
        install = [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python")]
        install += ["-r", str(req), str(wheel)]
        r = _run([*install, "--offline"], cwd=tmp, env=env)  # from uv's cache
        if r.returncode != 0:  # something is not cached yet: PyPI, same pinned versions
            r = _run(install, cwd=tmp, env=env)
        assert r.returncode == 0, r.stderr
        yield venv, wheel
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.packaging
def test_wheel_metadata_and_contents(wheel_venv: tuple[Path, Path]) -> None:
    _, wheel = wheel_venv
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read("smegmesh-0.1.0.dist-info/METADATA").decode()
    assert "smegmesh/daemon/smegd.example.yaml" in names
    assert "smegmesh-0.1.0.dist-info/licenses/LICENSE" in names
    assert "License-Expression: MIT" in meta
    assert "Classifier: Operating System :: POSIX :: Linux" in meta
    # daemon/api.py subclasses uvicorn.Server: its version is bounded above.
    assert any(
        line.startswith("Requires-Dist: uvicorn") and "<" in line for line in meta.split("\n")
    )


@pytest.mark.packaging
def test_wheel_smegd_and_smegctl_work_from_a_fresh_venv(wheel_venv: tuple[Path, Path]) -> None:
    venv, _ = wheel_venv
    bindir = venv / "bin"
    env = _clean_env()
    work = short_tmpdir("whr")
    try:
        # The package comes from the venv, not from the source tree.
        r = _run(
            [str(bindir / "python"), "-c", "import smegmesh; print(smegmesh.__file__)"], cwd=work
        )
        assert r.returncode == 0 and r.stdout.startswith(str(venv)), (r.stdout, r.stderr)

        example = work / "smegd.yaml"
        r = _run([str(bindir / "smegd"), "--print-example-config"], cwd=work, env=env)
        assert r.returncode == 0, r.stderr
        text = r.stdout
        example.write_text(text)
        r = _run([str(bindir / "smegd"), "--check", str(example)], cwd=work, env=env)
        assert (r.returncode, r.stdout) == (0, f"{example}: configuration OK\n"), r.stderr

        # A short start: the example config, with the memory backend and
        # everything that needs root moved into the temporary directory.
        sock = work / "s.sock"
        conf = work / "run.yaml"
        conf.write_text(
            text.replace("wgBackend: auto", "wgBackend: memory")
            .replace("stateDir: /var/lib/smegmesh", f"stateDir: {work / 'state'}")
            .replace("controlSocket: /run/smegmesh/smegd.sock", f"controlSocket: {sock}")
            .replace("wgSocketDir: /run/wireguard", f"wgSocketDir: {work / 'wg'}")
            .replace("gRPCPort: 4000", f"gRPCPort: {free_port()}\nbindAddress: '::1'")
            .replace("ipDiscovery: outgoing", "publicEndpoint: '::1'")
        )
        log = open(work / "smegd.log", "wb")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [str(bindir / "smegd"), str(conf)], cwd=work, env=env, stdout=log, stderr=log
        )
        log.close()
        try:
            ctl = [str(bindir / "smegctl"), "--socket", str(sock)]

            def listed() -> bool:
                if proc.poll() is not None:  # not an AssertionError: wait_until stops here
                    raise RuntimeError((work / "smegd.log").read_text())
                return _run([*ctl, "list-meshes"], cwd=work, env=env).returncode == 0

            wait_until(listed, 60, 0.3, "smegctl list-meshes to answer")
            r = _run([*ctl, "new-mesh"], cwd=work, env=env)
            assert r.returncode == 0, r.stderr
            mesh_id = r.stdout.strip()
            r = _run([*ctl, "list-meshes"], cwd=work, env=env)
            assert r.returncode == 0 and mesh_id in r.stdout, (r.stdout, r.stderr)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait(10)
        assert rc == 0, (work / "smegd.log").read_text()
        assert not sock.exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _verify(unit_text: str, tmp_path: Path) -> str:
    """``systemd-analyze verify`` output for ``unit_text`` (ExecStart made to exist here)."""
    if shutil.which("systemd-analyze") is None:
        missing("systemd-analyze is missing (Debian package systemd; scripts/bootstrap.sh)")
    smegd = Path(sys.executable).parent / "smegd"
    assert smegd.exists(), smegd
    unit = tmp_path / "smegd.service"
    unit.write_text(unit_text.replace("/usr/local/bin/smegd", str(smegd)))
    r = _run(["systemd-analyze", "verify", str(unit)], env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    return (f"rc={r.returncode}\n" if r.returncode else "") + r.stdout + r.stderr


@pytest.mark.packaging
def test_systemd_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert _verify(text, tmp_path) == ""
    # The check is real: a misspelt option is reported.
    assert "Unknown key" in _verify(text.replace("ProtectHome=", "ProtectHomes="), tmp_path)
    # systemd's own exposure score (0 best, 10 worst; 2.7 when written) stays low.
    r = _run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=30", str(UNIT)],
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr


def _unit_keys() -> dict[str, str]:
    return {
        k: v
        for k, _, v in (
            ln.partition("=") for ln in UNIT.read_text().splitlines() if "=" in ln and ln[0] != "#"
        )
    }


def test_systemd_unit_is_a_hardened_notify_service() -> None:
    lines = _unit_keys()
    assert lines["Type"] == "notify"
    assert lines["WatchdogSec"]
    assert lines["Restart"] == "on-failure"
    assert lines["StateDirectory"] == "smegmesh"
    assert "smegmesh" in lines["RuntimeDirectory"].split()
    assert lines["ExecStart"].endswith(f"smegd {DEFAULT_CONFIG_PATH}")
    caps = set(lines["CapabilityBoundingSet"].split())
    assert "CAP_NET_ADMIN" in caps and "CAP_SYS_ADMIN" not in caps
    for opt in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert lines[opt] in ("yes", "strict"), opt
    assert lines["DeviceAllow"].startswith("/dev/net/tun")


def test_systemd_unit_leaves_up_what_a_stop_of_smegd_leaves_up() -> None:
    """Stopping smegd keeps its WireGuard interfaces up for the next start
    (docs/OPERATIONS.md; ``Daemon.stop`` closes no backend, tests/unit/
    test_hooks_daemon.py): the unit must not undo that. It killed them:

    * ``RuntimeDirectory=... wireguard`` without ``RuntimeDirectoryPreserve=yes``
      had systemd delete /run/wireguard at every stop or restart; wireguard-go
      exits when its socket goes, so every userspace interface on the host
      (other programs' too: the directory is wireguard-go's, host-wide) died;
    * ``KillMode=mixed`` SIGKILLed the rest of the cgroup, wireguard-go
      included, once smegd had exited (the comment said smegd stops them itself).
    """
    from smegmesh.daemon.hooks import HOOK_TIMEOUT_S

    keys = _unit_keys()
    if "wireguard" in keys["RuntimeDirectory"].split():
        assert keys.get("RuntimeDirectoryPreserve") == "yes"
    assert "/run/wireguard" in keys["ReadWritePaths"].split()
    # SIGTERM and the final SIGKILL to smegd only; its children are left alone.
    assert keys.get("KillMode") == "process"
    # smegd's exit waits for a running hook, which it ends after HOOK_TIMEOUT_S:
    # systemd's SIGKILL must not come first and orphan the hook unbounded.
    assert float(keys["TimeoutStopSec"].removesuffix("s")) > HOOK_TIMEOUT_S + 5


def test_systemd_unit_does_not_restart_a_bad_configuration(tmp_path: Path) -> None:
    """smegd exits 2 on a bad configuration, at once: with ``Restart=on-failure``
    and nothing else, systemd restarted it every 2 s for ever (4 starts in 10 s,
    under the default start limit of 5), the same error in the journal each time.
    Exit 1 (a runtime failure: a port in use, the state directory locked...) may
    pass at a later start: restarted."""
    from smegmesh.daemon.main import EXIT_CONFIG

    bad = tmp_path / "smegd.yaml"
    bad.write_text("timeout: -1\n")
    r = _run([sys.executable, "-m", "smegmesh.daemon.main", str(bad)])
    assert r.returncode == EXIT_CONFIG == 2, r.stderr
    keys = _unit_keys()
    assert keys["Restart"] == "on-failure"
    assert keys.get("RestartPreventExitStatus", "").split() == [str(EXIT_CONFIG)]


def test_example_config_is_valid_and_uses_the_standard_paths(tmp_path: Path) -> None:
    text = example_config()
    p = tmp_path / "smegd.yaml"
    p.write_text(text)
    r = _run([sys.executable, "-m", "smegmesh.daemon.main", "--check", str(p)])
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert "stateDir: /var/lib/smegmesh" in text
    assert "controlSocket: /run/smegmesh/smegd.sock" in text
    r = _run([sys.executable, "-m", "smegmesh.daemon.main", "--print-example-config"])
    assert (r.returncode, r.stdout) == (0, text)


def test_smegd_without_argument_reads_the_default_config_and_says_how_to_create_it() -> None:
    if os.path.exists(DEFAULT_CONFIG_PATH):
        pytest.skip(f"{DEFAULT_CONFIG_PATH} exists on this machine")
    r = _run([sys.executable, "-m", "smegmesh.daemon.main"])
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"smegd: {DEFAULT_CONFIG_PATH}: no such file")
    assert "smegd --print-example-config" in lines[0]


def test_standard_wireguard_socket_dir_needs_no_private_mount() -> None:
    """wgSocketDir: /run/wireguard (the example config's) runs wireguard-go directly,
    so the service needs no CAP_SYS_ADMIN; any other directory keeps the private mount."""
    if shutil.which("wireguard-go") is None:
        missing("wireguard-go is missing (scripts/bootstrap.sh installs it)")
    from smegmesh.wg.userspace import UserspaceBackend

    for std in ("/var/run/wireguard", "/run/wireguard"):
        assert "unshare" not in UserspaceBackend(socket_dir=std)._command("smg0")
    tmp = short_tmpdir("wgd")
    try:
        assert UserspaceBackend(socket_dir=str(tmp))._command("smg0")[0] == "unshare"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
