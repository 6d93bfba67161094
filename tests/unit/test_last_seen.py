"""LAST SEEN in ``get-mesh`` and ``status`` for a client and its peers.

Found by a user sweep on real daemons: a client showed its live assigned peer
as last seen "never", and a member showed a live client as last seen "44s
ago", "3m26s ago" while counting it online. Members do not probe clients:
only a client's assigned peer hears from it (its pings, every probe period);
every other member knows it alive through gossip, its assigned peer vouching
for it (the peer prunes a client silent for a ``clientTimeout``). And a client
hears from its own peer only (pings, pulls): every other member's liveness
comes to it from that peer. Such a node's row says so (``seen_via``, LAST SEEN
``via <peer>``) instead of the age of a message heard once, at the join.
"""

from __future__ import annotations

import io

from rich.console import Console

from smegmesh.cli.status import print_status
from smegmesh.cli.tables import mesh_tables
from smegmesh.core.identity import key_to_text
from smegmesh.core.meshnode import MeshNode
from smegmesh.daemon import views
from smegmesh.daemon.api_models import MeshDetail, NodeInfo
from smegmesh.daemon.status import build_status
from test_meshnode import mesh_of


def _detail(node: MeshNode, now_ms: int) -> MeshDetail:
    """``get-mesh`` of ``node`` as smegd builds it (daemon/localapi.py)."""
    records = node.live_records()
    heard = {r.wg_key: t for r in records if (t := node.last_heard(r.wg_key)) is not None}
    return views.mesh_detail(
        node.mesh_id,
        "smeg0",
        records,
        self_key=node.key,
        wg_peers={},
        last_heard=heard,
        suspects=set(node.suspects),
        now_ms=now_ms,
    )


def _row(d: MeshDetail, key: bytes) -> NodeInfo:
    (n,) = [n for n in d.nodes if n.public_key == key_to_text(key)]
    return n


def _text(d: MeshDetail) -> str:
    out = io.StringIO()
    con = Console(file=out, width=400, color_system=None)
    for part in mesh_tables(d):
        con.print(part)
    return out.getvalue()


def _line(text: str, key: bytes) -> str:
    short = key_to_text(key)[:8]
    (line,) = [ln for ln in text.splitlines() if ln.split() and short in ln.split()[-1]]
    return line


def test_a_client_hears_from_its_peer_at_every_ack() -> None:
    """Defect 1: the client's own view of its live assigned peer: heard from within a
    probe period, all the time (its pings are answered every period)."""
    net, nodes = mesh_of(2, 1)
    client = nodes[-1]
    net.run_until(net.now + 3000)
    period = client.liveness.probe_interval_ms
    for _ in range(600):  # every 100 ms for 60 s
        net.run_until(net.now + 100)
        peer = client.my_peer()
        assert peer is not None
        heard = client.last_heard(peer)
        assert heard is not None and net.now - heard <= period + 200
        row = _row(_detail(client, net.now), peer)
        assert row.last_seen is not None and row.seen_via is None
    assert "never" not in _line(_text(_detail(client, net.now)), peer)


def test_a_client_is_seen_by_its_peer_and_via_its_peer_by_the_others() -> None:
    """Defect 2: a member that is not the client's peer does not show a stale age."""
    net, nodes = mesh_of(3, 1)
    client = nodes[-1]
    net.run_until(net.now + 60_000)
    peer = client.my_peer()
    assert peer is not None
    period = client.liveness.probe_interval_ms
    own = _row(_detail(net.nodes[peer], net.now), client.key)
    assert own.seen_via is None and own.last_seen is not None
    assert net.now / 1000 - own.last_seen <= (period + 200) / 1000
    others = [n for n in nodes[:-1] if n.key != peer]
    assert others
    for m in others:
        d = _detail(m, net.now)
        row = _row(d, client.key)
        assert row.status == "live" and row.seen_via == key_to_text(peer)
        line = _line(_text(d), client.key)
        assert f"via {key_to_text(peer)[:8]}" in line and " ago" not in line, line


def test_a_client_sees_the_other_members_via_its_peer() -> None:
    """The client's view of the members other than its peer comes from its peer."""
    net, nodes = mesh_of(3, 1)
    client = nodes[-1]
    net.run_until(net.now + 60_000)
    peer = client.my_peer()
    assert peer is not None
    d = _detail(client, net.now)
    for m in nodes[:-1]:
        row = _row(d, m.key)
        assert row.seen_via == (None if m.key == peer else key_to_text(peer))
    assert _row(d, client.key).seen_via is None  # itself
    text = _text(d)
    for m in nodes[:-1]:
        if m.key != peer:
            assert " ago" not in _line(text, m.key)


def test_status_shows_last_seen_via_the_peer() -> None:
    """``smegctl status``: the same LAST SEEN as get-mesh, ``seen_via`` in its JSON."""
    net, nodes = mesh_of(3, 1)
    client = nodes[-1]
    net.run_until(net.now + 30_000)
    peer = client.my_peer()
    assert peer is not None
    other = next(n for n in nodes[:-1] if n.key != peer)
    st = build_status("test", key_to_text(other.key), [_detail(other, net.now)])
    (m,) = [m for m in st.meshes[0].members if m.public_key == key_to_text(client.key)]
    assert m.seen_via == key_to_text(peer)
    out = io.StringIO()
    print_status(Console(file=out, width=400, color_system=None), st)
    line = _line(out.getvalue(), client.key)
    assert f"via {key_to_text(peer)[:8]}" in line and " ago" not in line.split("via")[-1]
