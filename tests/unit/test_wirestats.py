"""Wire accounting (issue 14): bytes read from the kernel for this process's TCP sockets."""

from __future__ import annotations

import socket
import time

from smegmesh.daemon.wirestats import WireStats, socket_bytes


def _pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(srv.getsockname())
    acc, _ = srv.accept()
    return srv, cli, acc


def _recv_exactly(s: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        got += len(s.recv(65536))


def test_counts_both_ends_of_a_connection_and_skips_excluded_ports() -> None:
    srv, cli, acc = _pair()
    try:
        stats = WireStats()
        base = stats.sample()
        tx0, rx0 = base.tx, base.rx
        cli.sendall(b"x" * 10_000)
        _recv_exactly(acc, 10_000)
        acc.sendall(b"y" * 3_000)
        _recv_exactly(cli, 3_000)
        deadline = time.monotonic() + 10
        while stats.sample().tx - tx0 < 13_000 and time.monotonic() < deadline:
            time.sleep(0.01)  # bytes count once the peer has acknowledged them
        t = stats.totals
        # Both ends are ours: each byte is sent once and received once.
        assert t.tx - tx0 == 13_000
        assert t.rx - rx0 == 13_000
        sent, received = socket_bytes(cli)
        assert sent in (10_000, 10_001)  # the kernel counts the SYN of the side that connected
        assert received == 3_000
        # A socket on an excluded local port (the API, the metrics endpoint) is not counted.
        skip = WireStats(exclude_ports={srv.getsockname()[1]})
        before = skip.sample().tx
        cli.sendall(b"z" * 1_000)
        _recv_exactly(acc, 1_000)
        deadline = time.monotonic() + 10
        while skip.sample().tx - before < 1_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert skip.totals.tx - before == 1_000  # the client's side only
        assert skip.totals.sockets == 1
    finally:
        for s in (cli, acc, srv):
            s.close()


def test_socket_bytes_of_something_else_is_zero() -> None:
    assert socket_bytes(object()) == (0, 0)
