"""Node identity: one 32-byte seed gives both the signing and the WireGuard key.

The seed is an Ed25519 private key.  Ed25519 expands it as ``h = sha512(seed)``
and uses ``clamp(h[:32])`` as its secret scalar.  We use the same ``h[:32]`` as
the X25519 (WireGuard) private key; X25519 clamps it the same way, so the
WireGuard public key is the Montgomery form of the Ed25519 public key::

    u = (1 + y) / (1 - y)  mod 2^255 - 19

Hence the node id (WireGuard public key) is *derived from* the signing key and
anyone can check that a signed record's ``wg_key`` belongs to its ``sign_key``
(:func:`ed25519_to_x25519_public`, :func:`x25519_matches_ed25519`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

__all__ = [
    "KEY_LEN",
    "SIGNATURE_LEN",
    "InvalidKey",
    "NodeIdentity",
    "ed25519_to_x25519_public",
    "key_from_text",
    "key_to_text",
    "verify_many",
    "verify_signature",
    "x25519_matches_ed25519",
]

KEY_LEN = 32
SIGNATURE_LEN = 64

_P = 2**255 - 19
_D = (-121665 * pow(121666, -1, _P)) % _P
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw


class InvalidKey(ValueError):
    """A key (raw or text) is malformed or not a valid curve point."""


@dataclass(frozen=True, eq=False)
class NodeIdentity:
    """A node's long-lived identity. Compare identities by ``seed``."""

    seed: bytes = field(repr=False)
    sign_public_key: bytes
    wg_public_key: bytes
    _sign_key: Ed25519PrivateKey = field(repr=False, compare=False)

    @classmethod
    def generate(cls, rng: Callable[[int], bytes]) -> NodeIdentity:
        """A new identity from 32 bytes of ``rng`` (``rng(n)`` gives ``n`` random bytes).

        The core reads no entropy itself: the daemon passes ``secrets.token_bytes``,
        tests and simulations a seeded source (``random.Random(seed).randbytes``).
        """
        seed = rng(32)
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise InvalidKey("the random source must give 32 bytes")
        return cls.from_seed(seed)

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeIdentity:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise InvalidKey("seed must be 32 bytes")
        sk = Ed25519PrivateKey.from_private_bytes(seed)
        sign_pub = sk.public_key().public_bytes(_RAW, _RAW_PUB)
        wg_priv = hashlib.sha512(seed).digest()[:32]
        wg_pub = (
            X25519PrivateKey.from_private_bytes(wg_priv).public_key().public_bytes(_RAW, _RAW_PUB)
        )
        return cls(seed=seed, sign_public_key=sign_pub, wg_public_key=wg_pub, _sign_key=sk)

    @property
    def wg_private_key(self) -> bytes:
        """Raw X25519 private key (unclamped ``sha512(seed)[:32]``; X25519 clamps)."""
        return hashlib.sha512(self.seed).digest()[:32]

    @property
    def rank_key(self) -> bytes:
        """The secret this node ranks candidates with (``core.hashing``; 32 bytes).

        A rendezvous choice that only this node makes (the gateway of a route,
        an exit, a client's peer) hashes each candidate with this secret, not
        with the public key: a node that knows our key cannot make keys
        offline until one wins our choice before it is admitted. Derived from
        the seed, so it survives a restart and choices stay where they were.
        """
        return hashlib.sha256(b"smegmesh rendezvous rank key\x00" + self.seed).digest()

    def sign(self, msg: bytes) -> bytes:
        return self._sign_key.sign(msg)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeIdentity) and other.seed == self.seed

    def __hash__(self) -> int:
        return hash(self.wg_public_key)


def _decode_ed_y(ed_pub: bytes) -> tuple[int, int]:
    if not isinstance(ed_pub, bytes) or len(ed_pub) != KEY_LEN:
        raise InvalidKey("Ed25519 public key must be 32 bytes")
    n = int.from_bytes(ed_pub, "little")
    sign = n >> 255
    y = n & ((1 << 255) - 1)
    if y >= _P:
        raise InvalidKey("non-canonical Ed25519 point encoding")
    if y == 1:
        raise InvalidKey("Ed25519 identity point has no Montgomery form")
    return y, sign


def ed25519_to_x25519_public(ed_pub: bytes) -> bytes:
    """Map an Ed25519 public key to its X25519 (Montgomery u) public key.

    Raises :class:`InvalidKey` when ``ed_pub`` is not a canonical encoding of a
    point on the curve (or is the identity, which has no u coordinate).
    """
    y, sign = _decode_ed_y(ed_pub)
    # x^2 = (y^2 - 1) / (d y^2 + 1) must be a square (Euler's criterion).
    y2 = y * y % _P
    x2 = (y2 - 1) * pow(_D * y2 + 1, -1, _P) % _P
    if x2 == 0:
        if sign:
            raise InvalidKey("invalid Ed25519 point encoding (x=0 with sign bit)")
    elif pow(x2, (_P - 1) // 2, _P) != 1:
        raise InvalidKey("Ed25519 public key is not a point on the curve")
    u = (1 + y) * pow(1 - y, -1, _P) % _P
    return u.to_bytes(32, "little")


def x25519_matches_ed25519(wg_pub: bytes, ed_pub: bytes) -> bool:
    """Cheap check that ``wg_pub == ed25519_to_x25519_public(ed_pub)``.

    Uses one multiplication instead of an inversion and skips the on-curve
    test (callers verify a signature with ``ed_pub``, which rejects off-curve
    points).  Never raises.
    """
    if not isinstance(wg_pub, bytes) or len(wg_pub) != KEY_LEN:
        return False
    try:
        y, _ = _decode_ed_y(ed_pub)
    except InvalidKey:
        return False
    u = int.from_bytes(wg_pub, "little")
    if u >= _P:
        return False
    return (u * (1 - y) - (1 + y)) % _P == 0


def verify_signature(sign_pub: bytes, msg: bytes, sig: bytes) -> bool:
    """True iff ``sig`` is a valid Ed25519 signature of ``msg`` by ``sign_pub``."""
    if not isinstance(sign_pub, bytes) or len(sign_pub) != KEY_LEN:
        return False
    if not isinstance(sig, bytes) or len(sig) != SIGNATURE_LEN:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(sign_pub).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_many(jobs: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """Verify ``(sign_pub, msg, sig)`` triples; the default (serial) batch verifier.

    :class:`smegmesh.core.state.MeshState` accepts any callable with this
    signature, so a daemon may plug in one that spreads work over threads.
    """
    return [verify_signature(pub, msg, sig) for pub, msg, sig in jobs]


def key_to_text(b: bytes) -> str:
    """Standard base64 of a 32-byte key, as printed by ``wg``."""
    if not isinstance(b, bytes) or len(b) != KEY_LEN:
        raise InvalidKey("key must be 32 bytes")
    return base64.b64encode(b).decode("ascii")


def key_from_text(s: str) -> bytes:
    """Parse a ``wg``-style base64 key: exactly 44 chars decoding to 32 bytes."""
    if not isinstance(s, str) or len(s) != 44 or not s.isascii() or not s.endswith("="):
        raise InvalidKey("key must be 44 base64 characters")
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidKey(f"invalid base64 key: {e}") from None
    if len(raw) != KEY_LEN or base64.b64encode(raw).decode("ascii") != s:
        raise InvalidKey("key must be canonical base64 of 32 bytes")
    return raw
