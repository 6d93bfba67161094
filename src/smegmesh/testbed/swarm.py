"""A swarm: thousands of mesh members in a few processes, for measuring real daemons at scale.

``python -m smegmesh.testbed.swarm --members 3000 --procs 2 --dir /tmp/swarm`` starts
``--procs`` worker processes that together host ``--members`` members of one
mesh, each a real :class:`~smegmesh.core.meshnode.MeshNode` (the same engine
as smegd: gossip, SWIM with local health, anti-entropy, invitations). The
swarm writes an invitation token to ``DIR/token``; ordinary ``smegd``
processes join with it (``smegctl join-mesh``) and are then measured as
members of a mesh of ``--members`` + 1 nodes.

What is real, what is shared (docs/SCALE.md, "The swarm", says more):

* **Towards a smegd, every member is a node of its own**: its own record
  (signed by its own identity), its own control endpoint (``127.S.x.y:PORT``:
  a distinct loopback address per member, so the smegd keeps one channel per
  member it calls, as it would with real nodes), its own
  :class:`~smegmesh.daemon.transport.RpcClient` (its own pinned channels, cap
  and idle close: the smegd sees one inbound connection per member that
  called it recently), per-call signatures by its own key.
* **Shared per process**: one event loop; one gRPC TLS server on
  ``0.0.0.0:PORT`` that accepts every member's address and routes a call by
  the ``x-smeg-to`` hint (so members of a process share one TLS certificate:
  their records pin the same fingerprint); one timer heap for all members
  (a member is ticked at its own deadline, due ticks run in one batch).
* **Between members**: calls inside a process are delivered in process
  (encoded and decoded with ``core.wire``, no socket); calls to a member of
  another swarm process go over one pinned channel per process pair (real TLS,
  real per-call signatures). So swarm members do not pay for N² connections;
  only the daemons under measurement do.
* **Start**: every member starts holding every member's record (the settled
  state after the joins, built once and cloned copy-on-write, as the
  simulator does); only the measured daemons join through invitations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import heapq
import json
import logging
import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smegmesh.core.endpoint import split_host_port
from smegmesh.core.gossip import GossipParams
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.invite import Bootstrap
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.meshnode import Call, MeshNode, MeshSettings, Out, Relay
from smegmesh.core.messages import Ack, Refusal, WhoAmI, YouAre
from smegmesh.core.record import NodeRecord, Role
from smegmesh.core.wire import WireError, decode, encode
from smegmesh.daemon import transport
from smegmesh.daemon.transport import (
    EndpointBackoff,
    Refused,
    RpcClient,
    RpcError,
    RpcServer,
    TlsIdentity,
    callee_key,
    caller_address,
)
from smegmesh.sim.simulator import _prime_views
from smegmesh.sim.state import clone_state, node_seed, steady_state

log = logging.getLogger("smegmesh.swarm")

MESH_ID = "swarm"
#: seconds a call may take (smegd's default ``timeout``)
CALL_TIMEOUT_S = 5.0
#: how often member clients with open channels are swept for idle ones
SWEEP_S = 5.0
#: due ticks closer than this are run in one batch (timer coalescing)
COALESCE_S = 0.005
TOKEN_TTL_MS = 86_400_000
#: members whose first tick is started per second (see ``run_timers``)
STARTUP_RATE = 100.0
TOKEN_USES = 1000


def member_address(proc: int, j: int) -> str:
    """The loopback address of member ``j`` of process ``proc``: ``127.(16+proc).x.y``."""
    return f"127.{16 + proc}.{j // 250}.{j % 250 + 1}"


@dataclass(frozen=True)
class Plan:
    members: int
    procs: int
    base_port: int
    seed: int
    t0: int
    directory: Path
    #: members' idle close of their channels to outside nodes (smegd's: 60 s)
    channel_idle_s: float = 60.0

    def proc_of(self, i: int) -> int:
        return i % self.procs

    def endpoint(self, i: int) -> str:
        p = i % self.procs
        return f"{member_address(p, i // self.procs)}:{self.base_port + p}"

    def tls(self, proc: int) -> TlsIdentity:
        return TlsIdentity.load_or_create(self.directory / f"tls-{proc}")


@dataclass(slots=True)
class Member:
    index: int
    identity: NodeIdentity
    node: MeshNode
    wake_at: float = 0.0
    client: RpcClient | None = None  # calls to nodes outside the swarm (made on first use)


@dataclass
class Stats:
    local_calls: int = 0
    cross_calls: int = 0
    external_calls: int = 0
    served: int = 0
    failures: int = 0
    ticks: int = 0
    batches: int = 0
    lag_max_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def build_members(plan: Plan, proc: int) -> tuple[list[Member], dict[bytes, int]]:
    """This process's members (every one holding every record) and the key -> index map."""
    ids = [NodeIdentity.from_seed(node_seed(plan.seed, i)) for i in range(plan.members)]
    fps = [plan.tls(p).fingerprint for p in range(plan.procs)]
    recs = [
        NodeRecord.create(
            ident,
            MESH_ID,
            version=plan.t0,
            now_ms=plan.t0,
            role=Role.PEER,
            wg_endpoint=f"{plan.endpoint(i).rpartition(':')[0]}:51820",
            control_endpoint=plan.endpoint(i),
            tls_fp=fps[plan.proc_of(i)],
        )
        for i, ident in enumerate(ids)
    ]
    base = steady_state(MESH_ID, None, recs, plan.t0)
    gossip, liveness = GossipParams(), LivenessParams.from_heartbeat(2000)
    members: list[Member] = []
    for i in range(proc, plan.members, plan.procs):
        node = MeshNode(
            ids[i],
            MESH_ID,
            MeshSettings(
                role=Role.PEER,
                wg_endpoint=recs[i].wg_endpoint,
                control_endpoint=recs[i].control_endpoint,
                tls_fp=fps[proc],
            ),
            gossip,
            liveness,
            random.Random(f"swarm/{plan.seed}/{i}"),
            clone_state(base),
        )
        members.append(Member(i, ids[i], node))
    # Equal clones have equal O(N) views: computed once, shared until a member's state changes.
    _prime_views([m.node for m in members])
    keys = {ident.wg_public_key: i for i, ident in enumerate(ids)}
    return members, keys


