"""The protocol's codec table and the encoding of every node-to-node message.

:data:`PROTOCOL` is the explicit table of every message type (type codes:
1-9 core items, 10-29 state sync, 30-59 gossip/liveness, 60-89 join/invite,
50-52 sponsored devices, 90-127 reserved), built from the tables of the modules that define them;
:func:`decode` is the single entry point for untrusted bytes (raises only
:class:`WireError`). The envelope, :class:`Registry` and the item codecs are
in :mod:`smegmesh.core.codec`.
"""

from __future__ import annotations

from typing import Any

from smegmesh.core import device_messages, messages, offer, sync
from smegmesh.core.codec import (
    DEFAULT_MAX_SIZE,
    ITEM_CODECS,
    WIRE_VERSION,
    Registry,
    WireError,
    decode_item,
    encode_item,
)

__all__ = [
    "DATAGRAM_REPLIES",
    "DATAGRAM_REQUESTS",
    "DEFAULT_MAX_SIZE",
    "PROTOCOL",
    "WIRE_VERSION",
    "Registry",
    "WireError",
    "decode",
    "decode_item",
    "encode",
    "encode_item",
    "message_name",
]

#: Every message type of the protocol (no other module adds any).
PROTOCOL = Registry(
    (*ITEM_CODECS, *sync.CODECS, *offer.CODECS, *messages.CODECS, *device_messages.CODECS)
)
#: Requests that may go as one datagram (the ``dgram_request`` flag of their
#: codec): small, and safe to execute twice. A ``Ping`` is answered from state;
#: a ``PingReq`` relays one more ping; a ``Push`` merges versioned items
#: (merging twice changes nothing); an ``Offer`` only reads state; a
#: ``SyncStart`` opens the responder's session slot ``(caller, session id)``
#: afresh; a ``SyncStep`` received again gets the reply the responder gave it
#: (``SyncSession.last``), without advancing the session. The datagram
#: transport (``daemon/rpc_dgram.py``) and the simulator's overhead model
#: (``sim/overhead.py``) both read these.
DATAGRAM_REQUESTS = PROTOCOL.datagram_names()
#: Replies a datagram may carry (the ``dgram_reply`` flag); others: "use the stream".
DATAGRAM_REPLIES = PROTOCOL.datagram_names(replies=True)


def encode(msg: object) -> bytes:
    """Encode a protocol message (raises TypeError for other classes)."""
    return PROTOCOL.encode(msg)


def decode(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """Decode untrusted bytes; raises only :class:`WireError`."""
    return PROTOCOL.decode(data, max_size)


def message_name(data: bytes) -> str | None:
    """Class name of the message in ``data`` from its envelope alone (None: not ours)."""
    return PROTOCOL.name_of(data)
