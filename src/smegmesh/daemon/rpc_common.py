"""What both ends of the node-to-node RPC share: the method, the message cap,
the call signature (``daemon/transport.py`` describes the design), the errors.
"""

from __future__ import annotations

import hashlib
import ssl
import struct
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smegmesh.core.identity import NodeIdentity

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


def call_metadata(
    me: NodeIdentity, server_fp: bytes, body: bytes, to: bytes | None
) -> tuple[tuple[str, str], ...]:
    """A stream call's metadata: ``me``'s keys and signature over the server's
    pin, the time and the body's hash (checked before the body is read)."""
    ts = int(time.time() * 1000)
    digest = hashlib.sha256(body).digest()
    sig = me.sign(_signed_digest(server_fp, ts, digest))
    md: tuple[tuple[str, str], ...] = (
        ("x-smeg-key", me.wg_public_key.hex()),
        ("x-smeg-sign", me.sign_public_key.hex()),
        ("x-smeg-ts", str(ts)),
        ("x-smeg-hash", digest.hex()),
        ("x-smeg-len", str(len(body))),
        ("x-smeg-sig", sig.hex()),
    )
    return md if to is None else (("x-smeg-to", to.hex()), *md)


def failure_reason(e: BaseException) -> str:
    """A failed connection's cause in a few words (for the log)."""
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, ssl.SSLError):
        return "TLS failed"
    if isinstance(e, ConnectionResetError):
        return "connection reset"
    if isinstance(e, OSError):
        return e.strerror or type(e).__name__
    return type(e).__name__
