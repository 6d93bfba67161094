"""SWIM-style failure detector: detection, indirect probes, suspicion, clients."""

from __future__ import annotations

import random

from smegmesh.core.liveness import Dead, FailureDetector, LivenessParams, Ping, PingReq


def keys(n: int) -> list[bytes]:
    return [bytes([i]) * 32 for i in range(n)]


PARAMS = LivenessParams(
    probe_interval_ms=1000,
    probe_timeout_ms=300,
    indirect=3,
    suspicion_ms=2000,
    client_timeout_ms=6000,
)


def run(
    fd: FailureDetector,
    peers: list[bytes],
    alive: set[bytes],
    until_ms: int,
    direct_ok: bool = True,
    step: int = 10,
) -> dict[bytes, int]:
    """Drive the detector; live targets ack pings (only indirect ones if not direct_ok)."""
    dead_at: dict[bytes, int] = {}
    for now in range(0, until_ms, step):
        live_peers = [p for p in peers if p not in dead_at]
        for a in fd.tick(now, live_peers):
            if isinstance(a, Ping) and a.target in alive and direct_ok:
                fd.on_ack(a.target, a.probe_id, now)
            elif isinstance(a, PingReq) and a.target in alive:
                fd.on_ack(a.target, a.probe_id, now)
            elif isinstance(a, Dead):
                dead_at[a.target] = now
    return dead_at


def test_dead_member_declared_within_bounds_and_live_ones_never() -> None:
    ks = keys(10)
    me = ks[0]
    fd = FailureDetector(me, PARAMS, random.Random(3))
    alive = set(ks) - {ks[4]}
    dead = run(fd, ks[1:], alive, 60_000)
    assert set(dead) == {ks[4]}
    # round robin over 9 members: probed within 9 periods, then suspicion
    assert dead[ks[4]] <= 9 * 1000 + 1000 + 2000 + 50


def test_indirect_acks_keep_a_member_alive_when_the_direct_path_fails() -> None:
    ks = keys(6)
    fd = FailureDetector(ks[0], PARAMS, random.Random(4))
    dead = run(fd, ks[1:], set(ks), 30_000, direct_ok=False)
    assert dead == {}


def test_hearing_from_a_suspect_clears_it() -> None:
    ks = keys(3)
    fd = FailureDetector(ks[0], PARAMS, random.Random(5))
    suspected = False
    for now in range(0, 20_000, 10):
        for a in fd.tick(now, ks[1:]):
            if isinstance(a, Ping) and a.target == ks[1]:
                fd.on_ack(ks[1], a.probe_id, now)
            assert not isinstance(a, Dead) or a.target != ks[2] or not suspected
        if fd.suspects:
            suspected = True
            fd.heard_from(ks[2], now)  # e.g. a gossip message arrived from it
    assert suspected
    assert not fd.suspects


def test_silent_client_is_declared_dead_by_its_peer_only_after_client_timeout() -> None:
    ks = keys(4)
    fd = FailureDetector(ks[0], PARAMS, random.Random(6))
    client = ks[3]
    dead_at = None
    for now in range(0, 10_000, 10):
        if now < 2000:
            fd.heard_from(client, now)
        for a in fd.tick(now, [], watched_clients=[client]):
            if isinstance(a, Dead):
                dead_at = now
    assert dead_at is not None and 2000 + 6000 - 20 <= dead_at <= 2000 + 6000 + 20


def test_a_client_newly_assigned_to_us_gets_a_whole_client_timeout() -> None:
    """A peer that starts watching a client (its peer died; rendezvous hashing
    now names us) must not declare it dead at once for having last called us
    before we watched it: the client has not even learnt yet that it is ours.
    Seen in ``test_client_reassigned_when_its_peer_dies``: the survivor pruned
    the client 3 s after pruning its peer, because the client's one call to it
    was 7 s old."""
    ks = keys(4)
    fd = FailureDetector(ks[0], PARAMS, random.Random(6))
    client = ks[3]
    fd.heard_from(client, 0)  # it called us once, long before it became ours
    dead_at = None
    for now in range(0, 20_000, 10):
        watched = [client] if now >= 7000 else []
        for a in fd.tick(now, [], watched_clients=watched):
            if isinstance(a, Dead):
                dead_at = now
                break
        if dead_at is not None:
            break
    assert dead_at is not None and 7000 + 6000 - 20 <= dead_at <= 7000 + 6000 + 20


