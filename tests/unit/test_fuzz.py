"""Bounded fuzzing in CI (issue 12 item 8): every target of ``bench/fuzz.py``.

Each target gets its seeds and 3,000 mutated cases (a fixed random seed, so a
failure reproduces); then hypothesis builds structurally valid msgpack bodies
for every wire message type. The full coverage-guided campaign (atheris,
100,000+ cases per target) is ``bench/fuzz.py``.
"""

from __future__ import annotations

import contextlib
import random
import time
import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypo import examples
from smegmesh.core.wire import WireError, decode
from smegmesh.testbed.fuzztargets import check, mutate, targets

CASES = 3000
NAMES = list(targets())


@pytest.mark.parametrize("name", NAMES)
def test_fuzz_target_bounded(name: str) -> None:
    target = targets()[name]
    seeds = target.seeds()
    assert seeds, f"{name}: no seeds"
    rng = random.Random(zlib.crc32(name.encode()))
    failures: list[tuple[bytes, BaseException]] = []
    t0 = time.monotonic()
    for data in seeds:
        exc = check(target, data)
        if exc is not None:
            failures.append((data, exc))
    for _ in range(CASES):
        data = mutate(rng, rng.choice(seeds), seeds, target.max_len)
        exc = check(target, data)
        if exc is not None:
            failures.append((data, exc))
    assert not failures, (
        f"{name}: {len(failures)} crashes, first: {failures[0][1]!r} on {failures[0][0]!r}"
    )
    assert time.monotonic() - t0 < 60


def _codes() -> list[int]:
    from smegmesh.core import wire

    return [c.code for c in wire.PROTOCOL.codecs()]


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(code=st.sampled_from(_codes()), body=msgpack_values)
def test_structured_bodies_only_raise_wire_error(code: int, body: Any) -> None:
    data = msgpack.packb([1, code, body], use_bin_type=True)
    with contextlib.suppress(WireError):
        decode(data)


# Found by the campaign (bench/fuzz.py, config target): a mapping or a sequence
# as a mapping key made the duplicate-key check raise TypeError (a traceback
# from ``smegd --check``) instead of a ConfigError naming the place.
@pytest.mark.parametrize(
    "text", ["{{}}\n", "? {a: 1}\n: x\n", "? [1, 2]\n: x\n", "baseConfiguration: {[1]: 2}\n"]
)
def test_config_unhashable_key_is_a_config_error(text: str, tmp_path: Any) -> None:
    from smegmesh.daemon.config import ConfigError, load_config

    path = tmp_path / "smegd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"smegd.yaml:\d+:\d+: YAML syntax error: .*key"):
        load_config(path)


def test_the_founded_targets_seeds_reach_references_and_deltas() -> None:
    """Twenty-third session's review: the fuzz corpus's mesh is not founded, so
    no seed carried an item by reference, and its deltas were of versions the
    handler held (dropped before any rebuild): the member target never
    expanded a reference (core.elide at 51 % line coverage) nor rebuilt a
    delta. The founded target's seeds: a record by reference, a delta and a
    prune by reference are resolved and taken (each changes its member's
    entry); a delta and a record by reference whose signatures fail are
    rebuilt, reach the signature check and are refused, again on a second run
    (they never change the state, so the rebuild stays reachable)."""
    from smegmesh.core.codec import Elided
    from smegmesh.core.messages import Ack
    from smegmesh.testbed.fuzzcorpus import _founded_corpus

    seeds, node, src, now = _founded_corpus.__wrapped__()  # a node of its own
    st = node.mesh
    for run in (0, 1):
        for i, data in enumerate(seeds[:5]):
            msg = decode(data)
            items = msg.items  # type: ignore[attr-defined]
            assert len(items) == 1 and type(items[0]) is Elided
            before = st.digest()
            node.last_rejects = []
            reply, _outs = node.handle_request(src, msg, now + 10 * run + i + 1)
            assert isinstance(reply, Ack)
            if i in (2, 4):  # forged: rebuilt whole, then the signature fails
                assert node.last_rejects == ["signature: invalid signature"], (run, i)
                assert st.digest() == before
            elif run == 0:  # taken: the member's entry changed
                assert not node.last_rejects and st.digest() != before, i


def test_the_founded_join_targets_seeds_admit_once_and_refuse() -> None:
    """A stranger's path on a founded mesh (every mesh ``smegctl create`` makes):
    the unfounded seeds' join never checked a grant nor wrote a certificate.
    The seeds: a join with the token's secret is admitted (a certificate, the
    token's ledger entry), one with another secret is refused, and so is a
    stranger's sync. The same join again gets the same certificate and adds
    nothing: replayed by the fuzzer (or anyone holding the secret), each used
    to store and gossip a new one (review, this session)."""
    from smegmesh.core.messages import JoinReply, Refusal
    from smegmesh.testbed.fuzzcorpus import _founded_join_corpus

    seeds, node, src, now = _founded_join_corpus.__wrapped__()
    replies = [type(node.handle_request(src, decode(d), now + i)[0]) for i, d in enumerate(seeds)]
    assert replies == [JoinReply, Refusal, Refusal]
    held = len(node.mesh.auth_items())
    reply, _ = node.handle_request(src, decode(seeds[0]), now + 10)
    assert isinstance(reply, JoinReply) and reply.chain[-1].subject == src
    assert len(node.mesh.auth_items()) == held


def test_the_founded_targets_sixth_seed_stops_at_its_first_forgery() -> None:
    """The sixth seed carries the five items of the others in one push (review:
    never run by a test). On a node of its own the two before the first forged
    item (the record by reference, the delta) are taken; the forged delta is
    refused, and the items after it are refused unchecked, as in any message
    with a forged signature (a forger's message costs no more checks)."""
    from smegmesh.testbed.fuzzcorpus import _founded_corpus

    seeds, node, src, now = _founded_corpus.__wrapped__()
    before = {k: node.mesh.versions_of(k) for k in node.mesh.keys_under(0, 0)}
    rejected = node.rejected
    node.handle_request(src, decode(seeds[5]), now + 1)
    after = {k: node.mesh.versions_of(k) for k in node.mesh.keys_under(0, 0)}
    assert len([k for k in after if after[k] != before.get(k)]) == 2
    assert node.rejected - rejected == 3
    assert node.last_rejects[0] == "signature: invalid signature"
    assert all("not checked" in r for r in node.last_rejects[1:])
