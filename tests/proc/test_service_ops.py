"""Running smegd as a service (issue 15): the state lock, SIGHUP reload, logs, --check.

Real ``smegd`` processes on loopback (memory WireGuard backend).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from smegmesh.daemon.config import ConfigError, parse_config
from smegmesh.daemon.statelock import LOCK_NAME
from smegmesh.testbed.loopback import Cluster, Smegd, free_port, short_tmpdir, wait_until

#: a line of gRPC's C core: "E1202 03:54:18.234211    9141 add_port.cc:83] ..."
GRPC_NATIVE_LINE = re.compile(r"^[EWIF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.cc:\d+\]", re.M)


@pytest.fixture
def cl() -> Any:
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


def _run_smegd(cfg_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smegmesh.daemon.main", *args, str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _write(d: Smegd, **changes: Any) -> None:
    cfg = d.config()
    cfg.update(changes)
    d.config_path.write_text(json.dumps(cfg))


def _log_after(d: Smegd, mark: int, text: str) -> str | None:
    tail = d.log()[mark:]
    return tail if text in tail else None


# --------------------------------------------------------------------------- --check


def test_check_reports_every_problem_and_never_echoes_the_token(tmp_path: Path) -> None:
    secret = "hunter2-short"
    cfg = tmp_path / "smegd.yaml"
    cfg.write_text(
        "apiListen: 127.0.0.1:8080\n"
        f"apiToken: {secret}\n"
        "timeout: -1\n"
        "logLevel: loud\n"
        "bogusKey: 1\n"
        "certificatePath: missing.pem\n"
        "privateKeyPath: missing.key\n"
    )
    p = _run_smegd(cfg, "--check")
    assert p.returncode == 2, p
    assert secret not in p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    for key in ("apiToken", "timeout", "logLevel", "bogusKey", "certificatePath", "privateKeyPath"):
        assert any(f": {key}:" in line for line in lines), (key, lines)
    assert all(line.startswith(f"smegd: {cfg}: ") for line in lines), lines


def test_cross_key_problems_are_all_reported() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config({"apiListen": "127.0.0.1:1", "gcHorizon": 1, "heartbeatInterval": 1})
    text = "\n".join(ei.value.problems)
    assert "apiToken: required" in text and "gcHorizon" in text
    assert "(and 1 more problem(s))" in str(ei.value)


def test_new_keys_are_validated() -> None:
    assert parse_config({"metricsListen": "[::1]:9100"}).metrics_listen_addr == ("::1", 9100)
    assert parse_config({"logFormat": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="metricsListen"):
        parse_config({"metricsListen": "localhost"})
    with pytest.raises(ConfigError, match="logFormat"):
        parse_config({"logFormat": "xml"})


# --------------------------------------------------------------------------- the lock


def test_second_daemon_on_a_state_dir_exits_naming_the_first(cl: Cluster) -> None:
    (a,) = cl.add(1)
    assert a.proc is not None
    lock = Path(a.config()["stateDir"]) / LOCK_NAME
    assert lock.read_text().strip() == str(a.proc.pid)

    twin = Smegd(cl.root, "twin", extra={"stateDir": a.config()["stateDir"]})
    twin.config_path.write_text(json.dumps(twin.config()))
    p = _run_smegd(twin.config_path)
    assert p.returncode != 0
    errors = [line for line in p.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, p.stderr
    assert f"pid {a.proc.pid}" in errors[0] and "in use by another smegd" in errors[0]
    assert "Traceback" not in p.stderr
    assert a.alive and a.ready()

    # The lock dies with its process, even kill -9: the next daemon starts.
    a.kill9()
    a.restart()
    assert a.proc is not None
    assert lock.read_text().strip() == str(a.proc.pid)


def test_grpc_port_clash_is_one_line_without_raw_grpc_output(cl: Cluster) -> None:
    (a,) = cl.add(1)
    other = Smegd(cl.root, "other", grpc_port=a.grpc_port)
    other.config_path.write_text(json.dumps(other.config()))
    p = _run_smegd(other.config_path)
    assert p.returncode == 1, p
    assert not GRPC_NATIVE_LINE.search(p.stderr), p.stderr
    assert "add_port.cc" not in p.stderr and "GRPC_VERBOSITY" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"{a.grpc_port} (gRPCPort)" in errors[0], p.stderr


@pytest.mark.parametrize("key", ["metricsListen", "apiListen", "dnsListen"])
def test_listener_clash_is_one_line_naming_the_key(key: str) -> None:
    """A port clash on metricsListen, apiListen or dnsListen was "cannot start:
    [Errno 98] Address already in use": which of them? Named as gRPCPort's is."""
    with (
        socket.socket() as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        port = tcp.getsockname()[1]
        with contextlib.suppress(OSError):  # DNS binds UDP too
            udp.bind(("127.0.0.1", port))
        extra: dict[str, Any] = {key: f"127.0.0.1:{port}"}
        if key == "apiListen":
            extra["apiToken"] = "0123456789abcdef0123456789abcdef"
        d = Smegd(short_tmpdir(), "x", extra=extra)
        d.config_path.write_text(json.dumps(d.config()))
        p = _run_smegd(d.config_path)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if "ERROR" in line]
    want = f"cannot listen on 127.0.0.1:{port} ({key}): address already in use"
    assert len(errors) == 1 and errors[0].endswith(want), p.stderr


