"""systemd's notify protocol (``Type=notify``): readiness, watchdog, stopping.

A real ``smegd`` runs with ``NOTIFY_SOCKET`` pointing at a unix datagram
socket the test binds, as systemd would.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smegmesh.daemon.sdnotify_glue import Notifier, _watchdog_interval
from smegmesh.testbed.loopback import Smegd, short_tmpdir


@pytest.fixture
def notify_sock() -> Iterator[tuple[socket.socket, Path]]:
    d = short_tmpdir("sdn")
    path = d / "notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    try:
        yield s, path
    finally:
        s.close()
        path.unlink(missing_ok=True)
        d.rmdir()


def _recv_until(s: socket.socket, want: str, timeout: float, seen: list[str]) -> float:
    """Collect datagrams into ``seen`` until one has the line ``want``; its arrival time."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want!r} within {timeout:g}s; got {seen!r}")
        s.settimeout(left)
        try:
            msg = s.recv(4096).decode()
        except TimeoutError:
            continue
        seen.append(msg)
        if want in msg.splitlines():
            return time.monotonic()


def test_ready_after_control_socket_then_periodic_watchdog(
    notify_sock: tuple[socket.socket, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, path = notify_sock
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    root = short_tmpdir("sdd")
    d = Smegd(root, "n1")
    d.start()
    try:
        seen: list[str] = []
        _recv_until(s, "READY=1", 60, seen)
        # READY=1 only once the control socket exists and answers.
        assert d.sock.exists()
        assert d.ready(), d.log()[-2000:]
        assert not any("WATCHDOG=1" in m for m in seen[:-1]), seen
        # Then WATCHDOG=1, repeatedly: at least 4 more within a generous deadline.
        t0 = time.monotonic()
        for _ in range(4):
            _recv_until(s, "WATCHDOG=1", 30, seen)
        assert time.monotonic() - t0 < 30
        assert d.stop() == 0
        _recv_until(s, "STOPPING=1", 10, seen)
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_status_follows_the_meshes(
    notify_sock: tuple[socket.socket, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``systemctl status smegd`` shows the daemon's STATUS= line: it follows the
    meshes. It was sent once with READY=1 and said "serving 0 mesh(es)" for good."""
    s, path = notify_sock
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    root = short_tmpdir("sdd")
    d = Smegd(root, "n1")
    d.start()
    try:
        seen: list[str] = []
        _recv_until(s, "READY=1", 60, seen)
        assert "STATUS=serving 0 mesh(es)" in seen[-1].splitlines()
        d.api("POST", "/v1/meshes")
        _recv_until(s, "STATUS=serving 1 mesh(es)", 20, seen)
        assert d.stop() == 0
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_no_watchdog_pings_unless_asked(
    notify_sock: tuple[socket.socket, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, path = notify_sock
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    root = short_tmpdir("sdd")
    d = Smegd(root, "n1")
    d.start()
    try:
        seen: list[str] = []
        _recv_until(s, "READY=1", 60, seen)
        assert d.stop() == 0
        _recv_until(s, "STOPPING=1", 10, seen)  # everything sent before it has arrived
        assert not any("WATCHDOG=1" in m.splitlines() for m in seen), seen
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert _watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert _watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15
    # meant for another process, absent, or garbage: no watchdog
    assert _watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert _watchdog_interval({}) is None
    assert _watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert _watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_notifier_is_inert_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    n.notify("READY=1")  # no socket, no error
    n.stopping()


def test_vanished_notify_socket_is_not_fatal(
    notify_sock: tuple[socket.socket, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, path = notify_sock
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    n = Notifier()
    assert n.enabled
    n.notify("STATUS=one")
    assert s.recv(100) == b"STATUS=one"
    s.close()
    n.notify("STATUS=two")  # the receiver is gone: logged, not raised