def test_a_node_whose_own_probes_fail_scales_its_timeouts_and_prunes_no_one() -> None:
    """Issue 14 (items 4, 5): local health. A node on a very lossy or starved path
    sees most of its probes fail; without local health it declares live members
    dead (false prunes, each one a refutation storm). With it, its suspicion
    time grows (bounded) and it prunes none of them."""
    from smegmesh.core.liveness import MAX_HEALTH_MULTIPLIER

    ks = keys(30)
    fd = FailureDetector(ks[0], PARAMS, random.Random(7))
    worst = 1
    dead: dict[bytes, int] = {}
    for t in range(0, 120_000, 10_000):
        d = _lossy_run_from(fd, ks[1:], t, t + 10_000, 0.3, random.Random(t))
        dead.update(d)
        worst = max(worst, fd.health_multiplier)
    assert dead == {}, len(dead)
    assert 1 < worst <= MAX_HEALTH_MULTIPLIER


def _lossy_run_from(
    fd: FailureDetector, peers: list[bytes], t0: int, t1: int, loss: float, rng: random.Random
) -> dict[bytes, int]:
    """All members alive; each message lost with ``loss`` (a direct probe needs 2
    messages through, an indirect one 4). Returns the members declared dead."""
    dead_at: dict[bytes, int] = {}
    for now in range(t0, t1, 10):
        for a in fd.tick(now, peers):
            if isinstance(a, Ping) and all(rng.random() >= loss for _ in range(2)):
                fd.on_ack(a.target, a.probe_id, now)
            elif isinstance(a, PingReq) and all(rng.random() >= loss for _ in range(4)):
                fd.on_ack(a.target, a.probe_id, now)
            elif isinstance(a, Dead):
                dead_at[a.target] = now
    return dead_at


def test_local_health_is_bounded_and_recovers() -> None:
    from smegmesh.core.liveness import MAX_HEALTH_MULTIPLIER

    ks = keys(12)
    fd = FailureDetector(ks[0], PARAMS, random.Random(8))
    for _ in range(20):
        fd.refuted()
    assert fd.health_multiplier == MAX_HEALTH_MULTIPLIER
    # Starved: no direct ack in time, ever (acks come only through helpers).
    run(fd, ks[1:], set(ks), 30_000, direct_ok=False)
    assert fd.health_multiplier == MAX_HEALTH_MULTIPLIER
    # Healthy again: direct acks bring it back to the configured timings.
    # (within a minute: its probes come 6x apart at first, then closer as it recovers)
    dead = _lossy_run_from(fd, ks[1:], 30_000, 90_000, 0.0, random.Random(1))
    assert dead == {}
    assert fd.health_multiplier == 1


def test_one_dead_member_does_not_slow_its_own_detection() -> None:
    """Re-probes of a suspect do not count: a crash alone leaves the node healthy,
    so it is declared dead within the configured bound (crash-pruning time kept)."""
    ks = keys(10)
    fd = FailureDetector(ks[0], PARAMS, random.Random(3))
    seen = []
    alive = set(ks) - {ks[4]}
    dead_at: dict[bytes, int] = {}
    for now in range(0, 30_000, 10):
        for a in fd.tick(now, [k for k in ks[1:] if k not in dead_at]):
            if isinstance(a, Ping) and a.target in alive:
                fd.on_ack(a.target, a.probe_id, now)
            elif isinstance(a, Dead):
                dead_at[a.target] = now
        seen.append(fd.health_multiplier)
    assert set(dead_at) == {ks[4]}
    assert dead_at[ks[4]] <= 9 * 1000 + 1000 + 2000 + 50
    assert max(seen) == 1


