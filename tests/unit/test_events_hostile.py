"""What a member turned bad can make of this node's events and their log lines.

A review of observability under a hostile peer (docs/SECURITY.md, "Events,
logs and metrics under a hostile member"): each test failed on the code
before its fix.
"""

from __future__ import annotations

import ipaddress
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from smegmesh.core.record import NodeRecord
from smegmesh.core.routing import RouteEntry, RoutingResult
from smegmesh.daemon.dns_wiring import DnsOps
from smegmesh.daemon.event_bus import LOG_LINES_PER_NODE, LOG_MAX_NODES
from smegmesh.daemon.events import ROUTE_EVENTS_MAX, EventBus, describe, route_events
from smegmesh.daemon.runtime import MeshRuntime
from smegmesh.daemon.views import alias_conflict
from smegmesh.testbed.founded import ident

MESH = "amber-falcon-river-k7q2"
BAD = b"\x0b" * 32
NOW = 1_700_000_000_000
#: route changes of one pass shown one by one (docs/EVENTS.md); more: one summary


def _routing(*entries: RouteEntry) -> RoutingResult:
    return RoutingResult(adverts={}, gateway_routes={}, client_destinations={}, table=entries)


def _invented(n: int, gateway: bytes = BAD) -> list[RouteEntry]:
    """``n`` destinations a member made up, through its own mesh (length 2)."""
    base = ipaddress.IPv6Network("fd77::/48")
    subnets = base.subnets(new_prefix=64)
    return [RouteEntry(str(next(subnets)), MESH, gateway, ("its-own-mesh",), 0) for _ in range(n)]


def test_a_member_flipping_its_invented_routes_makes_a_bounded_number_of_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """512 invented destinations (a record's most), published and withdrawn: one
    event per destination made 512 events and 512 INFO lines per flip (the ring of
    1,024 turned over by two flips, journald's 10,000 lines in 30 s by 20)."""
    real = RouteEntry("fd99::/64", MESH, b"\x01" * 32, (), 0)
    exit_ = RouteEntry("::/0", MESH, b"\x01" * 32, (), 0)
    quiet = _routing(real, exit_)
    flooded = _routing(real, exit_, *_invented(512))
    evs = route_events(quiet, flooded)
    assert len(evs) <= ROUTE_EVENTS_MAX + 1, len(evs)
    (summary,) = [e for e in evs if "count" in e[3]]
    assert summary[:3] == ("route.changed", MESH, None)
    assert summary[3]["count"] == 512
    back = route_events(flooded, quiet)
    assert len(back) <= ROUTE_EVENTS_MAX + 1 and back[0][3]["count"] == 512
    bus = EventBus()
    caplog.set_level(logging.INFO, logger="smegd.events")
    for kind, mesh, gw, detail in evs + back:
        bus.publish(kind, mesh=mesh, node=gw, detail=detail)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"mesh {MESH}: 512 routes changed"] * 2
    # a few changes are still one event each, and an exit change always is
    few = route_events(quiet, _routing(exit_, *_invented(3)))
    assert sorted(e[3]["destination"] for e in few) == sorted(
        ["fd77::/64", "fd77:0:0:1::/64", "fd77:0:0:2::/64", "fd99::/64"]
    )
    moved = RouteEntry("::/0", MESH, b"\x02" * 32, (), 0)
    many = route_events(flooded, _routing(real, moved))
    assert [e[0] for e in many] == ["exit.changed", "route.changed"]
    assert many[0][3]["destination"] == "::/0" and many[1][3]["count"] == 512


