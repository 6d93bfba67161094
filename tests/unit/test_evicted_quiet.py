"""A node that knows it was evicted stops calling the members (core.evicted).

Left by the twenty-ninth session: told, it went on with its gossip rounds,
pulls and probes, every one refused, at the members' cost. A peer pruned each
member in turn (the probes failed), at ~130 calls in its first minute, until
it showed itself alone in the mesh; a client pinged its peer and gossiped on
for good, ~250 calls a minute. Now it calls one member, picked at random, once
every ``EVICTED_CHECK_MS`` (a pull): enough to see a void eviction (its issuer
was no admin then) and go back to work, nothing more.
"""

from __future__ import annotations

from dataclasses import replace

from smegmesh.core.cert import AdminChange, Revocation
from smegmesh.core.evicted import EVICTED_CHECK_MS, eviction_of
from smegmesh.core.meshnode import MeshNode
from smegmesh.core.record import Role
from smegmesh.core.sync import Push, SyncStart
from smegmesh.testbed.founded import NOW, Mesh, drive, each_over_own_state, ident

MINUTE = 60_000


def _evicted(client: bool = False) -> tuple[MeshNode, list[MeshNode]]:
    """A mesh of the founder and six members, the last (B) evicted; every member knows."""
    m = Mesh()
    nodes = each_over_own_state(m, [ident(i) for i in range(2, 8)])
    admin, b = nodes[0], nodes[-1]
    if client:
        b.settings = replace(b.settings, role=Role.CLIENT, wg_endpoint=None, control_endpoint=None)
        b.start(NOW + 100)
        for n in nodes[:-1]:
            n.mesh.apply_many(b.mesh.items_for([b.key]), NOW + 100)
    admin.evict(NOW + 5_000, b.key)
    for n in nodes[1:-1]:
        n.mesh.apply_many(admin.mesh.authority.revoked[b.key], NOW + 5_000)
    return b, nodes[:-1]


def _per_minute(b: MeshNode, members: list[MeshNode], t0: int, minutes: int) -> list[int]:
    return [len(drive(b, members, t0 + i * MINUTE, t0 + (i + 1) * MINUTE)) for i in range(minutes)]


def test_a_peer_told_it_was_evicted_stops_calling_the_members() -> None:
    b, members = _evicted()
    drive(b, members, NOW + 5_001, NOW + 6_000)
    assert b.evicted is not None
    calls = _per_minute(b, members, NOW + 6_000, 11)
    print(f"\ncalls per minute, a peer told it was evicted: {calls}")
    # one pull every EVICTED_CHECK_MS; before: [136, 0, 0...], every member pruned
    assert sum(calls) <= 11 * MINUTE // EVICTED_CHECK_MS
    assert all(n <= 1 for n in calls)
    assert len(b.live_records()) == 7  # it pruned nobody: "1/1 online" before
    assert b.evicted is not None


def test_a_client_told_it_was_evicted_stops_calling_its_peer() -> None:
    b, members = _evicted(client=True)
    drive(b, members, NOW + 5_001, NOW + 6_000)
    assert b.evicted is not None
    calls = _per_minute(b, members, NOW + 6_000, 11)
    print(f"\ncalls per minute, a client told it was evicted: {calls}")
    assert sum(calls) <= 11 * MINUTE // EVICTED_CHECK_MS  # before: ~250 a minute, for good
    assert b.evicted is not None


def test_the_rare_check_is_a_pull_and_sees_a_void_eviction() -> None:
    """An eviction by an admin dropped before it: B believed it (it did not know of the
    drop); its one pull in a while brings the drop, and B goes back to work."""
    m = Mesh()
    admin, a, x, b = each_over_own_state(m, [ident(2), ident(3), ident(4)])
    made = AdminChange.create(m.founder, m.mesh_id, subject=x.key, admin=True, now_ms=NOW + 1_000)
    for n in (admin, a, x, b):
        n.mesh.apply_many([made], NOW + 1_000)
    admin.evict(NOW + 2_000, x.key)  # B does not know; the members do
    a.mesh.apply_many(admin.mesh.authority.revoked[x.key], NOW + 2_000)
    fake = Revocation.create(
        x.identity, m.mesh_id, target=b.key, cascade=False, keep=(), now_ms=NOW + 3_000
    )
    b.evicted = eviction_of(b.mesh, b.key, Push(m.mesh_id, (fake,)))
    assert b.evicted == fake
    quiet = drive(b, [admin, a], NOW + 3_000, NOW + 3_000 + EVICTED_CHECK_MS - 1)
    assert quiet == []
    check = drive(b, [admin, a], NOW + 3_000 + EVICTED_CHECK_MS - 1, NOW + 3_000 + MINUTE * 6)
    assert isinstance(check[0].msg, SyncStart)  # the pull, to a member that takes it
    assert b.evicted is None  # the drop came with it: void
    back = drive(b, [admin, a], NOW + MINUTE * 7, NOW + MINUTE * 8)
    assert len(back) > 20  # back to its gossip and probes
    assert len(b.live_records()) == 3  # and the members that answer are not pruned


def test_a_clock_stepped_back_does_not_hold_the_check_back() -> None:
    """Set back an hour, the next check is still due EVICTED_CHECK_MS after the last."""
    b, members = _evicted()
    drive(b, members, NOW + 5_001, NOW + 6_000)
    assert b.evicted is not None and drive(b, members, NOW + 6_000, NOW + 7_000) == []
    b.clock_stepped(-3_600_000)
    t = NOW + 7_000 - 3_600_000
    calls = drive(b, members, t, t + EVICTED_CHECK_MS)
    assert len(calls) == 1 and isinstance(calls[0].msg, SyncStart)
