"""The forwarding guard (docs/ROUTING.md, Forwarding guard; docs/SECURITY.md, routing).

A client with ``acceptDefaults`` sends ``::/0`` to its assigned peer whenever
any member of the mesh offers one; that peer, neither an exit nor accepting
defaults, forwarded it out of its own uplink. And an exit's ``::/0``
AllowedIPs accept any source, those of the node's other meshes included.
"""

from __future__ import annotations

from smegmesh.core.addressing import mesh_prefix
from smegmesh.core.desired import ForwardGuard, forward_guard
from smegmesh.core.record import Role
from smegmesh.net.host import GUARD_LOG_NOT_EXIT, GUARD_LOG_SOURCE, MemoryHost, bridge_nat_ruleset

M1, M2 = "alpha-bravo-charlie-aaaa", "delta-echo-foxtrot-bbbb"


def _chain(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"  chain {name} {{")
    end = lines.index("  }", start)
    return lines[start + 1 : end]


def test_a_peer_that_is_no_exit_forwards_only_into_its_meshes() -> None:
    guard = forward_guard([("smegp", M1, Role.PEER, False)])
    text = bridge_nat_ruleset(frozenset(), guard=guard)
    chain = _chain(text, "mesh-forward")
    assert chain[0] == "    type filter hook forward priority filter; policy accept;"
    drop = '    iifname { "smegp" } oifname != { "smegp" } counter drop'
    assert drop in chain
    # logged before the drop, rate-limited
    log = [ln for ln in chain if "log prefix" in ln]
    assert len(log) == 1 and "limit rate 10/minute" in log[0] and GUARD_LOG_NOT_EXIT in log[0]
    assert chain.index(log[0]) < chain.index(drop)
    assert "mesh-sources" not in text  # one mesh: no other mesh's sources


def test_an_exit_forwards_out_of_the_overlay_from_its_exit_mesh_only() -> None:
    guard = forward_guard([("smega", M1, Role.PEER, True), ("smegb", M2, Role.PEER, False)])
    assert guard.non_exits() == {"smegb"}
    chain = _chain(bridge_nat_ruleset(frozenset(), guard=guard), "mesh-forward")
    assert '    iifname { "smegb" } oifname != { "smega", "smegb" } counter drop' in chain
    only_exit = forward_guard([("smega", M1, Role.PEER, True)])
    assert "mesh-forward" not in bridge_nat_ruleset(frozenset(), guard=only_exit)


def test_a_client_is_no_exit_and_a_client_only_node_needs_no_rules() -> None:
    # a client advertises nothing, advertiseDefaults or not
    both = forward_guard([("smega", M1, Role.CLIENT, True), ("smegb", M2, Role.PEER, False)])
    assert both.non_exits() == {"smega", "smegb"}
    # forwarding is off on a node that is a client everywhere: nothing to forward,
    # and with one mesh no foreign source: the table is only removed (no nft needed)
    alone = forward_guard([("smega", M1, Role.CLIENT, True)])
    assert not alone.forwarding
    assert bridge_nat_ruleset(frozenset(), guard=alone) == (
        "add table ip6 smegmesh\ndelete table ip6 smegmesh\n"
    )
    assert bridge_nat_ruleset(frozenset(), guard=ForwardGuard()) == (
        "add table ip6 smegmesh\ndelete table ip6 smegmesh\n"
    )


def test_sources_of_another_mesh_are_dropped_on_every_mesh_interface() -> None:
    p1, p2 = str(mesh_prefix(M1)), str(mesh_prefix(M2))
    # a client in M2 (forwarding off) still gets the source check
    guard = forward_guard([("smega", M1, Role.CLIENT, False), ("smegb", M2, Role.CLIENT, False)])
    assert guard.foreign_sources() == {"smega": {p2}, "smegb": {p1}}
    chain = _chain(bridge_nat_ruleset(frozenset(), guard=guard), "mesh-sources")
    # before routing: what is forwarded and what is for this node alike
    assert chain[0] == "    type filter hook prerouting priority filter; policy accept;"
    assert f'    iifname "smega" ip6 saddr {{ {p2} }} counter drop' in chain
    assert f'    iifname "smegb" ip6 saddr {{ {p1} }} counter drop' in chain
    assert sum(GUARD_LOG_SOURCE in ln and "limit rate" in ln for ln in chain) == 2
    assert "mesh-forward" not in "\n".join(chain)


def test_nat_and_guard_share_one_table_replaced_at_once() -> None:
    guard = forward_guard([("smega", M1, Role.PEER, False), ("smegb", M2, Role.PEER, False)])
    text = bridge_nat_ruleset(frozenset({"smega", "smegb"}), guard=guard)
    lines = text.splitlines()
    assert lines[:3] == [
        "add table ip6 smegmesh",
        "delete table ip6 smegmesh",
        "table ip6 smegmesh {",
    ]
    assert text.count("table ip6 smegmesh {") == 1
    for chain in ("bridge-nat", "mesh-sources", "mesh-forward"):
        assert _chain(text, chain)
    h = MemoryHost()
    h.set_rules(frozenset({"smega", "smegb"}), guard)
    assert h.guard == guard and h.bridge_nat == {"smega", "smegb"}
