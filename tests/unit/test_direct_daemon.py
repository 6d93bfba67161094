"""The daemon side of direct sessions (daemon/direct.py): WhereAmI answers, the loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from daemon_inproc import until
from nat_nodes import IDS, MESH
from smegmesh.daemon import direct as ddirect
from smegmesh.daemon import whereami
from smegmesh.daemon.direct import DirectManager


def _peer_node(read: Any) -> Any:
    """A node answering WhereAmI: one WireGuard worker thread, ``read`` its status reads."""
    return SimpleNamespace(
        meshes={},
        config=None,
        _wg_pool=concurrent.futures.ThreadPoolExecutor(1),
        backend=SimpleNamespace(read=read),
    )


def test_concurrent_whereami_calls_share_one_status_read() -> None:
    """docs/NAT.md: "at most one status read per mesh per 2 s". The cache was
    written only once a read finished: every call while it was stale started
    a read of its own on the one WireGuard thread (16 calls, 16 full reads)."""
    reads: list[float] = []
    lock = threading.Lock()
    peer_key = IDS[3].wg_public_key

    def read(ifname: str) -> Any:
        with lock:
            reads.append(time.monotonic())
        time.sleep(0.05)  # a full dump of a big interface
        p = SimpleNamespace(last_handshake=1.0, endpoint="192.0.2.7:51820")
        return SimpleNamespace(peers={peer_key: p})

    m = DirectManager(_peer_node(read), 8)
    rt = SimpleNamespace(mesh_id=MESH, ifname="smeg0")

    async def burst() -> list[str | None]:
        # 17 calls in flight at once, and one caller gives up (its cancel
        # must not cancel the read the others wait for)
        gone = asyncio.ensure_future(m.observed(rt, peer_key))
        calls = [m.observed(rt, IDS[i % 8].wg_public_key) for i in range(1, 16)]
        await asyncio.sleep(0)
        gone.cancel()
        return await asyncio.gather(m.observed(rt, peer_key), *calls)

    answers = asyncio.run(burst())
    assert len(reads) == 1, f"{len(reads)} status reads for 17 concurrent WhereAmI calls"
    assert answers[0] == "192.0.2.7:51820" and answers[1:3] == [None, None]
    assert answers[3] == "192.0.2.7:51820"  # IDS[3]


def test_whereami_status_is_read_again_after_the_cache_time_and_then_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The status read is kept ``STATUS_CACHE_S`` and then dropped, whether or
    not another call comes (it was kept for every mesh ever asked about, a mesh
    left included, and only the direct loop, which does not run without
    ``directPeers``, would have cleaned it)."""
    monkeypatch.setattr(whereami, "STATUS_CACHE_S", 0.2)
    reads: list[str] = []

    def read(ifname: str) -> Any:
        reads.append(ifname)
        return SimpleNamespace(peers={})

    m = DirectManager(_peer_node(read), 0)  # a peer: directPeers 0
    rt = SimpleNamespace(mesh_id=MESH, ifname="smeg0")

    async def go() -> None:
        assert await m.observed(rt, IDS[1].wg_public_key) is None
        assert await m.observed(rt, IDS[2].wg_public_key) is None
        assert reads == ["smeg0"]  # within the cache time: one read
        await until(lambda: MESH not in m.status_reads._reads)
        assert await m.observed(rt, IDS[1].wg_public_key) is None
        assert reads == ["smeg0", "smeg0"]
        await until(lambda: not m.status_reads._reads)

    asyncio.run(go())


# --------------------------------------------------------------------------- one mesh stalls
MESH_B = "amber-falcon-lake-k7q3"
SLOW_S = 1.5  # a WhereAmI or status read this slow; echoes go unanswered after 0.4 s here


class _Echoes:
    """A prober whose echoes are answered 10 ms later (a healthy direct path)."""

    usable = True

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def send(self, addr: str) -> None:
        def answer() -> None:
            self.last[addr] = int(time.time() * 1000)

        asyncio.get_running_loop().call_later(0.01, answer)

    def reply_ms(self, addr: str) -> int:
        return self.last.get(addr, 0)

    def keep(self, addrs: object) -> None:
        pass

    def rtt_ms(self, addr: str) -> None:
        return None


