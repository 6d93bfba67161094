"""One swarm process (:class:`Worker`): its members, one TLS server, one timer heap.

Part of :mod:`smegmesh.testbed.swarm` (see there for what is real and what is
shared); started as ``python -m smegmesh.testbed.swarm --worker N``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import heapq
import json
import os
import random
import resource
import secrets
import signal
import time
from collections import OrderedDict
from pathlib import Path

from smegmesh.core.driver import EngineDriver
from smegmesh.core.invite import Bootstrap
from smegmesh.core.meshnode import Out
from smegmesh.core.messages import Refusal, WhoAmI
from smegmesh.core.wire import WireError, decode, encode
from smegmesh.daemon.engineport import DaemonPort, answer_who_am_i, reply_of
from smegmesh.daemon.rpc_dgram import BUCKET_BURST, BUCKET_RATE, DERIVE_BURST, DERIVE_RATE, KeyIds
from smegmesh.daemon.rpc_dgram_client import DatagramClient
from smegmesh.daemon.runtime import now_ms
from smegmesh.daemon.transport import (
    EndpointBackoff,
    Refused,
    RpcClient,
    RpcError,
    RpcServer,
    callee_key,
    caller_address,
)
from smegmesh.testbed.swarm_calls import CallsMixin
from smegmesh.testbed.swarm_churn import Churn
from smegmesh.testbed.swarm_plan import (
    CALL_TIMEOUT_S,
    COALESCE_S,
    STARTUP_RATE,
    SWEEP_S,
    TOKEN_TTL_MS,
    TOKEN_USES,
    Member,
    Plan,
    Stats,
    build_members,
    raise_server_limits,
)

#: The swarm's collector thresholds (generation 0 allocations, then collections
#: of the younger generation before an older one; CPython's default 700, 10, 10):
#: the oldest generation is never collected on its own (see ``Worker.run``).
GC_THRESHOLDS = (20_000, 20, 1_000_000_000)
#: Everything alive is moved out of the collector's scans this long after the
#: start, then every GC_REFREEZE_EVERY_S.
GC_REFREEZE_FIRST_S = 15.0
GC_REFREEZE_EVERY_S = 30.0


class Worker(CallsMixin):
    """One swarm process: its members, one TLS server, one timer heap."""

    def __init__(self, plan: Plan, proc: int, *, datagrams: bool = True) -> None:
        self.plan = plan
        self.proc = proc
        self.tls = plan.tls(proc)
        self.fps = {plan.tls(p).fingerprint: p for p in range(plan.procs)}
        members, self.keys = build_members(plan, proc)
        self.local = {m.identity.wg_public_key: m for m in members}
        self.members = members
        self.stats = Stats()
        self._heap: list[tuple[float, int]] = []
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # Datagrams (daemon/rpc_dgram.py) as smegd has them by default: the
        # members' outside calls share one UDP socket, the server answers for all.
        self.datagrams = DatagramClient() if datagrams else None
        # One channel per other swarm process; signed per call by the calling
        # member. Small calls between processes go by datagram as smegd's do
        # (far less CPU than a call on the channel), the rest over the channel.
        self.peer_client = RpcClient(
            members[0].identity, timeout=CALL_TIMEOUT_S, datagrams=self.datagrams
        )
        # The channel between two swarm processes carries every member's calls:
        # one timed-out call must not back all of them off (smegd backs off
        # per endpoint, i.e. per node; here the endpoint stands for thousands).
        self.peer_client.backoff = EndpointBackoff(base_s=0.0, cap_s=0.0)
        # Certificates the members have fetched, shared: in a settled mesh every
        # node has met every other before, so reopening a channel fetches nothing.
        self.certificates: OrderedDict[bytes, bytes] = OrderedDict()
        raise_server_limits(len(members))
        self.server = RpcServer(
            self.tls,
            self._on_rpc,
            is_member=members[0].node.is_member,
            datagram_keys=KeyIds(
                [(m.identity.wg_public_key, m.identity.wg_private_key) for m in members],
                members[0].node.members_by_id,
            )
            if datagrams
            else None,
        )
        self._gc_t0 = 0.0
        self.churn: Churn | None = None
        gc.callbacks.append(self._on_gc)
        for m in members:  # the daemon's port of the shared engine driver
            m.port = DaemonPort(functools.partial(self._send, m), lambda _keys: None)
            m.driver = EngineDriver(m.node, m.port)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        """Time the collector's passes (a pass stops the loop: timers run late)."""
        if phase == "start":
            self._gc_t0 = time.perf_counter()
            return
        ms = (time.perf_counter() - self._gc_t0) * 1e3
        self.stats.gc_ms += ms
        self.stats.gc_max_ms = max(self.stats.gc_max_ms, ms)
        self.stats.gc_full += info.get("generation") == 2

    # ------------------------------------------------------------------ scheduling
    def _schedule(self, m: Member) -> None:
        if m.down:
            return
        d = m.node.next_deadline()
        t = time.monotonic() + (1.0 if d is None else max(0.0, (d - now_ms()) / 1000))
        if m.wake_at and m.wake_at <= t and m.wake_at > time.monotonic():
            return  # an earlier wake-up is already queued
        m.wake_at = t
        heapq.heappush(self._heap, (t, m.index))
        if self._heap[0][1] == m.index:
            self._wake.set()

    async def run_timers(self) -> None:
        by_index = {m.index: m for m in self.members}
        # First ticks spread over N / STARTUP_RATE seconds (at least 1 s): a
        # thousand members ticking in the same second overran the loop, and
        # the late acks that followed set off a storm of suspicion.
        spread = max(1.0, len(self.members) / STARTUP_RATE)
        for m in self.members:
            m.wake_at = time.monotonic() + spread * random.random()
            heapq.heappush(self._heap, (m.wake_at, m.index))
        while True:
            now = time.monotonic()
            if self._heap and self._heap[0][0] <= now + COALESCE_S:
                self.stats.batches += 1
                lag = (now - self._heap[0][0]) * 1e3
                self.stats.lag_max_ms = max(self.stats.lag_max_ms, lag)
                self.stats.lag_recent_ms = max(self.stats.lag_recent_ms, lag)
                # Ticked as of the end of the coalescing window: a member due
                # within it is not ticked before its deadline (a tick for nothing).
                t_ms = now_ms() + int(COALESCE_S * 1000) + 1
                while self._heap and self._heap[0][0] <= now + COALESCE_S:
                    t, idx = heapq.heappop(self._heap)
                    m = by_index[idx]
                    if t != m.wake_at or m.down:
                        continue  # superseded by an earlier or later wake-up, or crashed
                    m.wake_at = 0.0
                    self.stats.ticks += 1
                    # late: this process was busy or not scheduled (as smegd's timer)
                    self._drv(m).timer(t_ms, max(0, int((now - t) * 1000)))
                    self._schedule(m)
                await asyncio.sleep(0)
                continue
            self._wake.clear()
            delay = self._heap[0][0] - now if self._heap else 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    @staticmethod
    def _drv(m: Member) -> EngineDriver:
        assert m.driver is not None
        return m.driver

    def _emit(self, m: Member, outs: list[Out]) -> None:
        """Outputs of a local command (start, invite): through the member's driver."""
        self._drv(m).dispatch(outs)
        self._schedule(m)

    async def _on_rpc(self, src: bytes, body: bytes) -> bytes:
        to = callee_key.get()
        m = self.local.get(to) if to is not None else None
        if m is None or m.down:
            raise Refused("no such member here (x-smeg-to), or it is down")
        return await self._serve(m, src, body, caller_address.get())

    async def _serve(self, m: Member, src: bytes, body: bytes, addr: str | None) -> bytes:
        self.stats.served += 1
        try:
            msg = decode(body)
        except WireError:
            raise Refused("malformed message") from None
        if isinstance(msg, WhoAmI):
            return answer_who_am_i(msg, addr)
        if not m.node.tags.names(getattr(msg, "mesh_id", None)):
            return encode(Refusal(str(getattr(msg, "mesh_id", "x"))))
        assert m.port is not None
        pending = m.port.request(self._drv(m), src, msg, now_ms())  # the engine answers now...
        self._schedule(m)
        reply = await reply_of(pending)  # ...or after its relayed ping (a PingReq)
        if reply is None:
            raise Refused("no answer")
        return encode(reply)

    async def _refreeze(self) -> None:
        delay = GC_REFREEZE_FIRST_S
        while True:
            await asyncio.sleep(delay)
            delay = GC_REFREEZE_EVERY_S
            # No collection first: one of the oldest generation stops the loop
            # for ~0.8 s at 3,000 members. The cycles frozen with the rest are
            # a few tasks' worth, against the 1.4 GB of members' state.
            gc.freeze()

    async def sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(SWEEP_S, self.plan.channel_idle_s / 2))
            for m in self.members:
                if m.client is not None and m.client.open_channels:
                    m.client.sweep()
            self.peer_client.sweep()

    # ------------------------------------------------------------------ main
    def write_token(self) -> None:
        m = self.members[0]
        t = now_ms()
        self._emit(m, m.node.start(t))
        rec = m.node.mesh.record(m.identity.wg_public_key)
        assert rec is not None and rec.control_endpoint and rec.tls_fp
        token, outs = m.node.invite(
            t,
            ttl_ms=TOKEN_TTL_MS,
            uses=TOKEN_USES,
            bootstrap=[Bootstrap(rec.control_endpoint, rec.tls_fp, m.identity.wg_public_key)],
            secret=secrets.token_bytes(16),
        )
        self._emit(m, outs)
        _atomic(self.plan.directory / "mesh_id", self.plan.mesh_id)  # before the token
        _atomic(self.plan.directory / "token", token.encode())

    def write_stats(self) -> None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        live = len(self.members[0].node.live_records())
        doc = {
            "proc": self.proc,
            "members": len(self.members),
            "live_seen_by_first": live,
            "cpu_s": ru.ru_utime + ru.ru_stime,
            "rss_mb": _rss_mb(),
            "fds": len(os.listdir("/proc/self/fd")),
            "tasks": len(self._tasks),
            "crashes": self.churn.crashes if self.churn else 0,
            "restarts": self.churn.restarts if self.churn else 0,
            **vars(self.stats),
        }
        ds = self.server.datagrams  # what the datagram paths refused and fell back on
        if ds is not None:
            doc["datagram_refused"] = dict(ds.stats.refused)
        if self.datagrams is not None:
            doc["datagram_calls"] = dict(self.datagrams.stats.fallbacks)
        _atomic(self.plan.directory / f"stats-{self.proc}.json", json.dumps(doc))
        self.stats.lag_recent_ms = 0.0

    async def _barrier(self, name: str) -> None:
        """Mark this process as ``name`` and wait until every process is."""
        _atomic(self.plan.directory / f"{name}-{self.proc}", "1")
        others = [self.plan.directory / f"{name}-{p}" for p in range(self.plan.procs)]
        while not all(f.exists() for f in others):
            await asyncio.sleep(0.1)

    async def _link_others(self, deadline_s: float = 60.0) -> None:
        """One answered call to each other process, over the shared channel."""
        me = self.members[0]
        end = time.monotonic() + deadline_s
        for p in range(self.plan.procs):
            if p == self.proc:
                continue
            to = next(k for k, i in self.keys.items() if self.plan.proc_of(i) == p)
            body = encode(WhoAmI(self.plan.mesh_id))
            fp = self.plan.tls(p).fingerprint
            while True:
                try:
                    await self.peer_client.call(
                        f"127.0.0.1:{self.plan.base_port + p}",
                        fp,
                        body,
                        to=to,
                        identity=me.identity,
                    )
                    break
                except RpcError:
                    if time.monotonic() > end:
                        raise
                    await asyncio.sleep(0.2)

    async def run(self) -> None:
        await self.server.start("0.0.0.0", self.plan.base_port + self.proc)
        if self.server.datagrams is not None:
            # One server speaks for every member of the process: the pairs of
            # keys are members x callers (a smegd's budget is for one identity).
            n = len(self.members)
            self.server.datagrams.set_derive_budget(DERIVE_RATE * n, DERIVE_BURST * n)
            # Every member of another swarm process sends its datagrams from that
            # process's one address: the per-address bucket stands for n nodes.
            # (It was a module constant changed here, which the server stopped
            # reading when its buckets took their budget as arguments: members
            # of two processes dropped each other's datagrams and suspected
            # each other, 3,400 refused in 30 s at 300 members.)
            self.server.datagrams.set_address_budget(BUCKET_RATE * 4 * n, BUCKET_BURST * 4 * n)
        # No member calls before every process serves: calls into a process not
        # yet listening would fail, and the failures start a storm of suspicion.
        await self._barrier("ready")
        # Then every link between processes is opened (certificate fetched, TLS
        # up) before any member ticks: the first calls of 1,000 members must not
        # all wait on one handshake and time out (that started a storm of
        # suspicion between the halves of a loaded swarm).
        await self._link_others()
        await self._barrier("linked")
        gc.collect()
        gc.freeze()  # the shared base state is long-lived: keep it out of the collector's scans
        # Thousands of members allocate fast and keep what they allocate (each
        # copies its views and state as it changes): at the default thresholds
        # the oldest generation of a 3,000-member process (1.4 GB) was scanned
        # every ~1.7 s for ~0.7 s each time, 60 % of the process's CPU, and the
        # pauses made timers late and probes time out (at 20,000 / 20 / 100
        # still 7 s in a minute after a join). Collections are kept for the
        # young generations; the old one is never scanned, and what reaches it
        # is frozen every 30 s (the cycles among it leak: a few tasks' worth
        # against the members' state; a swarm runs for minutes).
        gc.set_threshold(*GC_THRESHOLDS)
        if self.proc == 0:
            self.write_token()
        self._spawn(self.sweep_loop())
        self._spawn(self._refreeze())
        timers = asyncio.create_task(self.run_timers())
        try:
            while True:
                self.write_stats()
                await asyncio.sleep(1.0)
                if self.churn is None:
                    self.churn = Churn.if_asked(self.plan, self.members, self._send, self._schedule)
                    if self.churn is not None:
                        self._spawn(self.churn.run())
        finally:
            timers.cancel()
            await self.server.stop(0)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def worker_main(a: argparse.Namespace) -> int:
    plan = Plan(
        a.members,
        a.procs,
        a.base_port,
        a.seed,
        a.t0,
        Path(a.dir),
        a.channel_idle,
        a.churn_per_min,
        a.churn_downtime,
        a.authority,
        getattr(a, "dissemination", "gossip"),
    )
    worker = Worker(plan, a.worker, datagrams=not getattr(a, "no_datagrams", False))
    loop = asyncio.new_event_loop()
    main = loop.create_task(worker.run())

    def _stop() -> None:
        main.cancel()
        loop.call_later(5.0, os._exit, 0)  # a stuck shutdown does not keep the process

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(main)
    return 0
