"""Addressing: fixed test vectors (also in docs/ADDRESSING.md) and rules."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypo import examples
from smegmesh.core.addressing import (
    WORDS,
    InvalidMeshId,
    generate_mesh_id,
    interface_id,
    mesh_prefix,
    node_id_prefix,
    overlay_address,
    validate_mesh_id,
)
from smegmesh.core.identity import NodeIdentity, key_to_text

# seed (hex) -> sign pub (b64) -> wg pub (b64) -> mesh id -> prefix -> address -> node id prefix
VECTORS = [
    (
        "00" * 32,
        "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=",
        "W/Vcc7guviK+gPNDBmevVw+uJVamQV5rMNQGUwCqlH0=",
        "amber-falcon-river-k7q2",
        "fdf1:4f8:93d5:6401::/64",
        "fdf1:4f8:93d5:6401:90ad:2339:4015:3c0",
        "90ad2339401503c0",
    ),
    (
        "01" * 32,
        "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=",
        "GxtY3VDqFLYNoXt5DNAnVNlwybq4ZOuzwPMBb+UdP1c=",
        "a",
        "fdca:9781:12ca:1b01::/64",
        "fdca:9781:12ca:1b01:d06d:966c:744:a06b",
        "d06d966c0744a06b",
    ),
    (
        "4a85edde132428f4dbbba2f14107c706410de607561eb0678307d4ebfd715089",
        "Z8Ab1cHvQZnVYL7xnJW7iHQf9dNL8JL8EmIcVOHK2bU=",
        "uU9t28CFz/b9AOPRIrd/YErCMhgBr1/clDdm8XY+nig=",
        "test-mesh-0001",
        "fd34:6def:1bdb:3601::/64",
        # SHA-256 of the key starts 0x83: the u/l bit is cleared -> 0x81
        "fd34:6def:1bdb:3601:8175:aa07:e952:d46c",
        "8375aa07e952d46c",
    ),
]


@pytest.mark.parametrize("vec", VECTORS, ids=lambda v: v[3])
def test_vectors(vec: tuple[str, ...]) -> None:
    seed, sign_b64, wg_b64, mesh_id, prefix, addr, nid = vec
    ident = NodeIdentity.from_seed(bytes.fromhex(seed))
    assert key_to_text(ident.sign_public_key) == sign_b64
    assert key_to_text(ident.wg_public_key) == wg_b64
    assert validate_mesh_id(mesh_id) == mesh_id
    assert str(mesh_prefix(mesh_id)) == prefix
    assert str(overlay_address(mesh_id, ident.wg_public_key)) == addr
    assert node_id_prefix(ident.wg_public_key) == nid


def test_generated_ids_seeded() -> None:
    assert generate_mesh_id(random.Random(0)) == "sapphire-tiger-bear-q7zt"
    assert generate_mesh_id(random.Random(1)) == "drift-brass-lake-h746"


def test_wordlist() -> None:
    assert len(WORDS) == 256
    assert len(set(WORDS)) == 256
    for w in WORDS:
        assert w.isalpha() and w.islower() and 2 <= len(w) <= 8


def test_generate_many_valid_and_distinct() -> None:
    ids = {generate_mesh_id(random.SystemRandom()) for _ in range(500)}
    assert len(ids) == 500
    for m in ids:
        assert validate_mesh_id(m) == m
        *words, suffix = m.split("-")
        assert len(words) == 3 and all(w in WORDS for w in words)
        assert len(suffix) == 4 and all(c in "abcdefghijklmnopqrstuvwxyz234567" for c in suffix)


@pytest.mark.parametrize(
    "bad",
    ["", "-a", "a-", "A", "a_b", "a b", "a" * 64, "é", "a.b", "ab\n", 5, None, b"ab"],
)
def test_invalid_mesh_ids(bad: object) -> None:
    with pytest.raises(InvalidMeshId):
        validate_mesh_id(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", ["a", "0", "a-b", "a--b", "a" * 63, "9abc-def0"])
def test_valid_mesh_ids(good: str) -> None:
    assert validate_mesh_id(good) == good


@settings(max_examples=examples(200))
@given(st.binary(min_size=32, max_size=32), st.sampled_from(["a", "amber-falcon-river-k7q2"]))
def test_address_structure(key: bytes, mesh_id: str) -> None:
    addr = overlay_address(mesh_id, key)
    net = mesh_prefix(mesh_id)
    assert addr in net
    assert net.prefixlen == 64
    packed = addr.packed
    assert packed[0] == 0xFD and packed[7] == 0x01
    assert packed[8] & 0x02 == 0
    assert packed[8:] == interface_id(key)
    assert isinstance(net, ipaddress.IPv6Network)


def test_interface_id_rejects_bad_key() -> None:
    with pytest.raises(ValueError):
        interface_id(b"\x00" * 31)
    with pytest.raises(ValueError):
        node_id_prefix(b"\x00" * 33)


def test_an_invalid_mesh_id_is_named_in_the_error_not_echoed_whole() -> None:
    """``smegctl get-mesh --meshid`` with 5,000 characters printed all of them
    back (walkthrough, eighteenth session): the error names the start and the length."""
    with pytest.raises(InvalidMeshId) as e:
        validate_mesh_id("x" * 5000)
    msg = str(e.value)
    assert len(msg) < 200 and "5000 chars" in msg and msg.startswith("invalid mesh id 'xxx")
    with pytest.raises(InvalidMeshId, match=r"^invalid mesh id '\.\./x': "):
        validate_mesh_id("../x")  # a short one in full