def now_ms() -> int:
    return int(time.time() * 1000)


class Worker:
    """One swarm process: its members, one TLS server, one timer heap."""

    def __init__(self, plan: Plan, proc: int) -> None:
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
        # One channel per other swarm process; signed per call by the calling member.
        self.peer_client = RpcClient(members[0].identity, timeout=CALL_TIMEOUT_S)
        # The channel between two swarm processes carries every member's calls:
        # one timed-out call must not back all of them off (smegd backs off
        # per endpoint, i.e. per node; here the endpoint stands for thousands).
        self.peer_client.backoff = EndpointBackoff(base_s=0.0, cap_s=0.0)
        # Certificates the members have fetched, shared: in a settled mesh every
        # node has met every other before, so reopening a channel fetches nothing.
        self.certificates: OrderedDict[bytes, bytes] = OrderedDict()
        self.server = RpcServer(self.tls, self._on_rpc, is_member=members[0].node.is_member)

    # ------------------------------------------------------------------ scheduling
    def _schedule(self, m: Member) -> None:
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
                self.stats.lag_max_ms = max(self.stats.lag_max_ms, (now - self._heap[0][0]) * 1e3)
                # Ticked as of the end of the coalescing window: a member due
                # within it is not ticked before its deadline (a tick for nothing).
                t_ms = now_ms() + int(COALESCE_S * 1000) + 1
                while self._heap and self._heap[0][0] <= now + COALESCE_S:
                    t, idx = heapq.heappop(self._heap)
                    m = by_index[idx]
                    if t != m.wake_at:
                        continue  # superseded by an earlier or later wake-up
                    m.wake_at = 0.0
                    self.stats.ticks += 1
                    self._emit(m, m.node.tick(t_ms))
                await asyncio.sleep(0)
                continue
            self._wake.clear()
            delay = self._heap[0][0] - now if self._heap else 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    def _emit(self, m: Member, outs: list[Out]) -> None:
        loop = asyncio.get_running_loop()
        for o in outs:
            if isinstance(o, Call):
                if o.to in self.local:  # no task: delivered on the next loop turn
                    loop.call_soon(self._local_call, m, o)
                else:
                    self._spawn(self._do_call(m, o))
        self._schedule(m)

    def _local_call(self, m: Member, call: Call) -> None:
        """A call between two members of this process, encoded and decoded as on the wire."""
        self.stats.local_calls += 1
        self.stats.served += 1
        target = self.local[call.to]
        try:
            msg = decode(encode(call.msg))
        except WireError:
            self._emit(m, m.node.handle_failure(call.to, call.ctx, now_ms()))
            return
        reply, outs = target.node.handle_request(m.identity.wg_public_key, msg, now_ms())
        self._emit(target, outs)
        if isinstance(reply, Relay):  # the helper pings the target: asynchronous
            self._spawn(self._do_call_reply(m, call, self._relay(target, reply)))
            return
        answer = decode(encode(reply))
        asyncio.get_running_loop().call_soon(
            lambda: self._emit(m, m.node.handle_reply(call.to, call.ctx, answer, now_ms()))
        )

    async def _relay(self, helper: Member, reply: Relay) -> bytes:
        ok = False
        try:
            r = decode(
                await self.call_as(
                    helper,
                    reply.target,
                    encode(reply.msg),
                    helper.node.liveness.probe_timeout_ms / 1000,
                )
            )
            ok = isinstance(r, Ack) and r.ok
        except (RpcError, WireError):
            ok = False
        return encode(Ack(MESH_ID, reply.msg.probe_id, ok))

    async def _do_call_reply(self, m: Member, call: Call, pending: Any) -> None:
        try:
            reply = decode(await pending)
        except (RpcError, WireError):
            self._emit(m, m.node.handle_failure(call.to, call.ctx, now_ms()))
            return
        self._emit(m, m.node.handle_reply(call.to, call.ctx, reply, now_ms()))

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ calls
    async def call_as(
        self, m: Member, to: bytes, body: bytes, timeout: float | None = None
    ) -> bytes:
        """Send ``body`` from member ``m`` to node ``to``; raises RpcError."""
        target = self.local.get(to)
        if target is not None:
            self.stats.local_calls += 1
            await asyncio.sleep(0)  # as a socket would: the reply comes later
            return await self._serve(target, m.identity.wg_public_key, body, None)
        rec = m.node.mesh.record(to)
        if rec is None or rec.control_endpoint is None or rec.tls_fp is None:
            raise RpcError("no endpoint")
        proc = self.fps.get(rec.tls_fp)
        if proc is not None and to in self.keys:  # another swarm process: its shared channel
            self.stats.cross_calls += 1
            port = split_host_port(rec.control_endpoint)[1]
            return await self.peer_client.call(
                f"127.0.0.1:{port}", rec.tls_fp, body, timeout, to=to, identity=m.identity
            )
        self.stats.external_calls += 1
        if m.client is None:
            m.client = RpcClient(
                m.identity,
                timeout=CALL_TIMEOUT_S,
                channel_idle_s=self.plan.channel_idle_s,
                certificates=self.certificates,
            )
        return await m.client.call(rec.control_endpoint, rec.tls_fp, body, timeout, to=to)

    async def _do_call(self, m: Member, call: Call) -> None:
        try:
            reply = decode(await self.call_as(m, call.to, encode(call.msg)))
        except (RpcError, WireError) as e:
            self.stats.failures += 1
            self.stats.extra["last_failure"] = str(e)[:200]
            self._emit(m, m.node.handle_failure(call.to, call.ctx, now_ms()))
            return
        self._emit(m, m.node.handle_reply(call.to, call.ctx, reply, now_ms()))

    async def _on_rpc(self, src: bytes, body: bytes) -> bytes:
        to = callee_key.get()
        m = self.local.get(to) if to is not None else None
        if m is None:
            raise Refused("no such member here (x-smeg-to)")
        return await self._serve(m, src, body, caller_address.get())

    async def _serve(self, m: Member, src: bytes, body: bytes, addr: str | None) -> bytes:
        self.stats.served += 1
        try:
            msg = decode(body)
        except WireError:
            raise Refused("malformed message") from None
        if isinstance(msg, WhoAmI):
            if addr is None:
                raise Refused("address unknown")
            return encode(YouAre(msg.mesh_id, addr))
        if getattr(msg, "mesh_id", None) != MESH_ID:
            return encode(Refusal(str(getattr(msg, "mesh_id", "x"))))
        reply, outs = m.node.handle_request(src, msg, now_ms())
        self._emit(m, outs)
        if isinstance(reply, Relay):
            return await self._relay(m, reply)
        return encode(reply)

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
        )
        self._emit(m, outs)
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
            **vars(self.stats),
        }
        _atomic(self.plan.directory / f"stats-{self.proc}.json", json.dumps(doc))

    def _raise_server_limits(self) -> None:
        """One server stands for all members of the process: its limits scale with them.

        smegd's limits (calls in flight, streams per connection) are per node;
        here every member's share goes through one server and, between swarm
        processes, one connection. Per-caller limits stay as they are.
        """
        n = len(self.members)
        transport.MAX_CALLS = max(transport.MAX_CALLS, 8 * n)
        streams = max(transport.MAX_STREAMS_PER_CONNECTION, 8 * n)
        transport._SERVER_OPTIONS = [
            (k, streams if k == "grpc.max_concurrent_streams" else v)
            for k, v in transport._SERVER_OPTIONS
        ]

    async def run(self) -> None:
        self._raise_server_limits()
        await self.server.start("0.0.0.0", self.plan.base_port + self.proc)
        # No member calls before every process serves: calls into a process not
        # yet listening would fail, and the failures start a storm of suspicion.
        _atomic(self.plan.directory / f"ready-{self.proc}", "1")
        others = [self.plan.directory / f"ready-{p}" for p in range(self.plan.procs)]
        while not all(f.exists() for f in others):
            await asyncio.sleep(0.1)
        gc.collect()
        gc.freeze()  # the shared base state is long-lived: keep it out of the collector's scans
        if self.proc == 0:
            self.write_token()
        self._spawn(self.sweep_loop())
        timers = asyncio.create_task(self.run_timers())
        try:
            while True:
                self.write_stats()
                await asyncio.sleep(1.0)
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


