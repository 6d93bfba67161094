"""The wire envelope, the codec table type and the item codecs (no message types).

A message on the wire is ``msgpack([WIRE_VERSION, type_code, body])``. A
:class:`Registry` maps type codes to message classes with the function that
turns a message into a msgpack-able body and the one that rebuilds it. It is
built explicitly from the tables of the modules that define messages
(``messages.CODECS``, ``sync.CODECS``, ``ITEM_CODECS`` here): see
:data:`smegmesh.core.wire.PROTOCOL`. Nothing registers itself on import.

:meth:`Registry.decode` is the entry point for untrusted bytes: *every*
malformed input (bad msgpack, wrong types or sizes, unknown version or type,
missing/extra fields, oversized or deeply nested data) raises
:class:`WireError` and nothing else. Decoders only check shapes; semantic
validation (signatures, addresses) is done by
:class:`~smegmesh.core.state.MeshState` or :func:`~smegmesh.core.record.validate_record`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from smegmesh.core.cert import (
    AdminChange,
    AliasReserve,
    AuthItem,
    Cert,
    Founding,
    InviteRevoke,
    PolicyChange,
    Revocation,
)
from smegmesh.core.certwire import auth_from_obj, auth_to_obj
from smegmesh.core.record import NodeRecord, Prune, prune_from_obj, record_from_obj

__all__ = [
    "DEFAULT_MAX_SIZE",
    "ITEM_CODECS",
    "ITEM_DELTA",
    "ITEM_ELIDED",
    "KEY_ID_LEN",
    "WIRE_VERSION",
    "Codec",
    "Elided",
    "Registry",
    "WireError",
    "decode_item",
    "decode_pushed_item",
    "encode_item",
]

WIRE_VERSION = 1
DEFAULT_MAX_SIZE = 32 * 1024 * 1024  # a full-state transfer of a large mesh fits

Message = Any
EncodeFn = Callable[[Any], Any]
DecodeFn = Callable[[Any], Any]


class WireError(ValueError):
    """Malformed, oversized or unknown message."""


@dataclass(frozen=True, slots=True)
class Codec:
    """One message class, its type code and its body encoder and decoder.

    ``dgram_request``/``dgram_reply``: the message may go as one datagram, as a
    request or as a reply (small, and safe to execute twice: a resend, or a
    "use the stream" answer, makes the caller repeat the call); see
    :data:`smegmesh.core.wire.DATAGRAM_REQUESTS`.
    """

    code: int
    cls: type
    encode: EncodeFn
    decode: DecodeFn
    dgram_request: bool = False
    dgram_reply: bool = False


class Registry:
    """Type code <-> message class table with its codecs."""

    def __init__(self, codecs: Iterable[Codec] = ()) -> None:
        self._by_code: dict[int, Codec] = {}
        self._by_cls: dict[type, Codec] = {}
        for c in codecs:
            self.register(c)

    def register(self, codec: Codec) -> None:
        """Add a message's codec (a code or class used twice is an error)."""
        type_code, cls = codec.code, codec.cls
        if type(type_code) is not int or not 0 <= type_code <= 0xFFFF:
            raise ValueError("type code must be an int in [0, 65535]")
        old = self._by_code.get(type_code)
        if old is not None and old.cls is not cls:
            raise ValueError(f"type code {type_code} already used by {old.cls.__name__}")
        if cls in self._by_cls and self._by_cls[cls].code != type_code:
            raise ValueError(f"{cls.__name__} already registered")
        self._by_code[type_code] = codec
        self._by_cls[cls] = codec

    def codecs(self) -> list[Codec]:
        """Every codec of the table, by type code."""
        return [self._by_code[c] for c in sorted(self._by_code)]

    def datagram_names(self, *, replies: bool = False) -> frozenset[str]:
        """Names of the requests (``replies``: the replies) that may go as a datagram."""
        return frozenset(
            c.cls.__name__
            for c in self._by_code.values()
            if (c.dgram_reply if replies else c.dgram_request)
        )

    def encode(self, msg: Message) -> bytes:
        """Encode a message of the table (raises TypeError for other classes)."""
        codec = self._by_cls.get(type(msg))
        if codec is None:
            raise TypeError(f"unregistered message type {type(msg).__name__}")
        out: bytes = msgpack.packb([WIRE_VERSION, codec.code, codec.encode(msg)], use_bin_type=True)
        return out

    def decode(self, data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> Message:
        """Decode untrusted bytes; raises only :class:`WireError`."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise WireError("message must be bytes")
        if len(data) > max_size:
            raise WireError(f"message of {len(data)} bytes exceeds {max_size}")
        try:
            obj = msgpack.unpackb(
                data,
                raw=False,
                use_list=True,
                strict_map_key=True,
                max_bin_len=max_size,
                max_str_len=max_size,
                max_array_len=max_size,
                max_map_len=max_size,
                max_ext_len=0,
                ext_hook=_reject_ext,
            )
        except Exception as e:  # any msgpack failure, incl. ExtraData, nesting limits
            raise WireError(f"bad msgpack: {type(e).__name__}") from None
        if type(obj) is not list or len(obj) != 3:
            raise WireError("envelope must be [version, type, body]")
        version, code, body = obj
        if type(version) is not int or version != WIRE_VERSION:
            raise WireError(f"unsupported wire version {version!r}")
        codec = self._by_code.get(code) if type(code) is int else None
        if codec is None:
            raise WireError(f"unknown message type {code!r}")
        try:
            msg = codec.decode(body)
        except WireError:
            raise
        except Exception as e:  # decoders may raise anything on garbage: normalise
            raise WireError(f"bad {codec.cls.__name__}: {e}") from None
        if type(msg) is not codec.cls:
            raise WireError(f"decoder of {codec.cls.__name__} returned {type(msg).__name__}")
        return msg

    def name_of(self, data: bytes) -> str | None:
        """Class name of the message ``data`` claims to be, from its envelope only.

        Cheap (reads the first bytes, decodes nothing else): for counting
        messages by type. None if the envelope is not ours.
        """
        unpacker = msgpack.Unpacker(max_buffer_size=64, raw=False, max_ext_len=0)
        unpacker.feed(bytes(data[:16]))
        try:
            if unpacker.read_array_header() != 3 or unpacker.unpack() != WIRE_VERSION:
                return None
            code = unpacker.unpack()
        except Exception:  # truncated or garbage
            return None
        codec = self._by_code.get(code) if type(code) is int else None
        return codec.cls.__name__ if codec is not None else None


def _reject_ext(code: int, data: bytes) -> Any:
    raise WireError("msgpack ext types are not used")


# --------------------------------------------------------------------------- items

ITEM_RECORD = 1
ITEM_PRUNE = 2
ITEM_AUTH = 3
#: A record or prune with references in place of parts its receiver holds
#: (:mod:`smegmesh.core.elide`); only in a ``Push``.
ITEM_ELIDED = 4
#: Bytes of a key that name it in place of the key (offers, wants, elided
#: items and deltas; the receiver looks it up among the keys it holds).
KEY_ID_LEN = 8
#: The kind of an elided item that is a record as a delta from the version
#: its receiver holds (:mod:`smegmesh.core.delta`); only to members that take it.
ITEM_DELTA = 5
#: Wire fields of an elided record (21, or 22 with extensions), prune (9) and delta (6).
_ELIDED_LENGTHS = {ITEM_RECORD: (21, 22), ITEM_PRUNE: (9,), ITEM_DELTA: (6,)}


@dataclass(frozen=True)
class Elided:
    """A record or prune as sent, with references in place of parts left out.

    ``kind``: :data:`ITEM_RECORD` or :data:`ITEM_PRUNE`; ``fields``: its wire
    form (``to_obj``) with a reference (bytes) in place of each part left
    out. Shapes only: :func:`smegmesh.core.elide.expand` puts the parts back
    from the receiver's state and checks the whole as any item.
    """

    kind: int
    fields: tuple[Any, ...]

    def __hash__(self) -> int:
        # its fields hold lists (a record's endpoints): hashed as sent (a sync
        # responder hashes each step it answers, core.sync)
        return hash(msgpack.packb([self.kind, self.fields], use_bin_type=True))


_AUTH_TYPES = (
    Founding,
    Cert,
    AdminChange,
    Revocation,
    InviteRevoke,
    AliasReserve,
    PolicyChange,
)


def encode_item(item: NodeRecord | Prune | AuthItem | Elided) -> list[Any]:
    """A record, prune or authority statement as ``[kind, fields]`` (for messages)."""
    if type(item) is Elided:
        return [ITEM_ELIDED, [item.kind, list(item.fields)]]
    if type(item) is NodeRecord:
        return [ITEM_RECORD, item.to_obj()]
    if type(item) is Prune:
        return [ITEM_PRUNE, item.to_obj()]
    if isinstance(item, _AUTH_TYPES):
        return [ITEM_AUTH, auth_to_obj(item)]
    raise TypeError(f"not an item: {type(item).__name__}")


def decode_item(obj: Any) -> NodeRecord | Prune | AuthItem:
    """Inverse of :func:`encode_item` (shape checks; raises on garbage)."""
    if type(obj) is not list or len(obj) != 2:
        raise WireError("item must be [kind, fields]")
    kind, body = obj
    if kind == ITEM_RECORD and type(kind) is int:
        return record_from_obj(body)
    if kind == ITEM_PRUNE and type(kind) is int:
        return prune_from_obj(body)
    if kind == ITEM_AUTH and type(kind) is int:
        return auth_from_obj(body)
    raise WireError(f"unknown item kind {kind!r}")


def decode_pushed_item(obj: Any) -> NodeRecord | Prune | AuthItem | Elided:
    """:func:`decode_item`, or an :class:`Elided` record or prune (a ``Push``'s items)."""
    if type(obj) is list and len(obj) == 2 and obj[0] == ITEM_ELIDED and type(obj[0]) is int:
        body = obj[1]
        if type(body) is not list or len(body) != 2:
            raise WireError("elided item must be [kind, fields]")
        kind, fields = body
        if type(kind) is not int or type(fields) is not list:
            raise WireError("elided item must be [kind, fields]")
        if len(fields) not in _ELIDED_LENGTHS.get(kind, ()):
            raise WireError("elided item: unknown kind or wrong number of fields")
        return Elided(kind, tuple(fields))
    return decode_item(obj)


ITEM_CODECS = (
    Codec(ITEM_RECORD, NodeRecord, lambda r: r.to_obj(), record_from_obj),
    Codec(ITEM_PRUNE, Prune, lambda p: p.to_obj(), prune_from_obj),
)