def test_a_route_summary_reads_as_one_line() -> None:
    ev = {"type": "route.changed", "mesh": MESH, "detail": {"count": 40}}
    assert describe(ev) == f"mesh {MESH}: 40 routes changed"


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_member_changing_its_record_without_end_gets_a_bounded_number_of_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A member may publish versions as often as its call budget allows (100 a
    second), each with a new description or services: one INFO line each (~6 KB
    with 16 services, docs/SECURITY.md), enough with a few keys for journald to drop every smegd
    line. Its events still all go to the stream; its lines are capped per node."""
    clock = _Clock()
    bus = EventBus(monotonic=clock)
    sub = bus.subscribe()
    caplog.set_level(logging.INFO, logger="smegd.events")
    for i in range(1000):
        bus.publish(
            "member.changed",
            mesh=MESH,
            node=BAD,
            alias="bad",
            detail={"description": {"old": f"v{i}", "new": f"v{i + 1}"}},
        )
    bus.publish("member.joined", mesh=MESH, node=b"\x01" * 32, alias="good")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) <= LOG_LINES_PER_NODE + 1, len(lines)
    assert lines[-1] == f"mesh {MESH}: member good joined"  # another node is not held back
    assert len(sub) == 256 and sub.missed == 1001 - 256  # the stream is as before
    caplog.clear()
    clock.t += 61
    bus.tick()
    (summary,) = [r.getMessage() for r in caplog.records]
    assert summary.startswith("member events of Cws") and "970 not logged in the last 61 s" in (
        summary
    ), summary
    caplog.clear()
    bus.publish("member.left", mesh=MESH, node=BAD, alias="bad")  # a new minute: logged
    assert [r.getMessage() for r in caplog.records] == [f"mesh {MESH}: member bad left"]


def test_the_nodes_whose_log_lines_are_counted_are_bounded() -> None:
    """Keys a member makes up (devices, throwaway admissions) cannot grow the counts."""
    bus = EventBus(monotonic=_Clock())
    for i in range(10_000):
        bus.publish("wg.peer_added", mesh=MESH, node=i.to_bytes(32, "big"))
    assert len(bus._lines) <= LOG_MAX_NODES + 1


def test_get_mesh_shows_a_members_ipv6_endpoint_as_it_is() -> None:
    """``smegctl get-mesh`` put a member's endpoint into a rich table as markup:
    ``[fd00::1]:51820`` (any IPv6 endpoint starting with a-f) was taken for a style
    tag and shown as ``:51820``. A member's text in a table is now plain text."""
    import io

    from rich.console import Console

    from smegmesh.cli.tables import mesh_tables
    from smegmesh.core.addressing import mesh_prefix, overlay_address
    from smegmesh.daemon.api_models import MeshDetail, NodeInfo

    key = b"\x07" * 32
    node = NodeInfo(
        public_key="BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
        role="peer",
        overlay_address=str(overlay_address(MESH, key)),
        wg_endpoint="[fd00:ab::1]:51820",
        alias="bravo",
    )
    d = MeshDetail(mesh_id=MESH, prefix=str(mesh_prefix(MESH)), self_key="x", nodes=[node])
    out = io.StringIO()
    con = Console(file=out, width=400, color_system=None)
    for part in mesh_tables(d):
        con.print(part)
    assert "[fd00:ab::1]:51820" in out.getvalue(), out.getvalue()


def _clash_reporter(me: NodeRecord, rival: int) -> tuple[Any, Any]:
    """The daemon's alias-clash report over a mesh of ``me`` and ``ident(rival)``."""
    mesh = SimpleNamespace(version=0, admission=None)  # no authority: no reservations
    records = [me, me]
    rt = MeshRuntime.__new__(MeshRuntime)
    rt.mesh_id, rt.alias_clash, rt.alias_checked = MESH, None, -1
    rt.node = SimpleNamespace(mesh=mesh, live_records=lambda: records)  # type: ignore[assignment]
    ops = DnsOps.__new__(DnsOps)
    ops.meshes = {MESH: rt}  # type: ignore[attr-defined]
    ops.identity = SimpleNamespace(wg_public_key=me.wg_key)  # type: ignore[attr-defined]

    def switch(alias: str) -> None:  # the rival publishes a version with ``alias``
        records[1] = NodeRecord.create(
            ident(rival), MESH, version=mesh.version + 2, now_ms=NOW, alias=alias
        )
        mesh.version += 1
        ops._report_alias_clashes()

    return switch, rt


def test_a_member_switching_its_alias_to_ours_and_back_gets_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A member that owns an alias before us (admitted earlier, or ranked first)
    can switch its alias to ours and back with each version of its record: each
    switch was one WARNING (and one INFO "resolved"), as many as reconcile passes."""
    one, two = (
        NodeRecord.create(ident(i), MESH, version=1, now_ms=NOW, alias="web") for i in (1, 2)
    )
    ours = 1 if alias_conflict([one, two], one.wg_key) else 2  # the one the ranking puts second
    switch, rt = _clash_reporter(one if ours == 1 else two, 3 - ours)
    with caplog.at_level(logging.DEBUG, logger="smegd"):
        for _ in range(50):
            switch("web")
            switch("other")
    above_debug = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert [r.levelno for r in above_debug] == [logging.WARNING, logging.INFO], [
        r.getMessage() for r in above_debug
    ]  # was 50 WARNING and 50 INFO
    switch("web")
    assert rt.alias_clash  # the clash is still tracked (and shown by status)
