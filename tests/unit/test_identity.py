"""Identity: Ed25519 seed -> X25519 WireGuard key, conversions, text keys."""

from __future__ import annotations

import base64
import os
import random

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from hypo import examples
from smegmesh.core.identity import (
    InvalidKey,
    NodeIdentity,
    ed25519_to_x25519_public,
    key_from_text,
    key_to_text,
    verify_many,
    verify_signature,
    x25519_matches_ed25519,
)


@settings(max_examples=examples(300))
@given(st.binary(min_size=32, max_size=32))
def test_wg_key_is_montgomery_form_of_sign_key(seed: bytes) -> None:
    ident = NodeIdentity.from_seed(seed)
    assert ed25519_to_x25519_public(ident.sign_public_key) == ident.wg_public_key
    assert x25519_matches_ed25519(ident.wg_public_key, ident.sign_public_key)
    # the private key really produces that public key
    pub = X25519PrivateKey.from_private_bytes(ident.wg_private_key).public_key()
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert raw == ident.wg_public_key


def test_dh_agrees() -> None:
    for _ in range(20):
        a, b = NodeIdentity.generate(os.urandom), NodeIdentity.generate(os.urandom)
        ka = X25519PrivateKey.from_private_bytes(a.wg_private_key)
        kb = X25519PrivateKey.from_private_bytes(b.wg_private_key)
        s1 = ka.exchange(X25519PublicKey.from_public_bytes(b.wg_public_key))
        s2 = kb.exchange(X25519PublicKey.from_public_bytes(a.wg_public_key))
        assert s1 == s2 and s1 != bytes(32)


def test_from_seed_deterministic_and_sign() -> None:
    seed = os.urandom(32)
    a, b = NodeIdentity.from_seed(seed), NodeIdentity.from_seed(seed)
    assert a == b and a.seed == seed and a.wg_public_key == b.wg_public_key
    sig = a.sign(b"hello")
    assert len(sig) == 64
    assert verify_signature(a.sign_public_key, b"hello", sig)
    assert not verify_signature(a.sign_public_key, b"hellp", sig)
    other = NodeIdentity.generate(os.urandom)
    assert not verify_signature(other.sign_public_key, b"hello", sig)
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify_signature(a.sign_public_key, b"hello", bad)
    assert not verify_signature(a.sign_public_key[:31], b"hello", sig)
    assert not verify_signature(a.sign_public_key, b"hello", sig[:63])
    assert verify_many([(a.sign_public_key, b"hello", sig), (a.sign_public_key, b"x", sig)]) == [
        True,
        False,
    ]
    assert "seed" not in repr(a) or seed.hex() not in repr(a)


def test_seed_length() -> None:
    with pytest.raises(InvalidKey):
        NodeIdentity.from_seed(b"\x00" * 31)


def test_mismatch_detected() -> None:
    a, b = NodeIdentity.generate(os.urandom), NodeIdentity.generate(os.urandom)
    assert not x25519_matches_ed25519(b.wg_public_key, a.sign_public_key)
    assert not x25519_matches_ed25519(a.wg_public_key[:31], a.sign_public_key)
    assert not x25519_matches_ed25519(a.wg_public_key, b"\x00")


P = 2**255 - 19


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x00" * 31,
        b"\x00" * 33,
        (1).to_bytes(32, "little"),  # identity point
        P.to_bytes(32, "little"),  # non-canonical y
        ((1 << 255) - 1).to_bytes(32, "little"),
    ],
)
def test_conversion_rejects_bad(bad: bytes) -> None:
    with pytest.raises(InvalidKey):
        ed25519_to_x25519_public(bad)


def test_conversion_rejects_off_curve() -> None:
    # About half of all y values are not on the curve: find some and check.
    rejected = 0
    for y in range(2, 60):
        try:
            ed25519_to_x25519_public(y.to_bytes(32, "little"))
        except InvalidKey:
            rejected += 1
    assert 10 < rejected < 50


def test_key_text_roundtrip() -> None:
    k = os.urandom(32)
    t = key_to_text(k)
    assert len(t) == 44 and base64.b64decode(t) == k
    assert key_from_text(t) == k


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "A" * 44,  # no padding
        base64.b64encode(b"\x00" * 31).decode() + "AAAA",
        base64.b64encode(b"\x00" * 33).decode(),
        base64.b64encode(b"\x00" * 32).decode()[:-1] + "!",
        base64.b64encode(b"\x00" * 32).decode()[:-2] + "B=",  # non-canonical trailing bits
        "\u00e9" * 44,
        base64.urlsafe_b64encode(b"\xff" * 32).decode(),
        None,
    ],
)
def test_key_from_text_strict(bad: object) -> None:
    with pytest.raises(InvalidKey):
        key_from_text(bad)  # type: ignore[arg-type]


def test_key_to_text_rejects() -> None:
    with pytest.raises(InvalidKey):
        key_to_text(b"\x00" * 31)


def test_generate_takes_its_random_source() -> None:
    """The core reads no entropy: ``generate`` draws its seed from the source it is given."""
    asked: list[int] = []

    def source(n: int) -> bytes:
        asked.append(n)
        return random.Random(7).randbytes(n)

    a, b = NodeIdentity.generate(source), NodeIdentity.generate(source)
    assert asked == [32, 32]
    assert a == b and a.seed == random.Random(7).randbytes(32)
    assert NodeIdentity.generate(os.urandom) != a
    with pytest.raises(InvalidKey, match="32 bytes"):
        NodeIdentity.generate(lambda n: b"\x00" * (n - 1))
