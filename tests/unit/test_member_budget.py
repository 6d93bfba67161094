"""A budget per member of request bytes and calls (daemon/member_budget.py).

A member turned bad sending 1 MiB pushes without end kept the receiving daemon
at 87 % of a core (bench/abuse_bench.py --only member-forged, nineteenth
session); one sending pings, 16 at a time, made 1,886 calls a second, all
answered, and kept it at 107 % (--only member-calls, twentieth session)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from smegmesh.core.identity import NodeIdentity
from smegmesh.daemon.member_budget import OVER_BUDGET_DELAY_S, OVER_CALL_BUDGET, MemberBudget
from smegmesh.daemon.transport import RpcClient, RpcError, RpcServer, TlsIdentity

KIB = 1024


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_large_requests_wait_for_the_budget_small_ones_only_past_a_burst_of_debt() -> None:
    clock = Clock()
    b = MemberBudget(rate=100 * KIB, burst=300 * KIB, small=16 * KIB, clock=clock)
    alice, bob = b"a" * 32, b"b" * 32
    assert [b.admit(alice, 120 * KIB) for _ in range(4)] == [True, True, True, False]
    assert b.admit(bob, 120 * KIB)  # another member has its own budget
    # small ones (pings, acks, offers) go on until the debt is a whole burst
    small = [b.admit(alice, 16 * KIB) for _ in range(20)]
    assert small[:15] == [True] * 15 and not all(small)
    assert b.refused == 1 + small.count(False)
    clock.t += 10.0  # refilled (up to the burst) at the rate
    assert b.admit(alice, 120 * KIB) and b.admit(alice, 16 * KIB)


def test_calls_are_counted_whatever_their_size() -> None:
    clock = Clock()
    b = MemberBudget(call_rate=10.0, call_burst=50.0, clock=clock)
    alice, bob = b"a" * 32, b"b" * 32
    assert all(b.admit(alice, 40) for _ in range(50))
    assert b.charge(alice, 40) == OVER_CALL_BUDGET and b.refused == 1
    assert b.admit(bob, 40)  # another member has its own count
    clock.t += 1.0  # refilled at the rate
    assert [b.admit(alice, 40) for _ in range(11)] == [True] * 10 + [False]


def test_the_default_call_budget_leaves_room_for_an_honest_member() -> None:
    """What honest members were measured to need from one node: 17 calls in the
    busiest second of simulated partition heals (100 to 300 nodes, twentieth
    session's review), ~150 steps in a row for a heal's chain of sync sessions
    at 3,000 members; with a margin of 5 and 2. Fails if the defaults drop below."""
    from smegmesh.daemon.member_budget import CALL_BURST, CALL_RATE

    assert CALL_RATE >= 5 * 17 and CALL_BURST >= 2 * 150 + CALL_RATE
    clock = Clock()
    b = MemberBudget(clock=clock)
    for _second in range(60):  # a minute at the busiest honest rate, never refused
        assert all(b.admit(b"a" * 32, 100) for _ in range(17))
        clock.t += 1.0


def test_members_tracked_are_bounded() -> None:
    b = MemberBudget(max_keys=100)
    for i in range(1_000):
        assert b.admit(i.to_bytes(32, "big"), 1)
    assert len(b._buckets) == 100 and len(b._calls) == 100


def test_a_member_past_its_budget_is_refused_before_its_body_is_read_and_pings_still_pass() -> None:
    """Over a real transport: past the budget a member's large calls get
    RESOURCE_EXHAUSTED after OVER_BUDGET_DELAY_S (the handler never sees them),
    its small calls are still answered, and another member is served as before."""
    seen: list[int] = []

    async def handler(_src: bytes, body: bytes) -> bytes:
        seen.append(len(body))
        return b"ok"

    async def main() -> None:
        tls = TlsIdentity.generate()
        server = RpcServer(tls, handler)
        server.budget = MemberBudget(rate=1.0, burst=200 * KIB)
        ep = f"[::1]:{await server.start('::1', 0)}"
        bad = RpcClient(NodeIdentity.generate(os.urandom), timeout=5)
        good = RpcClient(NodeIdentity.generate(os.urandom), timeout=5)
        big = os.urandom(150 * KIB)
        try:
            assert await bad.call(ep, tls.fingerprint, big) == b"ok"
            assert await bad.call(ep, tls.fingerprint, big) == b"ok"
            t0 = time.monotonic()
            with pytest.raises(RpcError, match="RESOURCE_EXHAUSTED"):
                await bad.call(ep, tls.fingerprint, big)
            assert time.monotonic() - t0 >= OVER_BUDGET_DELAY_S  # held, not a busy loop
            assert seen == [150 * KIB] * 2  # the refused body was never read
            assert await bad.call(ep, tls.fingerprint, b"ping") == b"ok"
            assert await good.call(ep, tls.fingerprint, big) == b"ok"
        finally:
            await bad.close()
            await good.close()
            await server.stop(0)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_member_past_its_call_budget_is_refused_and_another_member_is_served() -> None:
    """Over a real transport: a member's small calls past its call budget get
    RESOURCE_EXHAUSTED (the handler never sees them), held in its slot first."""
    seen: list[bytes] = []

    async def handler(_src: bytes, body: bytes) -> bytes:
        seen.append(body)
        return b"ok"

    async def main() -> None:
        tls = TlsIdentity.generate()
        server = RpcServer(tls, handler)
        server.budget = MemberBudget(call_rate=0.1, call_burst=5.0)
        ep = f"[::1]:{await server.start('::1', 0)}"
        bad = RpcClient(NodeIdentity.generate(os.urandom), timeout=5)
        good = RpcClient(NodeIdentity.generate(os.urandom), timeout=5)
        try:
            for _ in range(5):
                assert await bad.call(ep, tls.fingerprint, b"ping") == b"ok"
            t0 = time.monotonic()
            with pytest.raises(RpcError, match=f"RESOURCE_EXHAUSTED.*{OVER_CALL_BUDGET}"):
                await bad.call(ep, tls.fingerprint, b"ping")
            assert time.monotonic() - t0 >= OVER_BUDGET_DELAY_S
            assert len(seen) == 5
            assert await good.call(ep, tls.fingerprint, b"ping") == b"ok"
        finally:
            await bad.close()
            await good.close()
            await server.stop(0)

    asyncio.run(asyncio.wait_for(main(), 30))