def _mesh(mesh_id: str, me: Any, records: list[Any], ifname: str) -> Any:
    rt = SimpleNamespace(
        mesh_id=mesh_id,
        listen_port=51820,
        opts={},
        ifname=ifname,
        up=True,
        joining=False,
        dirty_wg=False,
        dirty_disk=False,
    )
    rt.node = SimpleNamespace(
        record=me,
        evicted=None,
        mesh=SimpleNamespace(version=1),
        live_records=lambda: records,
        gossip=SimpleNamespace(pull_interval_ms=3000),
    )
    return rt


def _two_meshes(
    monkeypatch: pytest.MonkeyPatch, read: Any, call: Any, a_chooses: bool
) -> tuple[DirectManager, Any]:
    """Mesh A (its discovery or status read is ``call`` / ``read``) and mesh B,
    where a direct session with client 1 is up and healthy."""
    from smegmesh.core.direct import DirectPeer, DirectTable, _Session
    from smegmesh.core.direct_plan import DirectSchedule
    from smegmesh.core.identity import NodeIdentity
    from smegmesh.core.record import NodeRecord, Role

    monkeypatch.setattr(ddirect, "TICK_S", 0.05)

    def rec(i: int, mesh: str, role: Role = Role.CLIENT, **kw: Any) -> NodeRecord:
        ident: NodeIdentity = IDS[i]
        if role == Role.PEER:
            kw.update(control_endpoint=f"198.51.100.{i}:7000", tls_fp=bytes(32))
            kw["wg_endpoint"] = f"198.51.100.{i}:51820"
        return NodeRecord.create(ident, mesh, version=1, now_ms=1, role=role, **kw)

    nat = {"nat_endpoint": "203.0.113.1:51820"} if a_chooses else {}
    me_a = rec(0, MESH, **nat)
    a_recs = [me_a, rec(5, MESH, Role.PEER)]
    if a_chooses:  # a partner in mesh A too: its tick reads mesh A's status
        a_recs.append(rec(2, MESH, nat_endpoint="198.51.100.88:51820"))
    me_b = rec(0, MESH_B, nat_endpoint="203.0.113.1:51820")
    mate = rec(1, MESH_B, nat_endpoint="198.51.100.77:51820")
    rt_a = _mesh(MESH, me_a, a_recs, "smegA")
    rt_b = _mesh(MESH_B, me_b, [me_b, mate, rec(6, MESH_B, Role.PEER)], "smegB")
    node = SimpleNamespace(
        meshes={MESH: rt_a, MESH_B: rt_b},
        identity=IDS[0],
        config=None,
        _reconcile_wake=asyncio.Event(),
        _wg_pool=concurrent.futures.ThreadPoolExecutor(1),
        backend=SimpleNamespace(read=read),
        rpc=SimpleNamespace(call=call),
        _emit=lambda *a: None,
    )
    m = DirectManager(node, 8)
    m.prober = _Echoes()  # type: ignore[assignment]
    now, mono = int(time.time() * 1000), ddirect._now_ms()
    for mesh_id in (MESH, MESH_B) if a_chooses else (MESH_B,):  # no discovery due
        m.schedules[mesh_id] = DirectSchedule(discovered_ms=mono, first_discovery_ms=mono)
    k = IDS[1].wg_public_key
    table = m.tables[MESH_B] = DirectTable(me=IDS[0].wg_public_key, probe_stale_ms=400)
    table.sessions[k] = _Session("198.51.100.77:51820", now - 5000, 0, now, True, now)
    m.plans[MESH_B] = {k: DirectPeer("198.51.100.77:51820", True)}
    m.probed[MESH_B] = {k: mate.address}  # as the ticks before left it
    return m, rt_b


def _wg_status(keys: list[bytes]) -> Any:
    """Handshakes a second ago and more bytes at every read (keepalives arrive)."""
    rx = {"n": 1000}

    def status() -> Any:
        rx["n"] += 148
        p = SimpleNamespace(last_handshake=time.time() - 1, rx_bytes=rx["n"], endpoint=None)
        return SimpleNamespace(peers={k: p for k in keys})

    return status


def _run_until(m: DirectManager, cond: Any) -> None:
    async def go() -> None:
        task = asyncio.create_task(m._run())
        try:
            await until(cond)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())


