"""What both ends of the node-to-node RPC share: the method, the message cap,
the call signature (``daemon/transport.py`` describes the design), the errors.
"""

from __future__ import annotations

import hashlib
import struct

SERVICE = "smegmesh.Node"
METHOD = "Call"
FULL_METHOD = f"/{SERVICE}/{METHOD}"
TLS_NAME = "smegmesh"
#: Largest message between members: one maximal record (~0.55 MB) with room to
#: spare; larger transfers are paged (``core.paging.PAGE_BYTES``, 512 KiB). Also
#: what a stranger lying about its length can make us read, so kept small.
MAX_MESSAGE = 1024 * 1024


CLOCK_SKEW_MS = 5 * 60 * 1000
_DOMAIN = b"smegmesh/rpc/v1\0"


class RpcError(Exception):
    """A node-to-node call failed (unreachable, timed out, refused, bad pin)."""


class Refused(Exception):
    """Raised by a request handler to refuse a call (mapped to PERMISSION_DENIED)."""


def _signed_blob(server_fp: bytes, ts_ms: int, body: bytes) -> bytes:
    return _signed_digest(server_fp, ts_ms, hashlib.sha256(body).digest())


def _signed_digest(server_fp: bytes, ts_ms: int, body_sha256: bytes) -> bytes:
    return _DOMAIN + server_fp + struct.pack(">Q", ts_ms) + body_sha256


def _b(s: str | bytes) -> bytes:
    return bytes.fromhex(s if isinstance(s, str) else s.decode())
