"""Routing against a hostile member (core/routing.py, core/multimesh.py).

Found by a review of routing: an unprovable first hop needed no proof at all
(finding 4), one member's invented destinations crowded every real route out
of an honest bridge's record (finding 2), and a bridge in more than
MAX_PROOFS + 1 meshes published adverts its receivers dropped (finding 5).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from pathlib import Path
from typing import Any

import msgpack
import pytest

from smegmesh.core.addressing import mesh_prefix
from smegmesh.core.advert_share import advert_bytes
from smegmesh.core.multimesh import MeshRouting, route_meshes
from smegmesh.core.record import (
    MAX_PROOFS,
    MAX_RECORD_BYTES,
    MAX_ROUTE_PATH,
    MAX_ROUTES,
    MembershipProof,
    NodeRecord,
    RecordError,
    Role,
    RouteAdv,
)
from smegmesh.core.routing import RoutingResult, compute_routes, hextets_text, prefix_text
from smegmesh.core.state import MeshState
from smegmesh.daemon import apply
from smegmesh.daemon.config import parse_config
from smegmesh.daemon.node import Daemon
from smegmesh.testbed.founded import NOW, Mesh, ident, member_node

T = NOW + 100_000


def pfx(m: str) -> str:
    return str(mesh_prefix(m))


def _routes(me: bytes, meshes: dict[str, MeshState], **kw: bool) -> dict[str, tuple]:
    res = compute_routes(
        me,
        {m: st.live_records() for m, st in meshes.items()},
        advertise_routes=kw.get("advertise_routes", False),
        advertise_defaults=False,
        accept_defaults=False,
    )
    return {e.destination: (e.gateway, e.path, e.alternatives) for e in res.table}


# --------------------------------------------------------------------------- finding 4


def _unproven_liar(honest_path_len: int) -> tuple[Mesh, MeshState, str, NodeRecord, NodeRecord]:
    """Mesh 'here': an honest bridge to X (proven first hop P) and a liar ("zz", X)."""
    bridge, liar = ident(21), ident(22)
    here = Mesh(name="here-mesh-a")
    p = Mesh(name="pine-mesh-p", founder=bridge)  # the bridge is P's founder
    x = Mesh(name="there-mesh-x", founder=ident(23))  # neither is a member of X
    for n in (bridge, liar):
        here.admit(n)
    dest = pfx(x.mesh_id)
    middle = tuple(f"old-mesh-{i}" for i in range(honest_path_len - 2))
    real = here.record(
        bridge,
        role=Role.PEER,
        wg_endpoint="192.0.2.8:51820",
        routes=(RouteAdv(dest, (p.mesh_id, *middle, x.mesh_id)),),
        proofs=(MembershipProof(p.founding, ()),),
    )
    fake = here.record(
        liar,
        role=Role.PEER,
        wg_endpoint="192.0.2.9:51820",
        routes=(RouteAdv(dest, ("zz", x.mesh_id)),),  # "zz": an old-style id, no proof
    )
    st = here.state()
    assert st.apply(real, NOW)
    assert st.apply(fake, NOW)
    return here, st, dest, real, fake


def test_an_unprovable_first_hop_never_ties_with_a_proven_one() -> None:
    """A member that proves nothing shared every length-2 route with the real bridge."""
    here, st, dest, real, _fake = _unproven_liar(2)
    chosen, alternatives = set(), set()
    for i in range(40, 72):  # 32 members of 'here', each with its own rendezvous
        got = _routes(ident(i).wg_public_key, {here.mesh_id: st})
        chosen.add(got[dest][0])
        alternatives.add(got[dest][2])
    assert chosen == {real.wg_key}
    assert alternatives == {0}  # the unproven advert is no alternative either


def test_an_unprovable_first_hop_is_still_used_when_it_is_shortest() -> None:
    """Length first (SPEC): old-style meshes keep routing; the liar wins only where
    it could also win with a mesh of its own as proven first hop (docs/ROUTING.md)."""
    here, st, dest, _real, fake = _unproven_liar(3)
    got = _routes(ident(40).wg_public_key, {here.mesh_id: st})
    assert got[dest][0] == fake.wg_key and len(got[dest][1]) == 2


# --------------------------------------------------------------------------- finding 2


def _advertiser(
    mesh: Mesh, who: int, first: Mesh, dests: list[str], *, sort_before: str = ""
) -> NodeRecord:
    """``who``'s record in ``mesh``: ``first``'s prefix and ``(first, y)`` for each y."""
    routes = [RouteAdv(pfx(first.mesh_id), (first.mesh_id,))]
    routes += [RouteAdv(pfx(y), (first.mesh_id, y)) for y in dests]
    return mesh.record(
        ident(who),
        role=Role.PEER,
        wg_endpoint=f"192.0.2.{who}:51820",
        routes=tuple(routes),
        proofs=(MembershipProof(first.founding, ()),),
    )


def _invented(n: int, tag: str, below: str = "g") -> list[str]:
    """``n`` made-up mesh ids whose prefixes sort before ``below`` (a few tries each)."""
    out: list[str] = []
    i = 0
    while len(out) < n:
        y = f"{tag}{i}"
        i += 1
        if pfx(y) < below:
            out.append(y)
    return out


def _bridge_adverts(into: Mesh, learned: dict[str, list[NodeRecord]]) -> tuple[RouteAdv, ...]:
    """What the bridge ident(10), in ``into`` and the meshes of ``learned``, advertises into it."""
    meshes: dict[str, list[NodeRecord]] = {into.mesh_id: [], **learned}
    res = compute_routes(
        ident(10).wg_public_key,
        meshes,
        advertise_routes=True,
        advertise_defaults=False,
        accept_defaults=False,
    )
    return res.adverts[into.mesh_id]


def _state(mesh: Mesh, *recs: NodeRecord) -> list[NodeRecord]:
    st = mesh.state()
    for r in recs:
        assert st.apply(r, NOW)  # the record gate takes them: every advert is well-formed
    return st.live_records()


def test_one_members_invented_routes_do_not_crowd_a_real_route_out() -> None:
    """The review's case: 511 inventions of H and C's one route beyond P, all at length 3."""
    n, m = Mesh(name="north-mesh-n"), Mesh(name="middle-mesh-m")
    for who in (10, 11, 12):
        n.admit(ident(who))
    p = Mesh(name="pine-mesh-p", founder=ident(11))  # C (11) bridges N and P
    f = Mesh(name="fake-mesh-f", founder=ident(12))  # H's (12) own mesh: a free, valid proof
    q = Mesh(name="quay-mesh-q", founder=ident(14))
    c = _advertiser(n, 11, p, [q.mesh_id])
    h = _advertiser(n, 12, f, _invented(510, "y", below=pfx(q.mesh_id)))
    advs = _bridge_adverts(m, {n.mesh_id: _state(n, c, h)})
    assert RouteAdv(pfx(q.mesh_id), (n.mesh_id, p.mesh_id, q.mesh_id)) in advs, (
        f"{len(advs)} adverts, {sum(1 for a in advs if f.mesh_id in a.path)} of them H's"
    )


def test_an_honest_gateway_keeps_its_fair_share_against_a_flood() -> None:
    """C offers 300 destinations, H 511 inventions: C keeps half of the slots."""
    n, m = Mesh(name="north-mesh-n"), Mesh(name="middle-mesh-m")
    for who in (10, 11, 12):
        n.admit(ident(who))
    p = Mesh(name="pine-mesh-p", founder=ident(11))
    f = Mesh(name="fake-mesh-f", founder=ident(12))
    real = _invented(299, "real", below="g")  # stands for 299 meshes beyond P
    c = _advertiser(n, 11, p, real)
    h = _advertiser(n, 12, f, _invented(510, "y"))  # (sorting first would change nothing)
    advs = _bridge_adverts(m, {n.mesh_id: _state(n, c, h)})
    kept = sum(1 for a in advs if p.mesh_id in a.path)
    junk = sum(1 for a in advs if f.mesh_id in a.path)
    assert len(advs) == 512 and advs[0] == RouteAdv(pfx(n.mesh_id), (n.mesh_id,))
    # 511 slots after the bridge's own prefix of N, shared by the two gateways
    assert (kept, junk) == (255, 256)
    # each keeps its shortest: its own first mesh (length 2) is in
    assert RouteAdv(pfx(p.mesh_id), (n.mesh_id, p.mesh_id)) in advs


def test_a_flooded_mesh_does_not_crowd_out_routes_learned_through_another() -> None:
    """Two flooders in N (sock puppets): the routes learned through K all stay."""
    n, k, m = Mesh(name="north-mesh-n"), Mesh(name="kelp-mesh-k"), Mesh(name="middle-mesh-m")
    for who in (10, 12, 13):
        n.admit(ident(who))
    for who in (10, 11):
        k.admit(ident(who))
    p = Mesh(name="pine-mesh-p", founder=ident(11))
    f = Mesh(name="fake-mesh-f", founder=ident(12))
    g = Mesh(name="gulf-mesh-g", founder=ident(13))
    real = _invented(199, "real", below="g")
    h1 = _advertiser(n, 12, f, _invented(510, "y"))
    h2 = _advertiser(n, 13, g, _invented(510, "z"))
    c = _advertiser(k, 11, p, real)
    advs = _bridge_adverts(m, {n.mesh_id: _state(n, h1, h2), k.mesh_id: _state(k, c)})
    assert len(advs) == 512
    assert sum(1 for a in advs if a.path[0] == k.mesh_id) == 1 + 200  # K itself and all of C's


# --------------------------------------------------------------------------- finding 5


def test_a_bridge_in_many_meshes_publishes_only_what_it_proves() -> None:
    """A bridge in MAX_PROOFS + 2 meshes: 16 proofs fit; the 17th mesh's adverts went unproven."""
    bridge = ident(30)
    count = MAX_PROOFS + 2
    meshes = [Mesh(name=f"bridge-mesh-{chr(97 + i)}", founder=bridge) for i in range(count)]
    nodes = {}
    for m in meshes:
        node = member_node(bridge, m.mesh_id, m.state())
        node.start(T)
        nodes[m.mesh_id] = node
    opts = {m: MeshRouting(advertise_routes=True) for m in nodes}
    result, _ = route_meshes(nodes, opts, accept_defaults=False, now_ms=T + 1000)
    assert result is not None
    by_id = sorted(nodes)
    for mesh_id in by_id:
        rec = nodes[mesh_id].record
        assert rec is not None
        proven = {p.founding.mesh_id for p in rec.proofs}
        firsts = {a.path[0] for a in rec.routes if a.path}
        assert firsts == proven and len(proven) == MAX_PROOFS
        # the meshes left out are the last by id, and they are reported
        others = [m for m in by_id if m != mesh_id]
        assert result.unprovable[mesh_id] == tuple(others[MAX_PROOFS:])
        # another member of the mesh installs every advert of the record
        res = compute_routes(
            ident(31).wg_public_key,
            {mesh_id: [rec]},
            advertise_routes=False,
            advertise_defaults=False,
            accept_defaults=False,
        )
        assert len(res.table) == len(rec.routes) == MAX_PROOFS


