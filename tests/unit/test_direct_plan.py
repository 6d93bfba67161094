"""A client's NAT-traversal decisions, pure (core/direct_plan.py; issue 13 moved them
out of daemon/direct.py): targets and probes, port moves, discovery and probe timing."""

from __future__ import annotations

from nat_nodes import MESH, NOW, client, peer
from smegmesh.core.desired import assigned_peer
from smegmesh.core.direct import choose_direct
from smegmesh.core.direct_plan import (
    CLASH_MOVE_DELAY_MS,
    DISCOVER_MS,
    DISCOVER_RETRY_MS,
    HANDSHAKE_GRACE_MS,
    MAX_PORT_MOVES,
    RELOCATE_SETTLE_MS,
    SLOW_PROBE_MS,
    DirectSchedule,
    clash_move_delay_ms,
    direct_targets,
    endpoint_host,
    endpoint_port,
    nat_moved_port,
    next_port,
    port_clash,
    relocated_port,
)


def test_targets_are_the_mutual_choice_and_probes_add_the_relay() -> None:
    peers = [peer(i) for i in (10, 11)]
    clients = [client(i, f"203.0.113.{i}:40000") for i in range(6)]
    me = clients[0]
    t = direct_targets(me, [*peers, *clients], 2)
    assert set(t.chosen) == choose_direct(me.wg_key, clients, 2) and len(t.chosen) <= 2
    assert all(
        t.chosen[k] == next(c.nat_endpoint for c in clients if c.wg_key == k) for k in t.chosen
    )
    via = assigned_peer(me, {p.wg_key: p for p in peers})
    assert via is not None
    by_key = {r.wg_key: r for r in [*peers, *clients]}
    assert t.probed == {**{k: by_key[k].address for k in t.chosen}, via: by_key[via].address}
    assert direct_targets(me, [*peers, *clients], 0).chosen == {}
    # a chosen client without a usable endpoint is not a target
    bare = client(1)
    assert bare.wg_key not in direct_targets(me, [*peers, me, bare], 4).chosen


def test_endpoint_parts_and_a_port_the_nat_did_not_keep() -> None:
    assert endpoint_host("[2001:db8::1]:51820") == "2001:db8::1"
    assert endpoint_host(None) is None and endpoint_host("garbage") is None
    assert endpoint_port("203.0.113.5:1024") == 1024 and endpoint_port("x") is None
    assert nat_moved_port("203.0.113.5:1024", 51820)
    assert not nat_moved_port("203.0.113.5:51820", 51820)
    assert not nat_moved_port("garbage", 51820)  # nothing to go on: stay


def test_port_clash_moves_both_behind_the_same_address() -> None:
    a, b = (client(i, "203.0.113.5:51820", (f"192.168.1.{10 + i}:51820",)) for i in (0, 1))
    assert port_clash(a, [a, b], 51820) == b
    assert port_clash(b, [b, a], 51820) == a
    other = client(1, "203.0.113.5:40000", ("192.168.1.11:40000",))
    assert port_clash(a, [other], 51820) is None  # another port: no clash
    elsewhere = client(2, "198.51.100.7:51820", ("192.168.1.12:51820",))
    assert port_clash(a, [elsewhere], 51820) is None  # another NAT
    assert port_clash(client(0), [b], 51820) is None  # own public address unknown


def test_a_move_goes_to_the_port_of_its_salt_never_to_the_one_it_leaves() -> None:
    key = client(0).wg_key
    first, second = (relocated_port(MESH, key, set(), salt) for salt in (0, 1))
    assert next_port(MESH, key, set(), 0, 51820) == first
    assert next_port(MESH, key, set(), 1, first) == second  # the second move
    assert next_port(MESH, key, set(), 0, first) == second  # restarted on the first
    assert next_port(MESH, key, {first}, 0, 51820) not in (first, 51820)  # another mesh has it


def test_two_derived_ports_that_collide_move_once_more() -> None:
    """Two clients behind one NAT whose derived ports are equal (1 in 16,384) clash
    again after their move: a second move, to the port derived with the next salt,
    is allowed; a third is not."""
    s = DirectSchedule()
    assert s.moves == 0 and s.may_move(user_port=False)
    s.moved(NOW)
    assert s.moves == 1
    assert not s.may_move(user_port=False)  # a NAT that will not keep a port: once
    assert s.may_move(user_port=False, clash=True)  # a port-mate on our new port
    s.moved(NOW + 1)
    assert not s.may_move(user_port=False, clash=True)
    assert not DirectSchedule().may_move(user_port=True, clash=True)


