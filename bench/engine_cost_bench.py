"""The protocol engine's cost per message and per tick, by mesh size (issue 14).

    uv run python bench/engine_cost_bench.py [--sizes 300,1000,3000] [--reps 200]
                                             [--count-reps 30] [--seed 1] [--json FILE]

Prints the tables and plots each operation's ratio (largest size over
smallest) to ``bench/out/engine_cost.png``.

Issue 14 asks for no O(N) work per message or per tick (N: members of the
mesh), changes of membership included (docs/SCALE.md, engine hot spots 8
and 9). For each size N, one real ``MeshNode`` (a peer, product
gossip defaults, heartbeat 2 s) holds a settled state of N signed member
records (``smegmesh.sim.state.make_population``: real ``NodeRecord.create``
records signed by ``NodeIdentity.from_seed`` identities; the node's state is
an ordinary ``MeshState``, not the simulator's copy-on-write clone, and it
verifies the signatures of what arrives, as a daemon's does). Every message
given to it went through the wire codec first (decoded objects, as a daemon
receives them). Each operation runs on a node of its own, built fresh from the
settled state, so one operation's leftovers do not bill another.

Per operation and size, four costs:

* **time**: median wall time of ``--reps`` runs (``time.perf_counter_ns``;
  what each run needs, such as signing a member's new record, is prepared
  untimed before it);
* **calls**: Python function calls per run (``call`` and ``c_call`` profile
  events: Python functions, builtins and C methods, generator resumptions),
  mean of ``--count-reps`` runs after the timed ones. Deterministic for a seed;
* **lines**: Python lines executed per run (``line`` trace events, mean of the
  same runs). Deterministic; catches a loop inside a comprehension, which is
  one call however long it runs;
* **alloc**: the peak of memory allocated during a run, above what was held
  before it (``tracemalloc``; median of ``--count-reps`` more runs). Work done
  in C over a whole collection (``list(big)``, ``dict(big)``, ``set(big)``) is
  one call and one line, and shows here (and in the time) only. (A constant
  256 KiB is msgpack's packing buffer: an item or message encoded.)

The ratio is the largest size's cost over the smallest's; ``<- grows`` marks a
ratio above 1.5.

Operations (all from a member ``src``, to the node under test):

* ``ping``: a ``Ping`` request;
* ``push fresh (author)``: a ``Push`` (hops 0) of a member's new version of its
  record, sent by that member (not a change of membership);
* ``push fresh (fwd)``: the same item forwarded (hops 6: past the first hops,
  so the node pushes it to ``full_push`` targets and offers it to the rest);
* ``push not news``: a ``Push`` of a record the node holds already;
* ``offer 8``: an ``Offer`` of 8 entries (4 newer than held: wanted; 4 equal);
* ``want reply``: the ``Want`` answering our offer of 8 keys (4 wanted by id),
  through ``ReplyReceived`` with an ``OfferCtx``;
* ``sync start (in sync)``: a ``SyncStart`` whose digest equals ours (responder);
* ``sync end (in sync)``: the ``SyncEnd`` answering our own ``SyncStart``
  (initiator, ``SyncCtx``);
* ``sync session, 1 key differs``: a whole anti-entropy session started by a
  member holding one record newer than ours (our node answers every step;
  the initiator's side, O(log N) too, is in the figures);
* ``tick idle``: ``TimerFired`` at ``next_deadline()`` with nothing fresh
  (probes, gossip rounds, pulls; the probes are acked, untimed);
* ``tick 4 fresh``: the gossip round after 4 members pushed new versions (the
  pushes untimed);
* ``client tick idle``: the same node as a client (it gossips only with its
  assigned peer and a spare, chosen by rendezvous hashing over the peers);
* ``MEMBERSHIP: push prune``: a ``Push`` of another member's prune of a member
  (a change of membership), the member's refutation applied untimed after it;
* ``MEMBERSHIP: push refute``: that member's refutation (it is back);
* ``MEMBERSHIP: tick after``: the first tick after a prune (the failure
  detector and the gossip clusters see the new member list then);
* ``MEMBERSHIP: client push prune``: ``push prune`` on a client (its
  rendezvous order of the peers loses one).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from smegmesh.core import wire
from smegmesh.core.engine import (
    Call,
    Input,
    OfferCtx,
    Out,
    ProbeCtx,
    ReplyReceived,
    RequestReceived,
    Respond,
    SyncCtx,
    TimerFired,
)
from smegmesh.core.gossip import GossipParams
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.meshnode import MeshNode, MeshSettings
from smegmesh.core.messages import Ack, Ping
from smegmesh.core.offer import KEY_ID_LEN, OFFER_HASH_LEN, Offer, OfferEntry, Push, Want
from smegmesh.core.paging import item_bytes
from smegmesh.core.record import NodeRecord, Prune, Role
from smegmesh.core.sync import SyncEnd, SyncSession
from smegmesh.sim.state import clone_state, make_population

MESH = "bench"
T0 = 1_700_000_000_000
DEFAULT_SIZES = (300, 1000, 3000)
T = TypeVar("T")


# -- counting ------------------------------------------------------------------------------
@dataclass
class Counts:
    """Profile and trace events seen while counting, and the peak of what was allocated."""

    calls: int = 0
    lines: int = 0
    peak_bytes: int = 0


def peak_alloc(fn: Callable[[], T]) -> tuple[int, T]:
    """Run ``fn`` once: the most memory it held allocated at once (bytes), and its result."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = fn()
        return max(0, tracemalloc.get_traced_memory()[1] - base), out
    finally:
        if not was_tracing:
            tracemalloc.stop()


