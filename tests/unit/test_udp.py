"""daemon/udp.py: a UDP endpoint that drains its socket on a busy event loop."""

from __future__ import annotations

import asyncio
import socket

import pytest

from smegmesh.daemon.udp import READ_BUDGET, open_udp


class _Count(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.errors: list[Exception] = []
        self.lost = False

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.got.append(data)

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def test_a_burst_is_read_in_a_few_loop_turns_not_one_datagram_per_turn() -> None:
    """asyncio's own datagram transport reads one datagram per loop iteration: 200
    queued datagrams took 200 iterations, and on a loop with thousands of ready
    callbacks that is a few datagrams a second (the swarm: 6 MB left queued)."""

    async def main() -> None:
        t, p = await open_udp(_Count, ("127.0.0.1", 0))
        assert isinstance(p, _Count)
        port = t.get_extra_info("sockname")[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(200):
                s.sendto(i.to_bytes(2, "big"), ("127.0.0.1", port))
        turns = 0
        while len(p.got) < 200 and turns < 50:
            await asyncio.sleep(0)  # one loop iteration each
            turns += 1
        assert len(p.got) == 200
        assert turns <= 200 // READ_BUDGET + 3
        assert p.got[0] == b"\x00\x00" and p.got[-1] == (199).to_bytes(2, "big")
        t.close()
        await asyncio.sleep(0)
        assert t.is_closing() and p.lost

    asyncio.run(asyncio.wait_for(main(), 10))


def test_sendto_and_a_reply_both_ways_on_ipv6_and_ipv4_mapped() -> None:
    async def main() -> None:
        ta, pa = await open_udp(_Count, ("::", 0))
        tb, pb = await open_udp(_Count, ("::1", 0))
        assert isinstance(pa, _Count) and isinstance(pb, _Count)
        pa_port = ta.get_extra_info("sockname")[1]
        tb.sendto(b"hi", ("::1", pa_port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # "::" takes IPv4 too
            s.sendto(b"v4", ("127.0.0.1", pa_port))
        for _ in range(100):
            if len(pa.got) == 2:
                break
            await asyncio.sleep(0.01)
        assert sorted(pa.got) == [b"hi", b"v4"]
        ta.close()
        tb.close()
        ta.sendto(b"after close", ("::1", 1))  # ignored, no error

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_taken_port_is_an_oserror() -> None:
    async def main() -> None:
        t, _ = await open_udp(_Count, ("127.0.0.1", 0))
        port = t.get_extra_info("sockname")[1]
        with pytest.raises(OSError):
            await open_udp(_Count, ("127.0.0.1", port))
        t.close()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_datagram_the_kernel_will_not_take_is_dropped_and_reported() -> None:
    """A full send buffer drops the datagram (no queue grows) and tells the protocol,
    which counts it under smegd_datagrams_refused_total{reason="send buffer full"}."""
    from smegmesh.daemon.rpc_dgram import DatagramStats, note_send_error

    class Full:
        def __init__(self, real: socket.socket) -> None:
            self.real = real

        def sendto(self, *_a: object) -> int:
            raise BlockingIOError

        def __getattr__(self, name: str) -> object:
            return getattr(self.real, name)

    async def main() -> None:
        t, p = await open_udp(_Count, ("127.0.0.1", 0))
        assert isinstance(p, _Count)
        t._sock = Full(t._sock)  # type: ignore[assignment]
        t.sendto(b"x", ("127.0.0.1", 9))
        t.sendto(b"y", ("127.0.0.1", 9))
        assert t.send_drops == 2 and t.get_write_buffer_size() == 0
        assert [type(e) for e in p.errors] == [BlockingIOError, BlockingIOError]
        stats = DatagramStats()
        for e in p.errors:
            note_send_error(stats, e)
        note_send_error(stats, ConnectionRefusedError())  # an ICMP error: not a drop
        assert stats.refused == {"send buffer full": 2}
        t.close()

    asyncio.run(asyncio.wait_for(main(), 10))