def test_discovery_is_fast_until_the_endpoint_is_known_then_periodic() -> None:
    s = DirectSchedule()
    assert s.discovery_due(NOW, endpoint_known=False)  # never done: now
    assert not s.discovery_due(NOW + DISCOVER_RETRY_MS - 1, endpoint_known=False)
    assert s.discovery_due(NOW + DISCOVER_RETRY_MS, endpoint_known=False)
    t = NOW + DISCOVER_RETRY_MS
    assert not s.discovery_due(t + DISCOVER_RETRY_MS, endpoint_known=True)
    assert not s.discovery_due(t + DISCOVER_MS - 1, endpoint_known=True)
    assert s.discovery_due(t + DISCOVER_MS, endpoint_known=True)


def test_no_handshake_yet_is_normal_for_a_while_after_the_join_and_after_a_move() -> None:
    """A client's first discoveries find no handshake with its relay yet: every
    join logged an "endpoint discovery: failure" line (eleventh session's log
    noise). It is a failure only after HANDSHAKE_GRACE_MS."""
    s = DirectSchedule()
    assert not s.no_handshake_yet_is_normal(NOW)  # no discovery yet: nothing to excuse
    assert s.discovery_due(NOW, endpoint_known=False)
    assert s.no_handshake_yet_is_normal(NOW + HANDSHAKE_GRACE_MS - 1)
    assert not s.no_handshake_yet_is_normal(NOW + HANDSHAKE_GRACE_MS)
    s.moved(NOW + 40_000)  # a new port: a new first handshake
    assert s.no_handshake_yet_is_normal(NOW + 40_000 + HANDSHAKE_GRACE_MS - 1)
    assert not s.no_handshake_yet_is_normal(NOW + 40_000 + HANDSHAKE_GRACE_MS)


def test_slow_probes_every_period() -> None:
    s = DirectSchedule()
    assert s.slow_probe_due(NOW)
    assert not s.slow_probe_due(NOW + SLOW_PROBE_MS - 1)
    assert s.slow_probe_due(NOW + SLOW_PROBE_MS)


def test_port_moves_once_never_off_a_user_port_then_settles() -> None:
    s = DirectSchedule()
    assert not s.may_move(user_port=True)
    assert s.may_move(user_port=False)
    assert s.discovery_due(NOW, endpoint_known=True)
    s.moved(NOW + 100)
    assert not s.may_move(user_port=False)  # once
    assert s.discovery_due(NOW + 100, endpoint_known=True)  # the new mapping at once
    # the relay still sees the old port: not the answer, ask again after the retry period
    t = NOW + 200
    assert s.settling(t, "203.0.113.5:51820", 50000, endpoint_known=True)
    assert not s.discovery_due(t + DISCOVER_RETRY_MS - 1, endpoint_known=True)
    assert s.discovery_due(t + DISCOVER_RETRY_MS, endpoint_known=True)
    assert not s.settling(t, "203.0.113.5:50000", 50000, endpoint_known=True)  # seen: done
    late = NOW + 100 + RELOCATE_SETTLE_MS
    assert not s.settling(late, "203.0.113.5:51820", 50000, endpoint_known=True)
    assert not DirectSchedule().settling(NOW, "203.0.113.5:1", 50000, endpoint_known=True)


def test_a_clash_is_kept_and_moves_after_the_delay() -> None:
    """``clash_move_due``: nothing before a clash is seen; once seen, the move
    is due CLASH_MOVE_DELAY_MS later whether or not the clash still shows; a
    move starts afresh."""
    s = DirectSchedule()
    assert not s.clash_move_due(NOW, clash=False) and s.clash_ms is None
    assert not s.clash_move_due(NOW, clash=True)
    assert not s.clash_move_due(NOW + CLASH_MOVE_DELAY_MS - 1, clash=False)
    assert s.clash_move_due(NOW + CLASH_MOVE_DELAY_MS, clash=False)
    s.moved(NOW + CLASH_MOVE_DELAY_MS)
    assert s.clash_ms is None and not s.clash_move_due(NOW + 10 * CLASH_MOVE_DELAY_MS, False)
    # two pulls, 6 s at the least: a client may learn the clash only at its next pull
    assert clash_move_delay_ms(3_000) == CLASH_MOVE_DELAY_MS == 6_000
    assert clash_move_delay_ms(20_000) == 40_000
    assert not s.clash_move_due(NOW, True, delay_ms=40_000) and not s.sessions_allowed
    assert s.clash_move_due(NOW + 40_000, False, delay_ms=40_000)
    s.paused()  # the mesh went down: the clash seen is stale
    assert s.clash_ms is None and s.sessions_allowed
    # nothing is kept where the port may not move: a user's port, the moves used up
    u = DirectSchedule()
    assert not u.clash_move_due(NOW, True, user_port=True) and u.sessions_allowed
    done = DirectSchedule(moves=MAX_PORT_MOVES)
    assert not done.clash_move_due(NOW, True) and done.sessions_allowed
