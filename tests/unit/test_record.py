"""Signed records and prunes: creation, validation, forgery/tamper rejection."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypo import examples
from smegmesh.core.addressing import overlay_address
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.record import (
    MAX_ROUTES,
    PRUNE_TAG,
    RECORD_TAG,
    Admission,
    InviteGrant,
    NodeRecord,
    Prune,
    RecordError,
    Role,
    RouteAdv,
    check_endpoint,
    prune_from_obj,
    record_from_obj,
    validate_prune,
    validate_record,
)

MESH = "amber-falcon-river-k7q2"
IDS = [NodeIdentity.from_seed(bytes([i + 1]) * 32) for i in range(4)]
NOW = 1_700_000_000_000


def full_record(ident: NodeIdentity = IDS[0], **kw: object) -> NodeRecord:
    args: dict[str, object] = dict(
        version=5,
        now_ms=NOW,
        role=Role.PEER,
        wg_endpoint="203.0.113.5:51820",
        control_endpoint="[2001:db8::1]:7443",
        tls_fp=b"\x11" * 32,
        alias="alpha-1",
        description="rack 4 — üñí",
        services={"http": "80", "ssh": "22"},
        routes=[RouteAdv("fd00:1::/64", ("other-mesh",)), RouteAdv("::/0", ())],
        assigned_peer=IDS[1].wg_public_key,
        invites=[InviteGrant(b"\x22" * 16, NOW + 1000, 3)],
        admitted=[Admission(b"\x22" * 16, IDS[2].wg_public_key)],
        left=False,
    )
    args.update(kw)
    return NodeRecord.create(ident, MESH, **args)  # type: ignore[arg-type]


REC = full_record()
PRUNE = Prune.create(IDS[1], MESH, target=IDS[0].wg_public_key, target_version=5, now_ms=NOW)


def test_create_valid() -> None:
    validate_record(REC, MESH)
    assert REC.address == str(overlay_address(MESH, IDS[0].wg_public_key))
    assert REC.services == (("http", "80"), ("ssh", "22"))
    assert REC.key == IDS[0].wg_public_key
    assert len(REC.signature) == 64
    assert REC.signed_payload().startswith(RECORD_TAG)
    minimal = NodeRecord.create(IDS[1], MESH, version=0, now_ms=0)
    validate_record(minimal, MESH)
    assert minimal.role is Role.PEER and minimal.alias == "" and minimal.routes == ()


def test_prune_valid() -> None:
    validate_prune(PRUNE, MESH)
    assert PRUNE.key == IDS[0].wg_public_key
    assert PRUNE.signed_payload().startswith(PRUNE_TAG)


def test_wrong_mesh() -> None:
    with pytest.raises(RecordError) as e:
        validate_record(REC, "other-mesh")
    assert e.value.field == "mesh_id"
    with pytest.raises(RecordError):
        validate_prune(PRUNE, "other-mesh")


def test_evolve() -> None:
    r2 = REC.evolve(IDS[0], NOW + 10, alias="beta", services={"x": "1"})
    validate_record(r2, MESH)
    assert r2.version == NOW + 10 and r2.timestamp_ms == NOW + 10
    assert r2.alias == "beta" and r2.services == (("x", "1"),)
    assert r2.routes == REC.routes
    r3 = r2.evolve(IDS[0], NOW)  # clock went backwards: counter still increases
    assert r3.version == r2.version + 1
    with pytest.raises(RecordError):
        REC.evolve(IDS[1], NOW)
    with pytest.raises(RecordError):
        REC.evolve(IDS[0], NOW, version=3)


def test_wire_roundtrip() -> None:
    assert record_from_obj(msgpack.unpackb(msgpack.packb(REC.to_obj()))) == REC
    assert prune_from_obj(msgpack.unpackb(msgpack.packb(PRUNE.to_obj()))) == PRUNE


# Every field replaced by a wrong value must be rejected.
BAD_FIELDS: list[tuple[str, object]] = [
    ("mesh_id", "other"),
    ("mesh_id", "Bad Mesh"),
    ("wg_key", IDS[1].wg_public_key),
    ("wg_key", b"\x00" * 31),
    ("sign_key", IDS[1].sign_public_key),
    ("version", 6),
    ("version", -1),
    ("version", 2**63),
    ("version", True),
    ("timestamp_ms", NOW + 1),
    ("timestamp_ms", 1.5),
    ("role", "peer"),
    ("role", Role.CLIENT),
    ("wg_endpoint", "203.0.113.5:51821"),
    ("wg_endpoint", "203.0.113.5"),
    ("wg_endpoint", "2001:db8::1:51820"),
    ("wg_endpoint", "host:0"),
    ("wg_endpoint", "host:65536"),
    ("wg_endpoint", "[nope]:1"),
    ("wg_endpoint", "-bad-.example:1"),
    ("control_endpoint", None),
    ("tls_fp", b"\x11" * 31),
    ("tls_fp", b"\x12" * 32),
    ("address", "fd00::1"),
    ("alias", "Alpha"),
    ("alias", "-a"),
    ("alias", "a" * 64),
    ("alias", "alpha-2"),
    ("description", "x" * 257),
    ("description", "é" * 129),
    ("services", (("ssh", "22"), ("http", "80"))),
    ("services", (("http", "80"), ("http", "81"))),
    ("services", (("bad key", "1"),)),
    ("services", (("k", "v" * 257),)),
    ("services", tuple((f"k{i:02}", "v") for i in range(17))),
    ("routes", (RouteAdv("fd00:1::1/64", ()),)),
    ("routes", (RouteAdv("10.0.0.0/8", ()),)),
    ("routes", (RouteAdv("fd00:1:0::/64", ()),)),  # non-canonical
    ("routes", (RouteAdv("::/0", tuple(f"m{i}" for i in range(17))),)),
    ("routes", (RouteAdv("::/0", ("Bad",)),)),
    ("routes", tuple(RouteAdv(f"fd00:{i:x}::/64", ()) for i in range(MAX_ROUTES + 1))),
    ("assigned_peer", b"\x00" * 5),
    ("assigned_peer", None),
    ("invites", (InviteGrant(b"\x00" * 15, 1, 1),)),
    ("invites", (InviteGrant(b"\x00" * 16, 1, 2**32),)),
    ("invites", tuple(InviteGrant(bytes([i]) * 16, 1, 1) for i in range(17))),
    ("admitted", (Admission(b"\x00" * 16, b"\x00" * 31),)),
    ("admitted", ()),
    ("left", True),
    ("left", 1),
    ("signature", b"\x00" * 64),
    ("signature", b""),
]


@pytest.mark.parametrize(("name", "value"), BAD_FIELDS)
def test_bad_field_rejected(name: str, value: object) -> None:
    bad = dataclasses.replace(REC, **{name: value})
    with pytest.raises(RecordError):
        validate_record(bad, MESH)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("mesh_id", "other"),
        ("target", IDS[2].wg_public_key),
        ("target", b"\x00"),
        ("target_version", 6),
        ("target_version", -1),
        ("by_wg_key", IDS[2].wg_public_key),
        ("by_sign_key", IDS[2].sign_public_key),
        ("timestamp_ms", NOW + 1),
        ("signature", PRUNE.signature[:63]),
        ("signature", bytes(64)),
    ],
)
def test_bad_prune_rejected(name: str, value: object) -> None:
    bad = dataclasses.replace(PRUNE, **{name: value})
    with pytest.raises(RecordError):
        validate_prune(bad, MESH)


def test_forgery_by_other_identity() -> None:
    # IDS[1] signs a record claiming IDS[0]'s wg key: key binding fails.
    forged = dataclasses.replace(REC, sign_key=IDS[1].sign_public_key, signature=b"")
    forged = dataclasses.replace(forged, signature=IDS[1].sign(forged.signed_payload()))
    with pytest.raises(RecordError) as e:
        validate_record(forged, MESH)
    assert e.value.field == "wg_key"


def test_create_rejects_invalid() -> None:
    with pytest.raises(RecordError):
        full_record(alias="NOPE")
    with pytest.raises(RecordError):
        NodeRecord.create(IDS[0], "Bad Mesh", version=1, now_ms=1)
    with pytest.raises(RecordError):
        Prune.create(IDS[0], MESH, target=b"short", target_version=1, now_ms=1)


REC_BYTES = msgpack.packb(REC.to_obj(), use_bin_type=True)
PRUNE_BYTES = msgpack.packb(PRUNE.to_obj(), use_bin_type=True)


def _tampered_must_fail(data: bytes, pos: int, xor: int, is_record: bool) -> None:
    b = bytearray(data)
    b[pos % len(b)] ^= xor
    try:
        obj = msgpack.unpackb(bytes(b), raw=False, strict_map_key=True)
        item = record_from_obj(obj) if is_record else prune_from_obj(obj)
    except (RecordError, ValueError, TypeError, msgpack.ExtraData):
        return  # rejected while decoding
    original = REC if is_record else PRUNE
    if item == original:
        return  # not actually changed
    with pytest.raises(RecordError):
        if isinstance(item, NodeRecord):
            validate_record(item, MESH)
        else:
            validate_prune(item, MESH)


@settings(max_examples=examples(400))
@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_byte_flip_of_record_rejected(pos: int, xor: int) -> None:
    _tampered_must_fail(REC_BYTES, pos, xor, True)


@settings(max_examples=examples(200))
@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_byte_flip_of_prune_rejected(pos: int, xor: int) -> None:
    _tampered_must_fail(PRUNE_BYTES, pos, xor, False)


def test_every_single_byte_flip_of_record() -> None:
    for pos in range(len(REC_BYTES)):
        _tampered_must_fail(REC_BYTES, pos, 0x01, True)
        _tampered_must_fail(REC_BYTES, pos, 0x80, True)


@pytest.mark.parametrize(
    "ep", ["1.2.3.4:1", "example.com:65535", "[::1]:51820", "a-b.c:80", "localhost:7"]
)
def test_good_endpoints(ep: str) -> None:
    assert check_endpoint(ep) == ep


@pytest.mark.parametrize(
    "ep", ["", ":80", "host:", "host:08", "[::1]80", "[::1]:", "a..b:1", "é:1", "h:123456"]
)
def test_bad_endpoints(ep: str) -> None:
    with pytest.raises(ValueError):
        check_endpoint(ep)


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        [1] * 19,
        REC.to_obj()[:-1],
        [*REC.to_obj()[:5], "admin", *REC.to_obj()[6:]],
        [*REC.to_obj()[:12], [["a"]], *REC.to_obj()[13:]],
        [*REC.to_obj()[:13], [["::/0"]], *REC.to_obj()[14:]],
        [*REC.to_obj()[:13], [["::/0", "notalist"]], *REC.to_obj()[14:]],
        [*REC.to_obj()[:15], [[b"x", 1]], *REC.to_obj()[16:]],
        [*REC.to_obj()[:16], [[b"x"]], *REC.to_obj()[17:]],
    ],
)
def test_record_from_bad_obj(obj: object) -> None:
    with pytest.raises(RecordError):
        record_from_obj(obj)
