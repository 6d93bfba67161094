"""The test bed's free ports: a run of consecutive ports, inside this worker's block."""

from __future__ import annotations

import socket

import pytest

from smegmesh.testbed.ports import BASE, BLOCK, free_port, free_port_run, worker_index


def test_a_run_of_ports_is_free_and_in_this_workers_block() -> None:
    first = BASE + worker_index() * BLOCK
    for _ in range(20):
        base = free_port_run(3, "127.0.0.1")
        assert first <= base and base + 2 < first + BLOCK
        socks = []
        try:
            for p in range(base, base + 3):  # all three bind right now
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
        finally:
            for s in socks:
                s.close()
    assert first <= free_port("127.0.0.1") < first + BLOCK


def test_a_run_skips_a_taken_port() -> None:
    with socket.socket() as held:
        base = free_port_run(2, "127.0.0.1")
        held.bind(("127.0.0.1", base + 1))
        for _ in range(50):
            b = free_port_run(2, "127.0.0.1")
            assert base + 1 not in (b, b + 1)


def test_run_length_is_bounded() -> None:
    with pytest.raises(ValueError, match="a run of"):
        free_port_run(0)
    with pytest.raises(ValueError, match="a run of"):
        free_port_run(BLOCK + 1)


def test_a_run_is_not_handed_out_again_before_it_is_bound() -> None:
    """The swarm's ports, then the measured daemon's: never the same port (a CI failure:
    the daemon took the swarm's second port before the swarm bound it)."""
    for _ in range(200):
        first = free_port_run(2, "127.0.0.1")
        single = free_port("127.0.0.1")
        assert single not in (first, first + 1)