def test_missing_wireguard_backend_is_one_line_without_traceback() -> None:
    """wgBackend: userspace on a machine without wireguard-go (or kernel without
    the module) was a traceback at start: now the one line saying what to install."""
    d = Smegd(short_tmpdir(), "x", extra={"stubWg": False, "wgBackend": "userspace"})
    d.config_path.write_text(json.dumps(d.config()))
    env = {**os.environ, "PATH": str(d.dir)}  # no wireguard-go there
    p = subprocess.run(
        [sys.executable, "-m", "smegmesh.daemon.main", str(d.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and errors[0].endswith(
        "cannot start: no wireguard-go available; install: "
        "apt-get install --no-install-recommends wireguard-go wireguard-tools"
    ), p.stderr


# --------------------------------------------------------------------------- signals


def test_sighup_reloads_live_keys_and_survives_a_bad_file(cl: Cluster) -> None:
    (d,) = cl.add(1, extra={"logLevel": "warning"})
    assert d.proc is not None
    d.api("POST", "/v1/meshes")
    assert "created mesh" not in d.log()  # INFO is off

    mark = len(d.log())
    _write(d, logLevel="info", gRPCPort=free_port())
    d.proc.send_signal(signal.SIGHUP)
    tail = wait_until(lambda: _log_after(d, mark, "configuration reloaded"), 20, what="reload")
    assert "changed: logLevel" in tail
    restart = [line for line in tail.splitlines() if "need" in line and "restart" in line]
    assert len(restart) == 1 and "gRPCPort" in restart[0], tail
    d.api("POST", "/v1/meshes")
    wait_until(lambda: _log_after(d, mark, "created mesh"), 20, what="INFO line after reload")
    assert d.alive

    mark = len(d.log())
    d.config_path.write_text("logLevel: [unclosed\n")
    d.proc.send_signal(signal.SIGHUP)
    tail = wait_until(lambda: _log_after(d, mark, "not reloaded"), 20, what="reload refusal")
    assert "keeping the running one" in tail and "YAML syntax error" in tail
    assert d.alive and d.ready()
    # still at INFO: the running configuration was kept
    d.api("POST", "/v1/meshes")
    wait_until(lambda: d.log()[mark:].count("created mesh") == 1, 20, what="INFO still on")

    # SIGTERM still stops cleanly and removes the control socket
    assert d.stop() == 0
    assert not d.sock.exists()
    assert "Traceback" not in d.log()


# --------------------------------------------------------------------------- log formats


def test_json_log_format(cl: Cluster) -> None:
    (d,) = cl.add(1, extra={"logFormat": "json"})
    d.api("POST", "/v1/meshes")
    wait_until(lambda: "created mesh" in d.log(), 20, what="created mesh")
    lines = [line for line in d.log().splitlines() if line.strip()]
    objs = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= o.keys() for o in objs)
    created = next(o for o in objs if o["message"].startswith("created mesh"))
    assert created["level"] == "info" and created["logger"] == "smegd"


def test_a_configuration_warning_is_one_log_line_in_the_log_format(cl: Cluster) -> None:
    """A warning about the configuration is logged once, as a line of the log's format
    (JSON here). It was written twice: first as a bare ``smegd: warning: ...`` line on
    stderr (not JSON, which a log shipper reading JSON lines fails on; no journald
    priority), then logged."""
    (d,) = cl.add(1, extra={"logFormat": "json", "skipCertVerification": True})
    d.api("POST", "/v1/meshes")
    wait_until(lambda: "created mesh" in d.log(), 20, what="created mesh")
    lines = [line for line in d.log().splitlines() if line.strip()]
    for line in lines:
        assert line.startswith("{"), line  # every line is one JSON object
    warned = [o for o in map(json.loads, lines) if "skipCertVerification" in o["message"]]
    assert [o["level"] for o in warned] == ["warning"]


def test_journald_lines_carry_priorities_and_no_timestamps() -> None:
    root = short_tmpdir()
    d = Smegd(root, "j")
    d.config_path.write_text(json.dumps(d.config()))
    log_path = root / "journal.log"
    with open(log_path, "wb") as out:
        st = os.fstat(out.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "smegmesh.daemon.main", str(d.config_path)],
            stdout=out,
            stderr=out,
            env=env,
        )
    try:
        d.proc = proc
        d.wait_ready()
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(d.sock)), base_url="http://smegd"
        ) as c:
            c.post("/v1/meshes").raise_for_status()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = [line for line in log_path.read_text().splitlines() if line]
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert any(line.startswith("<6>INFO smegd: created mesh") for line in lines), lines
    assert not any(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", line) for line in lines), lines


# --------------------------------------------------------------------------- UDP ports


def test_requested_wgport_in_use_is_a_clear_conflict(cl: Cluster) -> None:
    (d,) = cl.add(1)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as held:
        held.bind(("::", 0))
        port = held.getsockname()[1]
        transport = httpx.HTTPTransport(uds=str(d.sock))
        with httpx.Client(transport=transport, base_url="http://smegd") as c:
            r = c.post("/v1/meshes", json={"wgport": port})
        assert r.status_code == 409, r.text
        msg = r.json()["error"]["message"]
        assert f"UDP port {port} is in use on this host" in msg
        r = d.ctl("new-mesh", "--wgport", str(port), code=None)
        assert r.code != 0 and f"UDP port {port} is in use" in r.stderr
    assert d.mesh_ids() == set()


def test_automatic_wgport_skips_ports_in_use_and_logs_the_choice(cl: Cluster) -> None:
    from smegmesh.daemon.ports import DEFAULT_WG_PORT, udp_port_free

    (d,) = cl.add(1)
    held = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        held.bind(("::", DEFAULT_WG_PORT))
    except OSError:
        held.close()  # someone else holds it: the daemon must skip it all the same
        held = None  # type: ignore[assignment]
    try:
        assert not udp_port_free(DEFAULT_WG_PORT)
        mesh = d.api("POST", "/v1/meshes")["mesh_id"]
        line = wait_until(
            lambda: next((ln for ln in d.log().splitlines() if "listens on UDP port" in ln), None),
            20,
            what="the port choice in the log",
        )
        chosen = int(re.search(r"UDP port (\d+)", line).group(1))  # type: ignore[union-attr]
        assert chosen != DEFAULT_WG_PORT and mesh in line and str(DEFAULT_WG_PORT) in line
    finally:
        if held is not None:
            held.close()


def test_unusable_lock_file_is_one_line_without_traceback(tmp_path: Path) -> None:
    d = Smegd(short_tmpdir(), "x")
    state = Path(d.config()["stateDir"])
    (state / LOCK_NAME).mkdir(parents=True)  # a directory where the lock file goes
    d.config_path.write_text(json.dumps(d.config()))
    p = _run_smegd(d.config_path)
    assert p.returncode == 1, p
    assert "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and LOCK_NAME in errors[0], p.stderr