def _worker_main(a: argparse.Namespace) -> int:
    plan = Plan(a.members, a.procs, a.base_port, a.seed, a.t0, Path(a.dir), a.channel_idle)
    worker = Worker(plan, a.worker)
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


def start_swarm(
    directory: Path,
    members: int,
    procs: int = 2,
    base_port: int = 47100,
    seed: int = 1,
    *,
    channel_idle_s: float = 60.0,
) -> list[subprocess.Popen[bytes]]:
    """Start the worker processes (returns at once; ``DIR/token`` appears when ready)."""
    directory.mkdir(parents=True, exist_ok=True)
    for p in range(procs):  # certificates first: every worker pins every other's
        d = directory / f"tls-{p}"
        d.mkdir(exist_ok=True)
        TlsIdentity.load_or_create(d)
    for f in [directory / "token", *directory.glob("stats-*.json"), *directory.glob("ready-*")]:
        f.unlink(missing_ok=True)
    t0 = now_ms()
    common = [
        sys.executable,
        "-m",
        "smegmesh.testbed.swarm",
        "--members",
        str(members),
        "--procs",
        str(procs),
        "--base-port",
        str(base_port),
        "--seed",
        str(seed),
        "--dir",
        str(directory),
        "--t0",
        str(t0),
        "--channel-idle",
        str(channel_idle_s),
    ]
    return [
        subprocess.Popen([*common, "--worker", str(p)], start_new_session=True)
        for p in range(procs)
    ]


