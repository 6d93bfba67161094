"""The incremental mutual-best choice (core/direct_choice.py) against a from-scratch oracle."""

from __future__ import annotations

import random

from smegmesh.core.direct import pair_score
from smegmesh.core.direct_choice import DirectChoice, scores


def _oracle(me: bytes, keys: set[bytes], limit: int) -> set[bytes]:
    """The rule of docs/NAT.md, written out the slow way."""
    if limit <= 0 or me not in keys:
        return set()

    def best(o: bytes) -> set[bytes]:
        ranked = sorted((k for k in keys if k != o), key=lambda k: pair_score(o, k), reverse=True)
        return set(ranked[:limit])

    return {o for o in best(me) if me in best(o)}


def _keys(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


def test_scores_are_the_pair_scores() -> None:
    keys = _keys(50, 1)
    assert scores(keys[0], keys[1:]) == [pair_score(keys[0], k) for k in keys[1:]]
    assert scores(keys[7], keys)[:3] == [pair_score(keys[7], k) for k in keys[:3]]


def test_the_choice_follows_any_sequence_of_candidate_changes() -> None:
    """Members join, leave, drop their endpoints and publish them again, in
    bursts; every answer is the one computed from scratch."""
    rng = random.Random(5)
    for limit in (1, 2, 3, 8):
        pool = _keys(70, limit)
        me = pool[0]
        choice = DirectChoice(me, limit, slack=rng.choice([-1, 0, 1, 3]))
        cands = set(rng.sample(pool, 30)) | {me}
        for step in range(300):
            n = rng.choice([1, 1, 1, 2, 5, 20])
            for k in rng.sample(pool, n):
                if k != me or step % 97 == 96:  # now and then we leave too
                    cands.symmetric_difference_update({k})
            if step % 97 == 0:
                cands.add(me)
            assert choice.update(cands) == _oracle(me, cands, limit), (limit, step)


def test_an_unchanged_candidate_set_costs_nothing_and_a_toggle_little() -> None:
    """A re-signed record leaves the candidates as they were: no hash. A member
    that drops its endpoints and publishes them again costs one hash per list
    kept, plus a list or two when it is in ours (it was (limit + 1) x N)."""
    keys = _keys(3000, 9)
    me, limit = keys[0], 8
    choice = DirectChoice(me, limit)
    first = choice.update(keys)
    full = choice.hashes
    assert full <= (limit + 1) * len(keys) and first == _oracle(me, set(keys), limit)
    assert choice.update(list(keys)) == first and choice.hashes == full
    worst = 0
    for k in keys[1:200]:  # outside our lists and inside
        before = choice.hashes
        rest = [x for x in keys if x != k]
        choice.update(rest)
        assert choice.update(keys) == first
        worst = max(worst, choice.hashes - before)
    assert worst <= 2 * len(keys) + 2 * choice.cap, worst
    # the two lists a member of our best costs at most: ours is kept, its own computed again
    total = choice.hashes - full
    assert total <= 200 * 2 * choice.cap + 4 * len(keys) * limit, total


def test_off_when_limit_is_zero_or_we_are_no_candidate() -> None:
    keys = _keys(20, 3)
    assert DirectChoice(keys[0], 0).update(keys) == frozenset()
    c = DirectChoice(keys[0], 4)
    assert c.update(keys[1:]) == frozenset()
    assert c.update(keys) == _oracle(keys[0], set(keys), 4)