def test_a_slow_discovery_in_one_mesh_does_not_drop_direct_sessions_of_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop awaited each mesh's tick in turn, and a tick awaited its
    WhereAmI: while a slow (or hostile) assigned peer of mesh A took its time
    (up to the 5 s call timeout, at every discovery), no echo went over any
    session of mesh B, and after PROBE_STALE_MS they all went down and backed off."""
    status = _wg_status([IDS[1].wg_public_key])
    b_reads = 0
    at_call: int | None = None
    at_answer: int | None = None

    def read(ifname: str) -> Any:
        nonlocal b_reads
        b_reads += ifname == "smegB"
        return status()

    async def call(endpoint: str, fp: bytes, body: bytes, *a: Any, **k: Any) -> bytes:
        from smegmesh.core.messages import Observed
        from smegmesh.core.wire import encode

        nonlocal at_call, at_answer
        at_call = b_reads
        await asyncio.sleep(SLOW_S)
        at_answer = b_reads
        return encode(Observed(MESH, None))

    m, _ = _two_meshes(monkeypatch, read, call, a_chooses=False)
    _run_until(m, lambda: at_answer is not None and b_reads > at_answer + 3)
    assert m.tables[MESH_B].state(IDS[1].wg_public_key) == "up"
    assert at_call is not None and at_answer is not None
    assert at_answer - at_call > 3  # mesh B ticked while mesh A's answer was awaited


def test_a_client_told_it_was_evicted_discovers_nothing_and_drops_its_direct_sessions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No member answers it (core.evicted): its WhereAmI calls and echoes were for nothing."""
    from smegmesh.core import direct_plan

    monkeypatch.setattr(direct_plan, "DISCOVER_RETRY_MS", 0)
    calls: list[bytes] = []

    async def call(endpoint: str, fp: bytes, body: bytes, *a: Any, **k: Any) -> bytes:
        calls.append(body)
        raise AssertionError("no call")

    status = _wg_status([IDS[1].wg_public_key])
    m, rt_b = _two_meshes(monkeypatch, lambda ifname: status(), call, a_chooses=False)
    rt_a = m.node.meshes[MESH]
    assert MESH_B in m.plans
    for rt in (rt_a, rt_b):
        rt.node.evicted = object()  # told, and it holds
        asyncio.run(m._tick(rt))
    assert MESH_B not in m.plans and not m._discovering and not calls


def test_one_discovery_per_mesh_in_flight_and_a_mesh_left_cancels_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Discovery runs beside the tick: never two of one mesh at once (an
    assigned peer that never answers holds one call, not one per period), and
    leaving the mesh ends it."""
    from smegmesh.core import direct_plan

    monkeypatch.setattr(direct_plan, "DISCOVER_RETRY_MS", 10)
    calls: list[bytes] = []
    cancelled = asyncio.Event()

    async def call(endpoint: str, fp: bytes, body: bytes, *a: Any, **k: Any) -> bytes:
        calls.append(body)
        try:
            await asyncio.Event().wait()  # never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    status = _wg_status([IDS[1].wg_public_key])
    ticks = {"b": 0}

    def read(ifname: str) -> Any:
        ticks["b"] += 1
        return status()

    m, _ = _two_meshes(monkeypatch, read, call, a_chooses=False)

    async def go() -> None:
        task = asyncio.create_task(m._run())
        try:
            await until(lambda: ticks["b"] > 10)
            assert len(calls) == 1 and MESH in m._discovering
            del m.node.meshes[MESH]  # mesh A left
            await until(cancelled.is_set)
            await until(lambda: MESH not in m._discovering)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())


def test_a_slow_status_read_of_one_mesh_does_not_stop_the_echoes_of_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The echoes went from the tick: a tick waiting for the one WireGuard
    worker (mesh A's read slow, or the worker busy applying a big mesh) sent
    none over mesh B's sessions, whose next tick then found them stale."""
    status = _wg_status([IDS[1].wg_public_key, IDS[2].wg_public_key])
    seen = {"slow_done": False, "b_after": 0}

    def read(ifname: str) -> Any:
        if ifname == "smegA" and not seen["slow_done"]:
            time.sleep(SLOW_S)
            seen["slow_done"] = True
        elif ifname == "smegB" and seen["slow_done"]:
            seen["b_after"] += 1
        return status()

    async def call(*a: Any, **k: Any) -> bytes:
        raise AssertionError("no discovery is due")

    m, _ = _two_meshes(monkeypatch, read, call, a_chooses=True)
    _run_until(m, lambda: seen["b_after"] > 3)
    assert m.tables[MESH_B].state(IDS[1].wg_public_key) == "up"


# --------------------------------------------------------------------------- the choice's cost
BIG, BIG_LIMIT = 3000, 64  # clients, directPeers (its maximum)


