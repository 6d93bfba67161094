"""``NameTable`` keeps the names of a changing set of nodes one node at a time:
after any sequence of updates it holds exactly what building them from scratch
gives (``NameView``'s batch construction, the oracle)."""

from __future__ import annotations

import hashlib
import ipaddress
import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from hypo import examples
from smegmesh.dns.names import (
    ZONE,
    NameView,
    NodeName,
    _Entry,
    node_id_prefix,
    resolve,
)
from smegmesh.dns.nametable import NameTable


def _reference(nodes: list[NodeName]) -> tuple[dict[str, _Entry], set[str]]:
    """The names built from scratch (``NameView``'s batch construction)."""
    view = NameView(nodes)
    return view._names, set(view._rev_zones)


# -- a small world, so that names collide: shared aliases, an alias spelling a
# NODEID or a mesh id, two nodes on one address, ids that are no DNS label ------------
KEYS = [hashlib.sha256(b"key %d" % i).digest() for i in range(6)]
MESHES = ["alpha", "Beta", "web", "bad mesh"]
ALIASES = ["", "web", "db", "alpha", "has space", node_id_prefix(KEYS[0]), "WEB"]
ADDRS = [ipaddress.IPv6Address(f"fd00:{m}::{a}") for m in (1, 2) for a in (1, 2, 3)]

node_names = st.builds(
    NodeName,
    mesh_id=st.sampled_from(MESHES),
    alias=st.sampled_from(ALIASES),
    wg_key=st.sampled_from(KEYS),
    address=st.sampled_from(ADDRS),
)


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.lists(node_names, max_size=12), min_size=1, max_size=6))
def test_every_update_holds_what_a_fresh_build_gives(steps: list[list[NodeName]]) -> None:
    table = NameTable()
    for nodes in steps:
        table.sync(nodes)
        names, zones = _reference(nodes)
        assert table.names() == names
        assert set(table.zones()) == zones
        view = NameView.of(table, 7)
        assert view._names == names and set(view._rev_zones) == zones
    table.sync([])
    assert table.names() == {ZONE: _Entry(zone=ZONE, apex=True)} and table.zones() == {}


def test_sync_reports_what_changed_and_a_view_is_a_snapshot() -> None:
    web = NodeName("alpha", "web", KEYS[1], ADDRS[0])
    db = NodeName("alpha", "db", KEYS[2], ADDRS[1])
    table = NameTable()
    assert table.sync([web, db]) == 2 and table.sync([web, db]) == 0
    before = NameView.of(table, 1)
    moved = NodeName("alpha", "web", KEYS[1], ADDRS[2])
    assert table.sync([moved, db]) == 1 and table.sync([db]) == 1
    # the snapshot taken before still answers as it did
    assert [r.data for r in resolve(before, "web.alpha.smeg", 28).answer] == [str(ADDRS[0])]
    assert resolve(NameView.of(table, 2), "web.alpha.smeg", 28).rcode == 3  # NXDOMAIN


def _mesh(n: int, seed: int) -> list[NodeName]:
    rng = random.Random(seed)
    return [
        NodeName(
            "amber-falcon",
            f"n{i}" if i % 2 else "",
            hashlib.sha256(b"%d" % i).digest(),
            ipaddress.IPv6Address(0xFD << 120 | rng.getrandbits(120)),
        )
        for i in range(n)
    ]


def test_one_changed_node_costs_far_less_than_a_fresh_build() -> None:
    """3,000 nodes: a sync with one node changed against building the view anew."""
    nodes = _mesh(3000, 1)
    table = NameTable()
    table.sync(nodes)
    t0 = time.perf_counter()
    NameView(nodes)
    fresh = time.perf_counter() - t0
    changed = list(nodes)
    t0 = time.perf_counter()
    for i in range(10):
        n = nodes[i]
        changed[i] = NodeName(n.mesh_id, "moved", n.wg_key, n.address)
        table.sync(changed)
        NameView.of(table, i)
    one = (time.perf_counter() - t0) / 10
    assert one < fresh / 5, (one, fresh)
    # the view a table gives is the batch construction's
    assert NameView.of(table, 3)._names == NameView(changed)._names


def test_the_daemon_reuses_the_name_of_an_unchanged_record() -> None:
    from types import SimpleNamespace

    from smegmesh.daemon.dns_wiring import node_name

    rec = SimpleNamespace(wg_key=KEYS[1], address="fd00:1::1")
    old: dict[tuple[str, bytes], tuple[object, str, object]] = {}
    new: dict[tuple[str, bytes], tuple[object, str, object]] = {}
    first = node_name(old, new, "alpha", rec, "web")
    assert first == NodeName("alpha", "web", KEYS[1], ADDRS[0])
    old, new = new, {}
    assert node_name(old, new, "alpha", rec, "web") is first  # same record, same alias
    assert node_name(old, {}, "alpha", rec, "") == NodeName("alpha", "", KEYS[1], ADDRS[0])
    moved = SimpleNamespace(wg_key=KEYS[1], address="fd00:1::2")  # a new record
    assert node_name(old, {}, "alpha", moved, "web").address == ADDRS[1]