def test_the_daemon_says_once_which_meshes_it_cannot_prove(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = Daemon(parse_config({"stateDir": str(tmp_path), "stubWg": True}))
    some = RoutingResult({}, {}, {}, (), unprovable={"mesh-a": ("mesh-x", "mesh-y")})
    with caplog.at_level(logging.WARNING, logger="smegd"):
        d._report_unprovable(None, some)
        d._report_unprovable(some, RoutingResult({}, {}, {}, (), unprovable=dict(some.unprovable)))
        d._report_unprovable(some, RoutingResult({}, {}, {}, ()))
    [line] = [r.getMessage() for r in caplog.records]
    assert "mesh mesh-a: no routes advertised through mesh-x, mesh-y" in line


# --------------------------------------------------------------------------- record size


def _longest_record(mesh: Mesh, who: int, first: Mesh) -> NodeRecord:
    """``who``'s largest valid record: as many routes of 15 meshes of 63 characters as fit."""
    tail = [f"{who}-" + "a" * 55 + f"-{j:04}" for j in range(14 * 200)]
    count = 120
    while True:
        routes = tuple(
            RouteAdv(pfx(tail[14 * i + 13]), (first.mesh_id, *tail[14 * i : 14 * i + 14]))
            for i in range(count)
        )
        try:
            return mesh.record(
                ident(who),
                role=Role.PEER,
                wg_endpoint=f"192.0.2.{who}:51820",
                routes=routes,
                proofs=(MembershipProof(first.founding, ()),),
            )
        except RecordError:
            count -= 1


def test_a_members_longest_routes_do_not_make_a_bridges_record_too_large() -> None:
    """One valid record of long paths: re-advertised one mesh longer, the bridge's own
    record passed MAX_RECORD_BYTES, route_meshes raised and smegd's reconcile loop ended."""
    b = ident(10)
    n = Mesh(name="north-mesh-n", founder=b)
    m = Mesh(name="middle-mesh-m", founder=b)
    n.admit(ident(11))
    n.admit(ident(12))
    p = Mesh(name="pine-mesh-p", founder=ident(11))
    f = Mesh(name="fake-mesh-f", founder=ident(12))
    h = _longest_record(n, 12, f)
    assert len(h.routes) < MAX_ROUTES // 4
    st = n.state()
    assert st.apply(_advertiser(n, 11, p, ["quay-mesh"]), NOW)
    assert st.apply(h, NOW)
    nodes = {
        n.mesh_id: member_node(b, n.mesh_id, st),
        m.mesh_id: member_node(b, m.mesh_id, m.state()),
    }
    for node in nodes.values():
        node.start(T)
    opts = {k: MeshRouting(advertise_routes=True) for k in nodes}
    route_meshes(nodes, opts, accept_defaults=False, now_ms=T + 1000)
    rec = nodes[m.mesh_id].record
    assert rec is not None and len(rec.signed_payload()) <= MAX_RECORD_BYTES
    assert RouteAdv(pfx("quay-mesh"), (n.mesh_id, p.mesh_id, "quay-mesh")) in rec.routes
    assert sum(1 for a in rec.routes if f.mesh_id in a.path) > len(h.routes) // 3


def test_advert_bytes_is_the_size_in_the_signed_record() -> None:
    rnd = random.Random(1)
    for _ in range(500):
        path = tuple("a" * rnd.randint(1, 63) for _ in range(rnd.randint(0, MAX_ROUTE_PATH)))
        adv = RouteAdv(rnd.choice(["::/0", pfx(str(rnd.random()))]), path)
        assert advert_bytes(adv) == len(msgpack.packb([adv.prefix, list(path)], use_bin_type=True))


def test_a_failed_route_computation_does_not_end_the_reconcile_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route computation raising (the too-large record above) ended smegd's reconcile task:
    no WireGuard, DNS or route change was applied after it, until a restart."""
    d = Daemon(parse_config({"stateDir": str(tmp_path), "stubWg": True}))
    calls: list[int] = []

    def broken(*_a: object, **_k: object) -> None:
        calls.append(1)
        raise RecordError("record", "larger than 98304 bytes")

    async def nothing() -> None:
        return None

    monkeypatch.setattr(apply, "routing_job", broken)
    d._update_dns = lambda: calls.append(2)  # type: ignore[method-assign]
    d._report_alias_clashes = lambda: None  # type: ignore[method-assign]
    d._apply_bridge_nat = nothing  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="smegd"):
        for _ in range(3):
            asyncio.run(d._reconcile_pass())
    assert calls == [1, 2] * 3  # every pass went on past the routes
    assert [r.getMessage() for r in caplog.records] == [
        "cannot compute routes (kept the last ones)"
    ]


# --------------------------------------------------------------------------- cost


def test_prefix_text_is_the_prefixes_text() -> None:
    rnd = random.Random(2)
    for i in range(3000):
        assert prefix_text(f"m{i}") == pfx(f"m{i}")
    for _ in range(3000):  # zero hextets and zero bytes, where text forms differ
        h = bytes(rnd.choice([0, 0, 1, 0x10, 0xFF, rnd.randrange(256)]) for _ in range(6))
        raw = b"\xfd" + h + b"\x01" + bytes(8)
        assert hextets_text(h) == str(ipaddress.IPv6Network((raw, 64)))


def test_the_route_computation_runs_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compute_routes is linear in records times routes: members' records of many
    routes made it seconds of the event loop (100 records of 512 routes: 1.3 s),
    stalling gossip, probes and the API. It runs in a thread now."""
    import time

    d = Daemon(parse_config({"stateDir": str(tmp_path), "stubWg": True}))

    def slow_job(*_a: object, **_k: object) -> Any:
        def job() -> None:
            time.sleep(0.6)  # a long computation: blocking, as compute_routes is

        return job

    async def nothing() -> None:
        return None

    monkeypatch.setattr(apply, "routing_job", slow_job)
    d._update_dns = lambda: None  # type: ignore[method-assign]
    d._report_alias_clashes = lambda: None  # type: ignore[method-assign]
    d._apply_bridge_nat = nothing  # type: ignore[method-assign]

    async def main() -> float:
        gaps: list[float] = []
        done = False

        async def ticker() -> None:
            last = time.perf_counter()
            while not done:
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        t = asyncio.create_task(ticker())
        await d._reconcile_pass()
        done = True
        await t
        return max(gaps)

    assert asyncio.run(main()) < 0.3