def test_suspicion_grows_with_the_log_of_the_member_count() -> None:
    """Issue 14, item 3: 10 % loss false-pruned 4 live members of 3,000 in 60 s.

    N members run N probes a period: for the same false-prune rate in the
    mesh, a suspect must get more re-probes in a bigger mesh. Up to 100
    members the configured suspicion applies; at 3,000 it is log10(3000)/2
    times longer (3.48 s instead of 2 s), so a silent member gets ~2
    re-probes instead of 1 before it is declared dead.
    """
    from smegmesh.core.liveness import SUSPICION_BASE_MEMBERS, suspicion_scale

    def suspicion_of(n: int) -> int:
        ks = [i.to_bytes(4, "big") * 8 for i in range(n)]
        fd = FailureDetector(ks[0], PARAMS, random.Random(5))
        started: dict[bytes, int] = {}
        for now in range(0, 20_000, 10):  # nobody answers
            for a in fd.tick(now, ks[1:]):
                if isinstance(a, Ping):
                    started.setdefault(a.target, now)
                elif isinstance(a, Dead):
                    return now - started[a.target]
        raise AssertionError("nobody declared dead")

    assert suspicion_scale(SUSPICION_BASE_MEMBERS) == 1.0
    assert suspicion_of(50) == suspicion_of(100) == PARAMS.suspicion_ms
    at_3000 = suspicion_of(3000)
    assert at_3000 >= PARAMS.suspicion_ms * 1.7, at_3000
    assert at_3000 <= PARAMS.suspicion_ms * 1.75 + 10, at_3000


def test_a_starved_node_probes_less_often_and_a_healthy_one_as_configured() -> None:
    """Issue 14 (item 4): Lifeguard scales the probe period with local health. A
    node whose direct probes all miss (it is the slow one) sent a probe and
    three indirect ones every period, feeding the load that starved it (seen at
    60 real daemons on 2 cores: a self-sustaining storm)."""
    ks = keys(12)

    def probes(direct_ok: bool) -> tuple[int, int]:
        fd = FailureDetector(ks[0], PARAMS, random.Random(5))
        sent = reqs = 0
        for now in range(0, 60_000, 10):
            for a in fd.tick(now, ks[1:]):
                if isinstance(a, Ping):
                    sent += 1
                    if direct_ok:
                        fd.on_ack(a.target, a.probe_id, now)
                elif isinstance(a, PingReq):
                    reqs += 1
                    fd.on_ack(a.target, a.probe_id, now + 1)  # the helpers get through
        return sent, reqs

    healthy, healthy_reqs = probes(True)
    starved, starved_reqs = probes(False)
    assert 58 <= healthy <= 61 and healthy_reqs == 0  # one a second, as configured
    # the period grew to 6x once all of the last 8 probes had missed (2x from 4)
    assert starved <= 0.25 * healthy
    assert starved_reqs <= 3 * starved


def _probing(fd: FailureDetector, peers: list[bytes], now: int) -> tuple[Ping, int]:
    for t in range(now, now + 5_000, 10):
        for a in fd.tick(t, peers):
            if isinstance(a, Ping):
                return a, t
    raise AssertionError("no probe")


def test_a_stalled_node_does_not_suspect_the_member_whose_ack_waits_to_be_read() -> None:
    """Issue 14: at 100 daemons on 2 cores a process is not scheduled for seconds;
    the ack of its probe arrives meanwhile but is read after the late tick, which
    found the probe timed out and suspected (and later pruned) a live member.
    Time we were not running does not count against the member."""
    ks = keys(12)
    for stall_aware in (False, True):
        fd = FailureDetector(ks[0], PARAMS, random.Random(3))
        ping, t0 = _probing(fd, ks[1:], 0)
        t = t0 + 3_000  # the process was not scheduled from ~ping time until now
        if stall_aware:
            fd.stalled(2_700, t)  # the adapter's timer: due at the probe timeout, ran at 3 s
        acts = fd.tick(t, ks[1:])
        fd.on_ack(ping.target, ping.probe_id, t + 5)  # the waiting ack, read next
        acts += fd.tick(t + 500, ks[1:])
        suspected = any(isinstance(a, PingReq) for a in acts) or bool(fd.suspects)
        assert suspected is not stall_aware
    # stalls count for local health as missed probes (once a period): we are the slow one
    for k in range(1, 5):
        fd.stalled(1_000, t + 500 + k * 1_000)
    assert fd.health_multiplier >= 4


