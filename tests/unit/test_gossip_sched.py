"""Gossip scheduling: targets, triggered push, infection rounds, background pull."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smegmesh.core.gossip import TRIGGERS_PER_KEY, GossipParams, GossipScheduler


def keys(n: int) -> list[bytes]:
    return [bytes([i // 256, i % 256]) + b"\0" * 30 for i in range(n)]


def sched(me: bytes, **kw: object) -> GossipScheduler:
    return GossipScheduler(me, GossipParams(**kw), random.Random(1))  # type: ignore[arg-type]


def test_targets_stay_in_own_cluster_without_inter_cluster_chance() -> None:
    ks = keys(200)
    s = sched(ks[5], cluster_size=64, inter_cluster_chance=0.0, branch=3)
    own = set(sorted(ks)[:64])
    for _ in range(200):
        t = s.targets(ks)
        assert len(t) == 3 and len(set(t)) == 3
        assert set(t) <= own and ks[5] not in t


def test_inter_cluster_chance_one_always_reaches_another_cluster() -> None:
    ks = keys(200)
    s = sched(ks[5], cluster_size=64, inter_cluster_chance=1.0, branch=3)
    own = set(sorted(ks)[:64])
    for _ in range(100):
        t = s.targets(ks)
        assert len(t) == 3
        assert sum(1 for k in t if k not in own) == 1


def test_small_mesh_returns_everyone_it_can() -> None:
    ks = keys(3)
    s = sched(ks[0], branch=5)
    assert set(s.targets(ks)) == {ks[1], ks[2]}


def test_client_only_talks_to_its_peers() -> None:
    ks = keys(50)
    s = sched(ks[0])
    assert s.targets(ks, is_client=True, client_peers=[ks[7], ks[9], ks[11]]) == (ks[7], ks[9])
    # whatever the branch (1 is allowed): its peer and the spare
    one = sched(ks[0], branch=1)
    assert one.targets(ks, is_client=True, client_peers=[ks[7], ks[9]]) == (ks[7], ks[9])
    # a round's own fan-out (round_fanout) limits a client's targets too
    assert one.targets(ks, is_client=True, client_peers=[ks[7], ks[9]], count=1) == (ks[7],)


def test_periodic_rounds_offer_to_round_fanout_targets() -> None:
    ks = keys(50)
    for fanout, want in ((None, 3), (1, 1)):
        s = sched(ks[0], branch=3, round_fanout=fanout, sync_interval_ms=1000)
        s.note_fresh([ks[1]])
        s.tick(0, ks)
        rnd = s.tick(1000, ks)
        assert rnd.keys == {ks[1]} and len(rnd.push_to) == want


def test_a_node_that_always_has_fresh_items_still_pulls() -> None:
    """Under sustained churn every round has fresh items; each round postponed
    the background pull, so it never came (review, twelfth session). The pull
    is now at most one pull interval late."""
    ks = keys(20)
    s = sched(ks[0], sync_interval_ms=1000, pull_interval_ms=3000)
    pulls = []
    for t in range(0, 60_000, 100):
        s.note_fresh([ks[1 + (t // 100) % 10]])  # a new change every 100 ms
        if s.tick(t, ks).pull_from is not None:
            pulls.append(t)
    assert len(pulls) >= 60_000 // (2 * 3000) - 1, pulls
    assert all(b - a <= 2 * 3000 + 1000 for a, b in itertools.pairwise(pulls))


def test_fresh_items_pushed_for_infection_count_rounds_then_pull_resumes() -> None:
    ks = keys(20)
    s = sched(ks[0], sync_interval_ms=1000, pull_interval_ms=5000, infection_count=3, branch=2)
    r = s.triggered([ks[3]], ks)
    assert r.keys == {ks[3]} and len(r.push_to) == 2
    pushes = 0
    pulls = 0
    for t in range(0, 30_000, 100):
        rnd = s.tick(t, ks)
        if rnd.push_to:
            assert rnd.keys == {ks[3]}
            pushes += 1
        if rnd.pull_from is not None:
            pulls += 1
    assert pushes == 3
    assert 4 <= pulls <= 7  # every 5 s once nothing is fresh
    assert not s.fresh_keys


def _push_rounds(s: GossipScheduler, peers: list[bytes], item: bytes, acks: int) -> int:
    """Sync rounds that push ``item``; ``acks`` "already held" answers after the first."""
    rounds = 0
    for t in range(0, 20_000, 1_000):
        r = s.tick(t, peers)
        if item in r.keys:
            rounds += 1
            if rounds == 1:
                for _ in range(acks):
                    s.lose_interest({item})
    return rounds


def test_items_the_targets_already_hold_lose_push_rounds() -> None:
    """Issue 14: push feedback (rumour mongering, Demers et al.): every
    LOSE_INTEREST_AFTER answers "held it already" cost the item one round."""
    from smegmesh.core.gossip import LOSE_INTEREST_AFTER

    ks = keys(50)
    item = ks[7]
    for acks, expect in ((0, 3), (LOSE_INTEREST_AFTER, 2), (3 * LOSE_INTEREST_AFTER, 1)):
        s = sched(ks[0], sync_interval_ms=1_000, pull_interval_ms=60_000, infection_count=3)
        s.tick(0, ks)
        s.note_fresh({item})
        assert _push_rounds(s, ks, item, acks) == expect, acks
    # news again (a newer version): full rounds again, the count of misses forgotten
    s = sched(ks[0], sync_interval_ms=1_000, pull_interval_ms=60_000, infection_count=3)
    s.note_fresh({item})
    s.lose_interest({item})
    s.note_fresh({item})
    s.lose_interest({item})
    assert s._fresh[item] == 3


def test_received_items_within_batch_ms_of_a_push_are_held_and_released_together() -> None:
    """Nagle's rule for triggered pushes: a lone change goes at once, a storm in batches."""
    ks = keys(6)
    s = sched(ks[0], batch_ms=100)
    assert not s.hold({ks[1]}, 3, 1_000)  # nothing pushed lately: at once
    assert s.hold({ks[2]}, 5, 1_050)  # 50 ms later: held
    assert s.hold({ks[3]}, 2, 1_080)
    assert s.hold({ks[2]}, 4, 1_090)  # fewest hops kept per key
    due = s.next_deadline()
    assert due is not None and due <= 1_100
    assert s.release(1_099) is None
    assert s.release(1_100) == (frozenset({ks[2], ks[3]}), 2)
    assert s.release(1_300) is None  # nothing held
    assert s.hold({ks[4]}, 1, 1_150)  # the batch counts as the last push
    assert not s.hold({ks[5]}, 1, 1_400)
    off = sched(ks[0], batch_ms=0)
    assert not off.hold({ks[1]}, 1, 1_000) and not off.hold({ks[2]}, 1, 1_001)