@pytest.fixture(scope="module")
def big_mesh() -> list[Any]:
    """3,000 clients publishing endpoints (one mesh's live records)."""
    from smegmesh.core.identity import NodeIdentity
    from smegmesh.core.record import NodeRecord, Role

    ids = [NodeIdentity.from_seed(i.to_bytes(32, "big")) for i in range(1, BIG + 1)]
    return [
        NodeRecord.create(
            ids[i],
            MESH,
            version=1,
            now_ms=1,
            role=Role.CLIENT,
            nat_endpoint=f"203.0.{i // 250}.{i % 250}:51820",
        )
        for i in range(BIG)
    ], ids


def _big_manager(records: list[Any], ident: Any) -> tuple[DirectManager, Any]:
    recs = list(records)
    rt = SimpleNamespace(mesh_id=MESH, listen_port=51820, opts={})
    rt.node = SimpleNamespace(
        mesh=SimpleNamespace(version=1),
        live_records=lambda: recs,
        gossip=SimpleNamespace(pull_interval_ms=3000),
        record=recs[0],
        evicted=None,
    )
    node = SimpleNamespace(
        meshes={MESH: rt}, identity=ident, config=None, _reconcile_wake=asyncio.Event()
    )
    return DirectManager(node, BIG_LIMIT), rt


def test_a_records_new_version_does_not_compute_the_choice_again(big_mesh: Any) -> None:
    """Any record's new version (a member may re-sign its own at will, and at
    10,000 members some record changes every tick) made the tick compute the
    mutual choice from scratch on the event loop: (directPeers + 1) x N keyed
    hashes, ~0.3 s for 3,000 clients and directPeers 64. Now a re-signed record
    costs a pass over the records, and a member dropping its endpoints and
    publishing them again a few lists at most."""
    from smegmesh.core.direct import pair_score

    records, ids = big_mesh
    m, rt = _big_manager(records, ids[0])
    me = records[0]
    t0 = time.perf_counter()
    first = m._choose(rt, me)  # no running loop: computed here
    full = time.perf_counter() - t0
    assert len(first) == BIG_LIMIT
    # one member re-signs its record (same endpoints): the state's version moves on
    recs = rt.node.live_records()
    recs[5] = recs[5].evolve(ids[5], 2, alias="x")
    rt.node.mesh.version = 2
    t0 = time.perf_counter()
    assert m._choose(rt, me) == first
    resigned = time.perf_counter() - t0
    # the member of our best with the lowest score drops its endpoints, then comes back
    k = min(first, key=lambda o: pair_score(me.wg_key, o))
    i = next(i for i, r in enumerate(recs) if r.wg_key == k)
    t0 = time.perf_counter()
    recs[i] = recs[i].evolve(ids[i], 3, nat_endpoint=None)
    rt.node.mesh.version = 3
    assert k not in m._choose(rt, me)
    recs[i] = recs[i].evolve(ids[i], 4, nat_endpoint="203.0.113.99:51820")
    rt.node.mesh.version = 4
    assert m._choose(rt, me).keys() == first.keys()
    toggled = (time.perf_counter() - t0) / 2
    assert resigned < full / 10, (
        f"a re-signed record: {resigned * 1000:.0f} ms, {full * 1000:.0f} ms from scratch"
    )
    assert toggled < full / 4, (
        f"a toggle: {toggled * 1000:.0f} ms, {full * 1000:.0f} ms from scratch"
    )


def test_a_big_mesh_computes_its_choice_off_the_event_loop(big_mesh: Any) -> None:
    """The first choice of a big mesh (and any after many changes) costs
    (directPeers + 1) x N hashes: in a worker thread, the tick carries on
    with the choice it had (none at first) until it is done."""
    records, ids = big_mesh
    m, rt = _big_manager(records, ids[0])
    me = records[0]
    expected, _ = _big_manager(records, ids[0])
    want = expected._choose(rt, me)  # the same, computed inline

    async def go() -> dict[bytes, str]:
        t0 = time.perf_counter()
        assert m._choose(rt, me) == {}  # not done yet: nothing chosen so far
        took = time.perf_counter() - t0
        assert MESH in m._choosing and took < 0.05, f"{took * 1000:.0f} ms in the tick"
        await until(lambda: m._choosing[MESH][1].done())
        return m._choose(rt, me)

    assert asyncio.run(go()) == want and MESH not in m._choosing
    assert m.probed[MESH].keys() == want.keys()