def test_a_stall_does_not_end_a_suspicion_before_the_suspect_is_heard() -> None:
    ks = keys(12)
    fd = FailureDetector(ks[0], PARAMS, random.Random(4))
    ping, t0 = _probing(fd, ks[1:], 0)
    acts = []
    for t in range(t0, t0 + 1_100, 10):  # no answer: suspect after one period
        acts += fd.tick(t, ks[1:])
    target = ping.target
    assert target in fd.suspects
    t = t0 + 1_100 + 10_000  # a 10 s stall: the 2 s suspicion ran out meanwhile
    fd.stalled(10_000, t)
    assert not any(isinstance(a, Dead) for a in fd.tick(t, ks[1:]))
    fd.heard_from(target, t + 20)  # its message, read after the late tick
    assert target not in fd.suspects
    # an on-time tick judges as before: a stall under STALL_MS changes nothing
    fd.stalled(50, t + 30)
    assert fd.health_multiplier >= 2


def test_a_daemon_whose_every_tick_runs_late_still_finds_a_dead_member() -> None:
    """Review of issue 14: ``stalled`` on every tick pushed every deadline past
    itself, so with all ticks >= 100 ms late nothing ever timed out (a dead
    member was never declared in 300 s). At most once a probe period now."""
    ks = keys(6)
    dead = ks[3]
    fd = FailureDetector(ks[0], PARAMS, random.Random(9))
    found = None
    for now in range(0, 120_000, 150):  # every tick 150 ms late
        fd.stalled(150, now)
        for a in fd.tick(now, ks[1:]):
            if isinstance(a, Ping | PingReq) and a.target != dead:
                fd.on_ack(a.target, a.probe_id, now + 1)
            elif isinstance(a, Dead):
                assert a.target == dead
                found = now
        if found is not None:
            break
    assert found is not None and found < 60_000


def test_member_list_edited_in_place_is_followed_by_its_version() -> None:
    """The views edit the reachable list in place (no O(N) copy per change of
    membership) and say so by ``reach_version``: a member dropped from the list
    is no longer probed, one back in it is probed again, and a member declared
    dead here is not probed until the list changes."""
    ks = keys(6)
    fd = FailureDetector(ks[0], PARAMS, random.Random(3))
    peers = list(ks[1:])
    version = 1

    def probed(until: int, start: int, alive: set[bytes]) -> tuple[set[bytes], set[bytes]]:
        seen: set[bytes] = set()
        dead: set[bytes] = set()
        for now in range(start, until, 10):
            for a in fd.tick(now, peers, peers_version=version):
                if isinstance(a, Ping):
                    seen.add(a.target)
                    if a.target in alive:
                        fd.on_ack(a.target, a.probe_id, now)
                elif isinstance(a, PingReq) and a.target in alive:
                    fd.on_ack(a.target, a.probe_id, now)
                elif isinstance(a, Dead):
                    dead.add(a.target)
        return seen, dead

    seen, _ = probed(12_000, 0, set(ks))
    assert seen == set(ks[1:])
    peers.remove(ks[3])  # in place, as the views do
    version = 2
    seen, _ = probed(30_000, 12_000, set(ks))
    assert ks[3] not in seen and seen == set(ks[1:]) - {ks[3]}
    # ks[4] stops answering: declared dead here, then not probed while the list holds it
    seen, dead = probed(60_000, 30_000, set(ks) - {ks[4]})
    assert dead == {ks[4]}
    seen, _ = probed(80_000, 60_000, set(ks))
    assert ks[4] not in seen
    peers.insert(2, ks[3])  # back (sorted), and the list changed: both probed again
    version = 3
    seen, _ = probed(100_000, 80_000, set(ks))
    assert seen == set(ks[1:])