def test_a_received_key_is_triggered_three_times_a_window_then_goes_with_the_rounds() -> None:
    """``throttle``: at most TRIGGERS_PER_KEY pushes at once per key and window of
    infection_count sync intervals; later changes are noted fresh (the rounds
    carry their latest version); a new window starts afresh; keys apart."""
    ks = keys(3)
    s = sched(ks[0], sync_interval_ms=1_000, infection_count=3)
    for t in range(TRIGGERS_PER_KEY):
        assert s.throttle([ks[1]], 1_000 + t) == [ks[1]]
    assert ks[1] not in s.fresh_keys
    assert s.throttle([ks[1], ks[2]], 1_500) == [ks[2]]  # another key is not held back
    assert ks[1] in s.fresh_keys  # the rounds push it
    assert s.throttle([ks[1]], 3_999) == []
    assert s.throttle([ks[1]], 4_000) == [ks[1]]  # 3 s after its window began
    # the table is swept of expired windows as it grows (bounded by a window's keys)
    many = keys(500)
    for i, k in enumerate(many):
        s.throttle([k], 10_000 + 20 * i)
    assert len(s._triggers) < 2 * (3_000 // 20) + 64


def _split_by_copy(me: bytes, peers: list[bytes], size: int) -> tuple[list[bytes], list[bytes]]:
    """The clusters as the scheduler built them before (a sorted copy, two slices)."""
    ordered = sorted(set(peers) | {me})
    i = ordered.index(me)
    lo = i - i % size
    return ordered[lo:i] + ordered[i + 1 : lo + size], ordered[:lo] + ordered[lo + size :]


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 300),
    me_at=st.integers(0, 400),
    listed=st.booleans(),
    size=st.integers(1, 70),
)
def test_clusters_without_a_copy_equal_the_copied_ones(
    n: int, me_at: int, listed: bool, size: int
) -> None:
    """The clusters are cut from the sorted member list without copying it
    (O(cluster + log N) a call, not O(N) per change of membership): the same
    members as the sorted copy and its slices, with self listed or not."""
    ks = keys(n + 1)
    me = ks[min(me_at, n)]
    peers = ks if listed else [k for k in ks if k != me]
    s = sched(me, cluster_size=size)
    own, rest = s._split(peers)
    want_own, want_rest = _split_by_copy(me, peers, size)
    assert own == want_own
    assert len(rest) == len(want_rest) and list(rest) == want_rest
    assert [rest[i] for i in range(-len(rest), 0)] == want_rest
    assert list(rest[1:3]) == want_rest[1:3]
    with pytest.raises(IndexError):
        rest[len(rest)]
