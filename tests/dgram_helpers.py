"""Datagram test helpers: the server's key directory, a fake UDP transport."""

from __future__ import annotations

from smegmesh.core.identity import NodeIdentity
from smegmesh.daemon import dgram_wire as dw
from smegmesh.daemon.rpc_dgram import KeyIds, fresh_counter


def key_ids(own: NodeIdentity, *members: NodeIdentity | bytes) -> KeyIds:
    """A :class:`KeyIds` for ``own`` that knows ``members`` (identities or public keys)."""
    keys = [m if isinstance(m, bytes) else m.wg_public_key for m in members]
    by_id: dict[bytes, list[bytes]] = {}
    for k in keys:
        by_id.setdefault(dw.key_id(k), []).append(k)
    return KeyIds([(own.wg_public_key, own.wg_private_key)], lambda i, _n: by_id.get(i, []))


class SentDatagrams:
    """A stand-in for a datagram server's UDP transport: records what it sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, object]] = []

    def sendto(self, data: bytes, addr: object) -> None:
        self.sent.append((data, addr))

    def is_closing(self) -> bool:
        return False


def counter() -> dw.NonceCounter:
    """A nonce counter from a random start, as a datagram client or server has."""
    return fresh_counter()
