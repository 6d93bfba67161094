"""Requests of the datagram layouts before version 3, answered (pure; issue 14).

A node not upgraded yet sends version 1 (magic ``SMD``, an 80-byte header
with both keys in full) or version 2 (magic 0xD2, a 30-byte header of 8-byte
key ids and a 12-byte nonce). Such a request is answered, within the
server's per-address token bucket and with no crypto, by a "use the stream"
notice of its own version, nothing else; the old node then calls us over the
stream (docs/TRANSPORT.md, "Version 3 of the layout").
"""

from __future__ import annotations

import struct

from smegmesh.daemon.dgram_wire import MAX_DATAGRAM, NOTICE, REQUEST, REQUEST_PART

__all__ = ["V1_MAGIC", "V2_MAGIC", "old_notice_for"]

#: Version 1's magic, header and smallest request (bytes), and its notice.
V1_MAGIC = b"SMD"
_V1_HEADER_LEN = 80
_V1_OVERHEAD = 113
_V1_NOTICE = struct.Struct(">3sB12s")
#: Version 2's, the same.
V2_MAGIC = 0xD2
_V2_HEADER_LEN = 30
_V2_OVERHEAD = 51
_V2_NOTICE = struct.Struct(">BB12s")


def old_notice_for(data: bytes) -> bytes | None:
    """The notice of its version answering ``data`` if it is a request of
    version 1 or 2, else None."""
    if not len(data) <= MAX_DATAGRAM or len(data) < 4:
        return None
    if data[:3] == V1_MAGIC and len(data) >= _V1_OVERHEAD and data[3] in (REQUEST, REQUEST_PART):
        return _V1_NOTICE.pack(V1_MAGIC, NOTICE, data[_V1_HEADER_LEN - 12 : _V1_HEADER_LEN])
    if data[0] == V2_MAGIC and len(data) >= _V2_OVERHEAD and data[1] in (REQUEST, REQUEST_PART):
        return _V2_NOTICE.pack(V2_MAGIC, NOTICE, data[_V2_HEADER_LEN - 12 : _V2_HEADER_LEN])
    return None
