"""The anti-entropy messages (``SyncStart``, ``SyncStep``, ``SyncEnd``) and their wire codecs. Pure.

The protocol that uses them is :mod:`smegmesh.core.sync`; the decoders bound
every field (depths, prefixes, hash and digest lengths) before a session
reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smegmesh.core.codec import Codec, Elided, WireError, decode_pushed_item, encode_item
from smegmesh.core.state import DEPTH, FANOUT, Item

__all__ = [
    "CODECS",
    "DIGEST_LEN",
    "HASH_LEN",
    "SALT_LEN",
    "Leaf",
    "LeafEntry",
    "NodeHashes",
    "SyncEnd",
    "SyncMessage",
    "SyncStart",
    "SyncStep",
]

HASH_LEN = 4
SALT_LEN = 8
DIGEST_LEN = 16  # of the 32-byte root digest, in SyncStart

LeafEntry = tuple[bytes, int, int, bytes]  # key, record version + 1, prune version + 1, hash
Leaf = tuple[int, int, tuple[LeafEntry, ...]]  # depth, prefix, entries
NodeHashes = tuple[int, int, bytes]  # depth, prefix, FANOUT * HASH_LEN bytes


@dataclass(frozen=True, slots=True)
class SyncStart:
    """Opens a session: the initiator's salt, root digest (first bytes) and item count."""

    mesh_id: str
    session_id: int
    salt: bytes
    digest: bytes
    count: int


@dataclass(frozen=True, slots=True)
class SyncStep:
    """One round of a session: tree nodes, leaves, items and wants (``core.sync``)."""

    mesh_id: str
    session_id: int
    nodes: tuple[NodeHashes, ...] = ()
    leaves: tuple[Leaf, ...] = ()
    #: whole, or by reference (``core.elide``) to a side that takes them (``core.sync``)
    items: tuple[Item | Elided, ...] = ()
    wants: tuple[bytes, ...] = ()

    def has_questions(self) -> bool:
        """Whether the step asks the other side anything (nodes, leaves or wants)."""
        return bool(self.nodes or self.leaves or self.wants)


@dataclass(frozen=True, slots=True)
class SyncEnd:
    """Ends a session: in sync, nothing more to say, or an unknown session."""

    mesh_id: str
    session_id: int


SyncMessage = SyncStart | SyncStep | SyncEnd


def _str(v: object) -> str:
    if type(v) is not str:
        raise WireError("expected a string")
    return v


def _int(v: object, hi: int = 2**63) -> int:
    if type(v) is not int or not 0 <= v < hi:
        raise WireError("expected a bounded non-negative integer")
    return v


def _bin(v: object, n: int | None = None) -> bytes:
    if type(v) is not bytes or (n is not None and len(v) != n):
        raise WireError("expected bytes" + ("" if n is None else f" of length {n}"))
    return v


def _arr(v: object, n: int | None = None) -> list[Any]:
    if type(v) is not list or (n is not None and len(v) != n):
        raise WireError("expected an array" + ("" if n is None else f" of {n}"))
    return v


def _items(v: object) -> tuple[Item | Elided, ...]:
    return tuple(decode_pushed_item(x) for x in _arr(v))


def _want(v: object) -> bytes:
    """A wanted key: whole (32 bytes), or its id (8: references will do; ``core.sync``)."""
    if type(v) is not bytes or len(v) not in (8, 32):
        raise WireError("expected a key or a key id")
    return v


def _node_ref(depth: object, prefix: object) -> tuple[int, int]:
    d = _int(depth, DEPTH + 1)
    return d, _int(prefix, 1 << (4 * d))


def _dec_start(b: Any) -> SyncStart:
    o = _arr(b, 5)
    return SyncStart(
        _str(o[0]), _int(o[1]), _bin(o[2], SALT_LEN), _bin(o[3], DIGEST_LEN), _int(o[4])
    )


def _enc_step(m: SyncStep) -> list[Any]:
    return [
        m.mesh_id,
        m.session_id,
        [[d, p, h] for d, p, h in m.nodes],
        [[d, p, [list(e) for e in es]] for d, p, es in m.leaves],
        [encode_item(i) for i in m.items],
        list(m.wants),
    ]


def _dec_step(b: Any) -> SyncStep:
    o = _arr(b, 6)
    nodes = []
    for n in _arr(o[2]):
        n = _arr(n, 3)
        d, p = _node_ref(n[0], n[1])
        nodes.append((d, p, _bin(n[2], FANOUT * HASH_LEN)))
    leaves = []
    for lf in _arr(o[3]):
        lf = _arr(lf, 3)
        d, p = _node_ref(lf[0], lf[1])
        es = []
        for e in _arr(lf[2]):
            e = _arr(e, 4)
            es.append(
                (_bin(e[0], 32), _int(e[1], 2**63 + 1), _int(e[2], 2**63 + 1), _bin(e[3], HASH_LEN))
            )
        leaves.append((d, p, tuple(es)))
    wants = tuple(_want(k) for k in _arr(o[5]))
    return SyncStep(_str(o[0]), _int(o[1]), tuple(nodes), tuple(leaves), _items(o[4]), wants)


def _dec_end(b: Any) -> SyncEnd:
    o = _arr(b, 2)
    return SyncEnd(_str(o[0]), _int(o[1]))


#: This module's part of the protocol table (:data:`smegmesh.core.wire.PROTOCOL`).
CODECS = (
    # dgram_request/dgram_reply: may go as one datagram (core/wire.DATAGRAM_REQUESTS).
    # A SyncStep as a request too: it advances the responder's session, so the
    # responder keeps each session's last step and its reply, and a repeat
    # (a resend, or after a "use the stream" answer when the reply is too large
    # for a datagram) gets that reply again, even once the session is over
    # (tests/unit/test_sync.py::test_a_step_run_again_after_its_reply_was_lost_gets_the_same_reply).
    Codec(
        10,
        SyncStart,
        lambda m: [m.mesh_id, m.session_id, m.salt, m.digest, m.count],
        _dec_start,
        dgram_request=True,
    ),
    Codec(11, SyncStep, _enc_step, _dec_step, dgram_request=True, dgram_reply=True),
    Codec(12, SyncEnd, lambda m: [m.mesh_id, m.session_id], _dec_end, dgram_reply=True),
)