def counted(fn: Callable[[], T]) -> tuple[Counts, T]:
    """Run ``fn`` once: its Python calls (``call``/``c_call``) and lines executed, its result."""
    c = Counts()

    def prof(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" or event == "c_call":
            c.calls += 1

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line":
            c.lines += 1
        return trace

    old_profile, old_trace = sys.getprofile(), sys.gettrace()  # a coverage tool's, say
    sys.setprofile(prof)
    sys.settrace(trace)
    try:
        out = fn()
    finally:
        sys.settrace(old_trace)
        sys.setprofile(old_profile)
    return c, out


# -- the node under test -------------------------------------------------------------------
@dataclass
class Fixture:
    """One node (member 0) of a settled mesh of ``n`` members, and its members' identities."""

    n: int
    node: MeshNode
    ids: list[NodeIdentity]
    current: list[NodeRecord]  # the newest record of every member
    rng: random.Random  # the bench's own draws (sources, targets)
    now: int = T0 + 1_000
    rid: int = 0
    scratch: dict[str, Any] = field(default_factory=dict)

    def src(self) -> int:
        """A random member other than the node (its index)."""
        return self.rng.randrange(1, self.n)

    def key(self, i: int) -> bytes:
        return self.ids[i].wg_public_key

    def request(self, src: int, msg: Any) -> Input:
        self.rid += 1
        return RequestReceived(self.key(src), msg, self.now, self.rid)

    def fresh(self, i: int) -> NodeRecord:
        """Member ``i``'s next version (signed now; not yet held by the node)."""
        rec = self.current[i].evolve(self.ids[i], self.now)
        self.current[i] = rec
        return rec

    def settle(self, outs: list[Out]) -> None:
        """Answer the node's probes (untimed): nobody becomes suspect."""
        for o in outs:
            if isinstance(o, Call) and isinstance(o.ctx, ProbeCtx):
                self.node.handle_reply(o.to, o.ctx, Ack(MESH, o.ctx.probe_id, True), self.now)


def _views(node: MeshNode) -> None:
    """Bring the node's views up to date, as its next message would, without
    handing them out (``MeshNode.views()`` would: its next update then copies)."""
    node._views()


def via_wire(msg: Any) -> Any:
    """``msg`` as a daemon receives it: encoded, then decoded (new objects)."""
    return wire.decode(wire.encode(msg))


def build(n: int, seed: int) -> Fixture:
    """A fresh node of a settled ``n``-member mesh (views built, first tick run)."""
    pop = make_population(n, seed, MESH, T0)
    recs = pop.records
    node = MeshNode(
        pop.identities[0],
        MESH,
        MeshSettings(
            role=Role.PEER,
            wg_endpoint=recs[0].wg_endpoint,
            control_endpoint=recs[0].control_endpoint,
        ),
        GossipParams(),
        LivenessParams.from_heartbeat(2000),
        random.Random(f"engine-cost/{seed}"),
        clone_state(pop.base, share=False),  # an ordinary MeshState, as a daemon's
    )
    fx = Fixture(n, node, pop.identities, list(recs), random.Random(f"engine-cost-src/{seed}"))
    _views(node)
    # Every held item encoded once, as smegd's persist loop leaves them: a push
    # of held items (the want reply) then costs the same whichever are asked for.
    for rec in recs:
        item_bytes(rec, node.mesh.memo)
    # Warm up: the first ticks desynchronise the timers, and the first probe
    # builds the detector's member set and its shuffled round-robin order
    # (O(N log N) once per N probes: not what a tick costs).
    for _ in range(8):
        fx.now = max(fx.now, node.next_deadline() or fx.now)
        fx.settle(node.step(TimerFired(fx.now)))
    fx.now += 5_000
    return fx


# -- operations ----------------------------------------------------------------------------
Thunk = Callable[[], list[Out]]


class Op:
    """One measured operation: ``prepare`` (untimed) returns the run; ``after`` (untimed)."""

    name = ""

    def prepare(self, fx: Fixture) -> Thunk:
        raise NotImplementedError

    def after(self, fx: Fixture, out: list[Out]) -> None:
        fx.now += 1_000  # no batching of received items, no "busy" mesh
        _views(fx.node)  # the next run does not pay for this one's views


class PingOp(Op):
    name = "ping"

    def prepare(self, fx: Fixture) -> Thunk:
        inp = fx.request(fx.src(), via_wire(Ping(MESH, fx.rid + 1)))
        return lambda: fx.node.step(inp)


class PushFresh(Op):
    def __init__(self, hops: int) -> None:
        self.hops = hops
        self.name = "push fresh (author)" if hops == 0 else "push fresh (fwd)"

    def prepare(self, fx: Fixture) -> Thunk:
        i = fx.src()
        sender = i if self.hops == 0 else fx.src()
        inp = fx.request(sender, via_wire(Push(MESH, (fx.fresh(i),), self.hops)))
        return lambda: fx.node.step(inp)


class PushNotNews(Op):
    name = "push not news"

    def prepare(self, fx: Fixture) -> Thunk:
        i = fx.src()
        inp = fx.request(fx.src(), via_wire(Push(MESH, (fx.current[i],), 1)))
        return lambda: fx.node.step(inp)


def _eight(fx: Fixture) -> list[int]:
    return fx.rng.sample(range(1, fx.n), 8)


class OfferOp(Op):
    name = "offer 8 (4 wanted)"

    def prepare(self, fx: Fixture) -> Thunk:
        st = fx.node.mesh
        entries: list[OfferEntry] = []
        for j, i in enumerate(_eight(fx)):
            k = fx.key(i)
            rv, pv = st.versions_of(k)
            h = st.entry_hash_of(k).to_bytes(32, "big")[:OFFER_HASH_LEN]
            if j % 2 == 0:  # a version the node lacks: wanted
                rv, h = rv + 1_000, bytes(OFFER_HASH_LEN)
            entries.append((k[:KEY_ID_LEN], rv, pv, h))
        entries.sort()
        inp = fx.request(fx.src(), via_wire(Offer(MESH, tuple(entries))))
        return lambda: fx.node.step(inp)


class WantReply(Op):
    name = "want reply (4 of 8)"

    def prepare(self, fx: Fixture) -> Thunk:
        keys = [fx.key(i) for i in _eight(fx)]
        to = fx.key(fx.src())
        call = Call(to, Offer(MESH, ()), OfferCtx(frozenset(keys)))
        want = via_wire(Want(MESH, tuple(k[:KEY_ID_LEN] for k in keys[::2])))
        inp = ReplyReceived(call, want, fx.now)
        return lambda: fx.node.step(inp)


class SyncStartOp(Op):
    name = "sync start (in sync)"

    def prepare(self, fx: Fixture) -> Thunk:
        # the initiator's state equals ours: built on our own state
        start = SyncSession.initiator(fx.node.mesh, fx.now, rng=fx.rng).start()
        inp = fx.request(fx.src(), via_wire(start))
        return lambda: fx.node.step(inp)


class SyncEndOp(Op):
    name = "sync end (in sync)"

    def prepare(self, fx: Fixture) -> Thunk:
        session = SyncSession.initiator(fx.node.mesh, fx.now, rng=fx.rng)
        call = Call(fx.key(fx.src()), session.start(), SyncCtx(session))
        inp = ReplyReceived(call, via_wire(SyncEnd(MESH, session.session_id)), fx.now)
        return lambda: fx.node.step(inp)


class SyncDiff(Op):
    name = "sync session, 1 key differs"

    def prepare(self, fx: Fixture) -> Thunk:
        node = fx.node
        other = fx.scratch.get("other")
        if other is None:  # another member's state: ours, then one key newer per run
            other = fx.scratch["other"] = clone_state(node.mesh, share=False)
        i = fx.src()
        other.apply(fx.fresh(i), fx.now)
        session = SyncSession.initiator(other, fx.now, rng=fx.rng)
        src = fx.src()

        def exchange() -> list[Out]:
            """The whole session: our node answers, the initiator (other) asks."""
            outs: list[Out] = []
            msg: Any = session.start()
            while msg is not None:
                step = node.step(fx.request(src, msg))
                outs.extend(step)
                reply = step[-1]
                assert isinstance(reply, Respond)
                msg, _ = session.receive(reply.msg, fx.now)  # type: ignore[arg-type]
            return outs

        return exchange


class TickIdle(Op):
    name = "tick idle"

    def prepare(self, fx: Fixture) -> Thunk:
        fx.now = max(fx.now, fx.node.next_deadline() or fx.now)
        inp = TimerFired(fx.now)
        return lambda: fx.node.step(inp)

    def after(self, fx: Fixture, out: list[Out]) -> None:
        fx.settle(out)
        _views(fx.node)


class TickFresh(Op):
    name = "tick 4 fresh"

    def prepare(self, fx: Fixture) -> Thunk:
        node = fx.node
        for i in fx.rng.sample(range(1, fx.n), 4):
            fx.settle(node.step(fx.request(i, via_wire(Push(MESH, (fx.fresh(i),), 0)))))
        due = node._sched._next_sync_ms
        fx.now = max(fx.now, due if due is not None else fx.now)
        _views(node)
        inp = TimerFired(fx.now)
        return lambda: node.step(inp)

    def after(self, fx: Fixture, out: list[Out]) -> None:
        fx.settle(out)
        fx.now += 1
        _views(fx.node)


def _as_client(fx: Fixture) -> None:
    node = fx.node
    if node.settings.role != Role.CLIENT:
        node.settings = replace(node.settings, role=Role.CLIENT)
        fx.settle(node.step(TimerFired(fx.now)))  # untimed: the first one ranks the peers


class ClientTickIdle(TickIdle):
    """A tick of a client (it gossips only with its assigned peer and a spare)."""

    name = "client tick idle"

    def prepare(self, fx: Fixture) -> Thunk:
        _as_client(fx)
        return super().prepare(fx)


def _prune_input(fx: Fixture, target: int) -> Input:
    by = fx.src()
    while by == target:
        by = fx.src()
    prune = Prune.create(
        fx.ids[by],
        MESH,
        target=fx.key(target),
        target_version=fx.current[target].version,
        now_ms=fx.now,
    )
    return fx.request(by, via_wire(Push(MESH, (prune,), 1)))


def _refute_input(fx: Fixture, target: int) -> Input:
    return fx.request(target, via_wire(Push(MESH, (fx.fresh(target),), 0)))


class PrunePush(Op):
    name = "MEMBERSHIP: push prune"

    def prepare(self, fx: Fixture) -> Thunk:
        t = fx.scratch["target"] = fx.src()
        inp = _prune_input(fx, t)
        return lambda: fx.node.step(inp)

    def after(self, fx: Fixture, out: list[Out]) -> None:
        fx.now += 1_000
        fx.settle(fx.node.step(_refute_input(fx, fx.scratch["target"])))
        super().after(fx, out)


class ClientPrunePush(PrunePush):
    """The same on a client: its rendezvous order of the peers loses one."""

    name = "MEMBERSHIP: client push prune"

    def prepare(self, fx: Fixture) -> Thunk:
        _as_client(fx)
        return super().prepare(fx)


class RefutePush(Op):
    name = "MEMBERSHIP: push refute"

    def prepare(self, fx: Fixture) -> Thunk:
        t = fx.src()
        fx.settle(fx.node.step(_prune_input(fx, t)))
        _views(fx.node)
        fx.now += 1_000
        inp = _refute_input(fx, t)
        return lambda: fx.node.step(inp)


class TickAfterPrune(Op):
    name = "MEMBERSHIP: tick after"

    def prepare(self, fx: Fixture) -> Thunk:
        t = fx.scratch["target"] = fx.src()
        fx.settle(fx.node.step(_prune_input(fx, t)))
        _views(fx.node)
        fx.now = max(fx.now, fx.node.next_deadline() or fx.now)
        inp = TimerFired(fx.now)
        return lambda: fx.node.step(inp)

    def after(self, fx: Fixture, out: list[Out]) -> None:
        fx.settle(out)
        fx.now += 1
        fx.settle(fx.node.step(_refute_input(fx, fx.scratch["target"])))
        _views(fx.node)


def operations() -> list[Op]:
    """Every operation, in table order."""
    return [
        PingOp(),
        PushFresh(0),
        PushFresh(6),
        PushNotNews(),
        OfferOp(),
        WantReply(),
        SyncStartOp(),
        SyncEndOp(),
        SyncDiff(),
        TickIdle(),
        TickFresh(),
        ClientTickIdle(),
        PrunePush(),
        RefutePush(),
        TickAfterPrune(),
        ClientPrunePush(),
    ]


# -- measuring -----------------------------------------------------------------------------
@dataclass
class Result:
    """One operation at one size."""

    time_us: float  # median
    calls: float  # mean
    lines: float  # mean
    alloc_kb: float  # median


def _count(op: Op, fx: Fixture, count_reps: int) -> tuple[float, float, float]:
    """Mean calls and lines, median peak KB allocated, of ``count_reps`` runs of ``op``.

    Each run is run with the profiler and tracer on, the next with ``tracemalloc``.
    """
    calls = lines = 0
    peaks: list[int] = []
    for _ in range(count_reps):
        c, out = counted(op.prepare(fx))
        calls += c.calls
        lines += c.lines
        op.after(fx, out)
        peak, out = peak_alloc(op.prepare(fx))
        peaks.append(peak)
        op.after(fx, out)
    n = max(1, count_reps)
    return calls / n, lines / n, statistics.median(peaks or [0]) / 1024


def measure(op: Op, fxs: list[Fixture], reps: int, count_reps: int) -> list[Result]:
    """``reps`` timed runs of ``op`` on each fixture, then ``count_reps`` counted runs.

    The timed runs take turns between the fixtures (sizes), so a change of
    load on the machine during the run touches every size alike.
    """
    times: list[list[int]] = [[] for _ in fxs]
    gc.collect()
    gc.freeze()  # the settled states live for ever (as smegd does after start-up)
    try:
        for _ in range(reps):
            for fx, ts in zip(fxs, times, strict=True):
                thunk = op.prepare(fx)
                t0 = time.perf_counter_ns()
                out = thunk()
                ts.append(time.perf_counter_ns() - t0)
                op.after(fx, out)
        counts = [_count(op, fx, count_reps) for fx in fxs]
    finally:
        gc.unfreeze()
    return [
        Result(statistics.median(ts) / 1_000 if ts else math.nan, c, ln, kb)
        for ts, (c, ln, kb) in zip(times, counts, strict=True)
    ]


def run(
    sizes: list[int], reps: int, count_reps: int, seed: int, ops: list[Op] | None = None
) -> dict[str, dict[int, Result]]:
    """Every operation at every size: {op name: {size: result}}.

    Each operation gets nodes of its own, one per size, all alive while it is
    measured (the same heap for every size).
    """
    ops = operations() if ops is None else ops
    out: dict[str, dict[int, Result]] = {}
    for op in ops:
        fxs = [build(n, seed) for n in sizes]
        out[op.name] = dict(zip(sizes, measure(op, fxs, reps, count_reps), strict=True))
        del fxs
    return out


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def table(results: dict[str, dict[int, Result]], sizes: list[int]) -> str:
    """The results as three tables (time, calls, lines), one row per operation."""
    lines: list[str] = []
    lo, hi = sizes[0], sizes[-1]
    metrics = (
        ("time_us", "median wall time per operation, us"),
        ("calls", "Python calls per operation (call + c_call events, mean)"),
        ("lines", "Python lines executed per operation (mean)"),
        ("alloc_kb", "peak memory allocated during the operation, KB (tracemalloc, median)"),
    )
    width = max(len(name) for name in results) + 2
    for attr, title in metrics:
        lines.append(f"\n{title}")
        head = "".join(f"{f'N={n:,}':>12}" for n in sizes)
        lines.append(f"{'operation':<{width}}{head}{f'{hi}/{lo}':>12}")
        for name, by_n in results.items():
            vals = [getattr(by_n[n], attr) for n in sizes]
            ratio = vals[-1] / vals[0] if vals[0] else math.nan
            flag = "  <- grows" if ratio > 1.5 else ""
            row = "".join(f"{_fmt(v):>12}" for v in vals)
            lines.append(f"{name:<{width}}{row}{ratio:>11.2f}x{flag}")
    return "\n".join(lines)


OUT = Path(__file__).resolve().parent / "out"


def plot(results: dict[str, dict[int, Result]], sizes: list[int], path: Path) -> bool:
    """Each operation's cost at the largest size over the smallest: time, calls, allocation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(results)
    lo, hi = sizes[0], sizes[-1]
    series = [
        ("median time", "time_us"),
        ("Python calls", "calls"),
        ("peak allocation", "alloc_kb"),
    ]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(names) + 1.6))
    height = 0.8 / len(series)
    for j, (label, attr) in enumerate(series):
        ratios = []
        for name in names:
            a, b = getattr(results[name][lo], attr), getattr(results[name][hi], attr)
            ratios.append(b / a if a and a == a and b == b else math.nan)
        ys = [i + (j - 1) * height for i in range(len(names))]
        ax.barh(ys, ratios, height=height, label=label)
    ax.axvline(1.0, color="grey", lw=1)
    ax.axvline(1.5, color="red", ls="--", lw=1, label="grows (1.5x)")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"cost at {hi:,} members / cost at {lo:,} (log scale)")
    ax.set_title("the engine's cost per message and per tick, by mesh size", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    ap.add_argument("--reps", type=int, default=200, help="timed runs per operation and size")
    ap.add_argument("--count-reps", type=int, default=30, help="counted runs (calls, lines)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated substrings of operation names")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(",") if s)
    ops = operations()
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        ops = [op for op in ops if any(w in op.name for w in wanted)]
    t0 = time.perf_counter()
    results = run(sizes, args.reps, args.count_reps, args.seed, ops)
    print(table(results, sizes))
    print(f"\n({time.perf_counter() - t0:.1f} s; Python {sys.version.split()[0]})")
    if len(sizes) > 1 and plot(results, sizes, OUT / "engine_cost.png"):
        print(f"plot: {OUT / 'engine_cost.png'}")
    if args.json is not None:
        data = {name: {str(n): vars(r) for n, r in by_n.items()} for name, by_n in results.items()}
        args.json.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
