"""Wire codec: round trips, and every malformed input raises WireError only."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypo import examples
from smegmesh.core.codec import Codec
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.record import NodeRecord, Prune, RouteAdv
from smegmesh.core.sync import Push, SyncEnd, SyncStart, SyncStep
from smegmesh.core.wire import WIRE_VERSION, Registry, WireError, decode, encode

MESH = "amber-falcon-river-k7q2"
IDS = [NodeIdentity.from_seed(random.Random(7 + i).randbytes(32)) for i in range(2)]
REC = NodeRecord.create(
    IDS[0],
    MESH,
    version=3,
    now_ms=10,
    wg_endpoint="1.2.3.4:5",
    services={"a": "b"},
    routes=[RouteAdv("::/0", ("x",))],
)
PRUNE = Prune.create(IDS[1], MESH, target=IDS[0].wg_public_key, target_version=3, now_ms=11)
STEP = SyncStep(
    MESH,
    5,
    nodes=((1, 3, bytes(64)),),
    leaves=((2, 17, ((IDS[0].wg_public_key, 4, 0, b"abcd"),)),),
    items=(REC, PRUNE),
    wants=(IDS[1].wg_public_key,),
)
MESSAGES: list[object] = [
    REC,
    PRUNE,
    SyncStart(MESH, 1, b"s" * 8, b"d" * 16, 3),
    STEP,
    SyncEnd(MESH, 9),
    Push(MESH, (REC, PRUNE)),
]
ENCODED = [encode(m) for m in MESSAGES]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_roundtrip(msg: object) -> None:
    data = encode(msg)
    assert decode(data) == msg
    assert msgpack.unpackb(data)[0] == WIRE_VERSION


def test_unregistered_encode() -> None:
    with pytest.raises(TypeError):
        encode(object())


def test_registry_conflicts() -> None:
    reg = Registry()

    @dataclass
    class A:
        x: int

    @dataclass
    class B:
        x: int

    reg.register(Codec(200, A, lambda m: [m.x], lambda b: A(b[0])))
    with pytest.raises(ValueError):
        reg.register(Codec(200, B, lambda m: [m.x], lambda b: B(b[0])))
    with pytest.raises(ValueError):
        reg.register(Codec(201, A, lambda m: [m.x], lambda b: A(b[0])))
    assert reg.decode(reg.encode(A(5))) == A(5)
    # a decoder that raises anything, or returns the wrong type, gives WireError
    reg.register(Codec(202, B, lambda m: [m.x], lambda b: A(b[0])))
    with pytest.raises(WireError):
        reg.decode(reg.encode(B(1)))
    with pytest.raises(WireError):
        reg.decode(msgpack.packb([WIRE_VERSION, 200, []]))


BAD = [
    b"",
    b"\xc1",
    b"\x93",
    msgpack.packb([WIRE_VERSION, 1]),
    msgpack.packb([2, 1, REC.to_obj()]),
    msgpack.packb([True, 1, REC.to_obj()]),
    msgpack.packb([WIRE_VERSION, 999, []]),
    msgpack.packb([WIRE_VERSION, "1", REC.to_obj()]),
    msgpack.packb([WIRE_VERSION, 1, REC.to_obj()[:-1]]),
    msgpack.packb([WIRE_VERSION, 1, [*REC.to_obj(), 1]]),
    msgpack.packb([WIRE_VERSION, 10, [MESH, 1, b"s" * 7, b"d" * 32, 3]]),
    msgpack.packb([WIRE_VERSION, 10, [MESH, -1, b"s" * 8, b"d" * 32, 3]]),
    msgpack.packb([WIRE_VERSION, 11, [MESH, 1, [[7, 0, bytes(64)]], [], [], []]]),
    msgpack.packb([WIRE_VERSION, 11, [MESH, 1, [[1, 16, bytes(64)]], [], [], []]]),
    msgpack.packb([WIRE_VERSION, 11, [MESH, 1, [], [], [[3, []]], []]]),
    msgpack.packb([WIRE_VERSION, 11, [MESH, 1, [], [], [], [b"short"]]]),
    msgpack.packb([WIRE_VERSION, 12, {"a": 1}]),
    msgpack.packb([WIRE_VERSION, 13, [MESH, None]]),
    msgpack.packb({1: 2}),
    msgpack.packb([WIRE_VERSION, 1, msgpack.ExtType(5, b"x")]),
    ENCODED[0] + b"\x00",  # trailing data
    b"\x91" * 100_000 + b"\x00",  # deep nesting
    b"\xdd\xff\xff\xff\xff",  # array header claiming 4G elements
    b"\xc6\xff\xff\xff\xff",  # bin header claiming 4 GB
]


@pytest.mark.parametrize("data", BAD, ids=range(len(BAD)))
def test_malformed(data: bytes) -> None:
    with pytest.raises(WireError):
        decode(data)


def test_size_limit_and_type() -> None:
    with pytest.raises(WireError):
        decode(ENCODED[0], max_size=10)
    with pytest.raises(WireError):
        decode("text")  # type: ignore[arg-type]


def _never_escapes(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode(data, max_size=1 << 16)


@settings(max_examples=examples(400), deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _never_escapes(data)


@settings(max_examples=examples(400), deadline=None)
@given(st.sampled_from(ENCODED), st.integers(min_value=0), st.integers(1, 255))
def test_mutated_messages(data: bytes, pos: int, xor: int) -> None:
    b = bytearray(data)
    b[pos % len(b)] ^= xor
    _never_escapes(bytes(b))
    _never_escapes(bytes(b[: pos % len(b)]))


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=70),
    lambda children: (
        st.lists(children, max_size=20) | st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=60,
)


@settings(max_examples=examples(400), deadline=None)
@given(st.sampled_from([0, 1, 2, 10, 11, 12, 13, 999]), msgpack_values)
def test_random_structures(code: int, body: object) -> None:
    _never_escapes(msgpack.packb([WIRE_VERSION, code, body]))


@settings(max_examples=examples(300), deadline=None)
@given(st.sampled_from(MESSAGES), st.data())
def test_structurally_mutated_bodies(msg: object, data: st.DataObject) -> None:
    """Replace one nested value of a valid body with a random value."""
    env = msgpack.unpackb(encode(msg))
    body = env[2]
    path: list[int] = []
    node = body
    while isinstance(node, list) and node and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(node) - 1))
        path.append(i)
        node = node[i]
    new = data.draw(msgpack_values)
    if not path:
        env[2] = new
    else:
        parent = body
        for i in path[:-1]:
            parent = parent[i]
        parent[path[-1]] = new
    _never_escapes(msgpack.packb(env))