def stop_swarm(procs: list[subprocess.Popen[bytes]], timeout: float = 20) -> None:
    """Stop the workers (SIGTERM, then SIGKILL after ``timeout``)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def read_stats(directory: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted(directory.glob("stats-*.json")):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(f.read_text()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m smegmesh.testbed.swarm", description=__doc__)
    ap.add_argument("--members", type=int, required=True)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--base-port", type=int, default=47100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", default="/tmp/smeg-swarm")
    ap.add_argument(
        "--channel-idle",
        type=float,
        default=60.0,
        help="seconds before a member closes an idle channel to an outside node (smegd: 60)",
    )
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--t0", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.members < 2 or a.procs < 1 or a.members < a.procs:
        ap.error("need --members >= 2 and at least one member per process")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s swarm %(message)s")
    if a.worker is not None:
        return _worker_main(a)
    d = Path(a.dir)
    procs = start_swarm(d, a.members, a.procs, a.base_port, a.seed, channel_idle_s=a.channel_idle)
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    announced = False
    try:
        while not stop and all(p.poll() is None for p in procs):
            if not announced and (d / "token").exists():
                print(f"swarm of {a.members} members ready; token in {d / 'token'}", flush=True)
                announced = True
            time.sleep(0.5)
    finally:
        stop_swarm(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
