"""Node-to-node RPC: gRPC (asyncio) over TLS, mutually authenticated by node identity.

* **Server authentication: pinned TLS.** Every node has a P-256 TLS key and a
  self-signed certificate (gRPC's TLS stack does not take Ed25519 certificates).
  The SHA-256 of the certificate (``tls_fp``) is published in the node's
  *signed* mesh record, and invitation tokens carry it for bootstrap members, so
  the fingerprint is bound to the node identity. A client fetches the server's
  certificate, checks it against the expected fingerprint, and pins it as the
  only trusted root for that channel: no CA, no "skip verification".
* **Client authentication: a signature per call.** The caller signs
  ``domain | server fingerprint | timestamp | SHA-256(body)`` with its
  Ed25519 identity key and sends the signature, its signing key, WireGuard
  key, the body's SHA-256 and length as metadata. The server checks the key
  binding (the WireGuard key is the Curve25519 form of the signing key), the
  clock window and the signature. The
  signature names the server's fingerprint, so it cannot be replayed to another
  node, and it travels inside TLS to a pinned server, so no one else sees it.
* **Limits before work.** The signature covers the body's hash, which travels in
  the metadata, so the server authenticates a call *before reading its body*
  (the method is served as a client-streaming one: the handler decides whether
  to read the one request message at all). Then, still before the read: at
  most :data:`MAX_CALLS` calls in flight in total and :data:`MAX_CALLS_PER_KEY`
  per caller; a caller that is no member of any of our meshes (``is_member``)
  may declare at most :data:`MAX_STRANGER_MESSAGE` bytes (a join request) and
  has :data:`MAX_STRANGER_CALLS` slots in total, :data:`MAX_STRANGER_CALLS_PER_ADDRESS`
  per source address. Members' messages are capped at :data:`MAX_MESSAGE` (the
  protocol pages anything larger: join replies, sync steps, pushes). Over a
  limit the call is rejected at once with ``RESOURCE_EXHAUSTED``, never queued.
  The body must arrive within :data:`STRANGER_READ_TIMEOUT_S` (strangers) or
  :data:`READ_TIMEOUT_S` and match the declared length and hash. Refusals are logged
  as one summary line per source per minute (:mod:`smegmesh.daemon.ratelog`).
  Connections: at most :data:`MAX_CONNECTIONS`, :data:`MAX_STREAMS_PER_CONNECTION`
  streams each, closed after :data:`IDLE_CONNECTION_MS` without calls, and
  a TLS/HTTP2 handshake must finish within :data:`HANDSHAKE_TIMEOUT_MS`.
* **Bounded outgoing channels.** A client keeps at most :data:`MAX_CHANNELS`
  pinned channels open (least recently used idle one closed first) and closes
  one idle for :data:`CHANNEL_IDLE_S`: a node's connections do not grow with
  the size of the mesh (issue 14). A pinned certificate, once fetched, is kept
  by its fingerprint (at most :data:`MAX_CACHED_CERTIFICATES`): reopening a
  channel needs no second handshake to fetch it.

One generic unary method carries ``core.wire`` messages as bytes. Whether a
caller may do what it asks (is it a member? does it hold a token?) is decided
by the node, from the authenticated caller key this layer hands it.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import hashlib
import logging
import ssl
import struct
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smegmesh.core.endpoint import join_host_port, split_host_port
from smegmesh.core.identity import NodeIdentity, verify_signature, x25519_matches_ed25519
from smegmesh.daemon.ratelog import RateLog

log = logging.getLogger(__name__)

SERVICE = "smegmesh.Node"
METHOD = "Call"
FULL_METHOD = f"/{SERVICE}/{METHOD}"
TLS_NAME = "smegmesh"
#: Largest message between members: one maximal record (~0.55 MB) with room to
#: spare; larger transfers are paged (``core.paging.PAGE_BYTES``, 512 KiB). Also
#: what a stranger lying about its length can make us read, so kept small.
MAX_MESSAGE = 1024 * 1024
#: Largest message a non-member may send: a join request (its own fresh record)
#: or a ``WhoAmI``.
MAX_STRANGER_MESSAGE = 64 * 1024
MAX_CALLS = 128
MAX_CALLS_PER_KEY = 16
MAX_STRANGER_CALLS = 8
MAX_STRANGER_CALLS_PER_ADDRESS = 2
MAX_CONNECTIONS = 1024
MAX_STREAMS_PER_CONNECTION = 32
IDLE_CONNECTION_MS = 5 * 60 * 1000
HANDSHAKE_TIMEOUT_MS = 10_000
#: Seconds a caller has to send its (announced) body once its call is admitted.
READ_TIMEOUT_S = 30.0
STRANGER_READ_TIMEOUT_S = 5.0
CLOCK_SKEW_MS = 5 * 60 * 1000
_DOMAIN = b"smegmesh/rpc/v1\0"
_GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.ssl_target_name_override", TLS_NAME),
    ("grpc.keepalive_time_ms", 30_000),
]
_SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.so_reuseport", 0),
    ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
    ("grpc.max_connection_idle_ms", IDLE_CONNECTION_MS),
    ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
    ("grpc.max_allowed_incoming_connections", MAX_CONNECTIONS),
    # No BDP probing: flow-control windows stay at 64 KiB per stream, so data
    # sent on calls we have not admitted (or will refuse) is not buffered.
    ("grpc.http2.bdp_probe", 0),
]


#: The caller's address as this server sees it ("2001:db8::5"), set while a handler runs.
caller_address: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "caller_address", default=None
)
#: The WireGuard key the caller meant to reach (``x-smeg-to``), set while a handler
#: runs; ``None`` if it did not say. A routing hint for servers that host several
#: identities (the test swarm, ``smegmesh.testbed.swarm``), not authenticated:
#: the signature names the server's TLS fingerprint, which such a server shares.
callee_key: contextvars.ContextVar[bytes | None] = contextvars.ContextVar(
    "callee_key", default=None
)


def parse_grpc_peer(peer: str) -> str | None:
    """``ipv6:[2001:db8::5]:4000`` / ``ipv4:192.0.2.1:4000`` -> the address."""
    kind, _, rest = peer.partition(":")
    rest = urllib.parse.unquote(rest)
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].partition("]")[0].split("%")[0]
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return None


class RpcError(Exception):
    """A node-to-node call failed (unreachable, timed out, refused, bad pin)."""


class Refused(Exception):
    """Raised by a request handler to refuse a call (mapped to PERMISSION_DENIED)."""


@dataclass(frozen=True)
class TlsIdentity:
    key_pem: bytes
    cert_pem: bytes

    @property
    def fingerprint(self) -> bytes:
        return cert_fingerprint(self.cert_pem)

    @classmethod
    def generate(cls) -> TlsIdentity:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_NAME)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS_NAME)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        )

    @classmethod
    def load_or_create(cls, directory: Path) -> TlsIdentity:
        key_path, cert_path = directory / "tls.key", directory / "tls.crt"
        if key_path.exists() and cert_path.exists():
            return cls(key_pem=key_path.read_bytes(), cert_pem=cert_path.read_bytes())
        ident = cls.generate()
        from smegmesh.daemon.persist import atomic_write

        atomic_write(key_path, ident.key_pem, mode=0o600)
        atomic_write(cert_path, ident.cert_pem, mode=0o644)
        return ident


def cert_fingerprint(cert_pem_or_der: bytes) -> bytes:
    if cert_pem_or_der.lstrip().startswith(b"-----"):
        der = x509.load_pem_x509_certificate(cert_pem_or_der).public_bytes(
            serialization.Encoding.DER
        )
    else:
        der = cert_pem_or_der
    return hashlib.sha256(der).digest()


def _signed_blob(server_fp: bytes, ts_ms: int, body: bytes) -> bytes:
    return _signed_digest(server_fp, ts_ms, hashlib.sha256(body).digest())


def _signed_digest(server_fp: bytes, ts_ms: int, body_sha256: bytes) -> bytes:
    return _DOMAIN + server_fp + struct.pack(">Q", ts_ms) + body_sha256


def _b(s: str | bytes) -> bytes:
    return bytes.fromhex(s if isinstance(s, str) else s.decode())


def _callee(md: dict[str, str | bytes]) -> bytes | None:
    """The ``x-smeg-to`` routing hint: a 32-byte key, or None (absent or malformed)."""
    to = md.get("x-smeg-to")
    if to is None or len(to) != 64:
        return None
    try:
        return _b(to)
    except ValueError:
        return None


Handler = Callable[[bytes, bytes], Awaitable[bytes]]
"""``handler(caller_wg_key, request_body) -> reply_body``; raise ``Refused`` to refuse."""


class _Reject(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class RpcServer:
    """Serves the node-to-node method on ``host:port`` with TLS.

    ``is_member(key)`` tells whether an authenticated caller is a member of one
    of our meshes (default: everyone is); non-members get the stranger limits.
    """

    def __init__(
        self,
        tls: TlsIdentity,
        handler: Handler,
        is_member: Callable[[bytes], bool] | None = None,
        refusals: RateLog | None = None,
    ) -> None:
        self._tls = tls
        self._fp = tls.fingerprint
        self._handler = handler
        self._is_member = is_member or (lambda _k: True)
        self._server: grpc.aio.Server | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.refusals = refusals or RateLog(log, "refused")
        self._calls = 0
        self._per_key: dict[bytes, int] = {}
        self._strangers = 0
        self._strangers_per_addr: dict[str, int] = {}

    @property
    def calls_in_flight(self) -> int:
        return self._calls

    async def start(self, host: str, port: int) -> int:
        # No SO_REUSEPORT (gRPC's default): a second smegd on the same port must
        # fail to start, not silently share the port and half of the traffic.
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        # Served as client-streaming (the wire is the same as unary): the handler
        # sees the metadata first and reads the one request only once allowed.
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {METHOD: grpc.stream_unary_rpc_method_handler(self._call)}
        )
        server.add_generic_rpc_handlers((handler,))
        creds = grpc.ssl_server_credentials([(self._tls.key_pem, self._tls.cert_pem)])
        bind = join_host_port(host, port)
        try:
            self.port = server.add_secure_port(bind, creds)
        except RuntimeError:  # grpc's "Failed to bind": no errno to pass on
            self.port = 0
        if not self.port:
            raise OSError(
                f"cannot listen on {bind} (gRPCPort): address already in use or not available"
            )
        await server.start()
        self._server = server
        self._flusher = asyncio.create_task(self._flush_loop())
        return self.port

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refusals.interval_s)
            self.refusals.flush()

    async def stop(self, grace: float = 0.5) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    def _authenticate(self, md: dict[str, str | bytes]) -> tuple[bytes, bytes, int]:
        """From the metadata alone: ``(caller wg key, body sha256, body length)``."""
        try:
            wg_key = _b(md["x-smeg-key"])
            sign_key = _b(md["x-smeg-sign"])
            ts_ms = int(md["x-smeg-ts"])
            digest = _b(md["x-smeg-hash"])
            length = int(md["x-smeg-len"])
            sig = _b(md["x-smeg-sig"])
        except (KeyError, ValueError, TypeError):
            raise _Reject(grpc.StatusCode.UNAUTHENTICATED, "no valid auth metadata") from None
        now = int(time.time() * 1000)
        ok = (
            len(wg_key) == 32
            and len(sign_key) == 32
            and len(sig) == 64
            and len(digest) == 32
            and 0 <= length <= MAX_MESSAGE
            and abs(now - ts_ms) <= CLOCK_SKEW_MS
            # Key binding with one field multiplication (no inversions); the
            # signature check right after rejects off-curve signing keys.
            and x25519_matches_ed25519(wg_key, sign_key)
            and verify_signature(sign_key, _signed_digest(self._fp, ts_ms, digest), sig)
        )
        if not ok:
            raise _Reject(grpc.StatusCode.UNAUTHENTICATED, "bad signature")
        return wg_key, digest, length

    async def _call(self, requests: object, context: grpc.aio.ServicerContext) -> bytes:
        peer = context.peer()
        parsed = parse_grpc_peer(peer)
        addr = parsed or peer
        member = False
        wg_key = b""
        admitted = False
        try:
            if self._calls >= MAX_CALLS:
                raise _Reject(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls in total")
            md = {k: v for k, v in (context.invocation_metadata() or ())}
            wg_key, digest, length = self._authenticate(md)
            member = self._is_member(wg_key)
            if self._per_key.get(wg_key, 0) >= MAX_CALLS_PER_KEY:
                raise _Reject(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls from one key")
            if not member:
                if length > MAX_STRANGER_MESSAGE:
                    raise _Reject(grpc.StatusCode.PERMISSION_DENIED, "not a member: too large")
                if (
                    self._strangers >= MAX_STRANGER_CALLS
                    or self._strangers_per_addr.get(addr, 0) >= MAX_STRANGER_CALLS_PER_ADDRESS
                ):
                    raise _Reject(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls (not a member)"
                    )
            self._enter(wg_key, addr, member)
            admitted = True
            try:  # a caller that never sends its body does not hold a slot for long
                body = await asyncio.wait_for(
                    context.read(), READ_TIMEOUT_S if member else STRANGER_READ_TIMEOUT_S
                )
            except TimeoutError:
                raise _Reject(grpc.StatusCode.DEADLINE_EXCEEDED, "body not sent in time") from None
            if type(body) is not bytes or len(body) != length:
                raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, "body length mismatch")
            if hashlib.sha256(body).digest() != digest:
                raise _Reject(grpc.StatusCode.UNAUTHENTICATED, "body hash mismatch")
            caller_address.set(parsed)
            callee_key.set(_callee(md))
            try:
                return await self._handler(wg_key, body)
            except Refused as e:
                raise _Reject(grpc.StatusCode.PERMISSION_DENIED, str(e) or "refused") from None
        except _Reject as r:
            self.refusals.note(addr, r.reason)
            await context.abort(r.code, r.reason)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error handling rpc from %s", peer)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            if admitted:
                self._leave(wg_key, addr, member)
        raise AssertionError("unreachable")

    def _enter(self, key: bytes, addr: str, member: bool) -> None:
        self._calls += 1
        self._per_key[key] = self._per_key.get(key, 0) + 1
        if not member:
            self._strangers += 1
            self._strangers_per_addr[addr] = self._strangers_per_addr.get(addr, 0) + 1

    def _leave(self, key: bytes, addr: str, member: bool) -> None:
        self._calls -= 1
        n = self._per_key[key] - 1
        if n:
            self._per_key[key] = n
        else:
            del self._per_key[key]
        if not member:
            self._strangers -= 1
            n = self._strangers_per_addr[addr] - 1
            if n:
                self._strangers_per_addr[addr] = n
            else:
                del self._strangers_per_addr[addr]


async def fetch_certificate(
    host: str, port: int, timeout: float, wire: list[int] | None = None
) -> bytes:
    """Fetch the server's certificate (DER) with a plain TLS handshake.

    ``wire``: ``[sent, received]`` TCP payload bytes of the connection are added
    to it (the connection is closed before any sampler could see it).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # verified by fingerprint right below, by the caller
    ctx.set_alpn_protocols(["h2"])
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ctx, server_hostname=TLS_NAME), timeout
    )
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
        if not der:
            raise RpcError(f"{host}:{port} presented no certificate")
        return bytes(der)
    finally:
        if wire is not None:
            from smegmesh.daemon.wirestats import socket_bytes

            sent, received = socket_bytes(writer.get_extra_info("socket"))
            wire[0] += sent
            wire[1] += received
        # No graceful TLS shutdown: a gRPC server need not answer close_notify,
        # and waiting for it stalls every first call to a node for asyncio's
        # ssl_shutdown_timeout (30 s). We only wanted the certificate.
        writer.transport.abort()


BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
MAX_BACKOFF_ENTRIES = 4096

EndpointKey = tuple[str, bytes]


class EndpointBackoff:
    """Exponential back-off per ``(endpoint, pinned fingerprint)``, for the whole node.

    Any member may write any ``host:port`` into its record; without this, every
    mesh we share with it would make us connect there again and again (a
    reflector). A key that fails (refused, timed out, TLS failed, not the
    certificate its record pins) is not tried again for 1, 2, 4, ... s up to
    :data:`BACKOFF_CAP_S`; a success, or an authenticated call from the node
    that owns the endpoint, clears it. Keyed with the fingerprint, so a record
    that names another node's endpoint with a false pin does not back off the
    real node.
    """

    def __init__(
        self,
        base_s: float = BACKOFF_BASE_S,
        cap_s: float = BACKOFF_CAP_S,
        *,
        max_entries: int = MAX_BACKOFF_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = base_s
        self._cap = cap_s
        self._max = max_entries
        self._clock = clock
        self._state: dict[EndpointKey, tuple[int, float]] = {}  # failures, retry at

    def __len__(self) -> int:
        return len(self._state)

    def wait(self, key: EndpointKey) -> float:
        """Seconds before ``key`` may be tried again (0: now)."""
        st = self._state.get(key)
        return 0.0 if st is None else max(0.0, st[1] - self._clock())

    def failed(self, key: EndpointKey) -> float:
        n = self._state.pop(key, (0, 0.0))[0] + 1
        delay = min(self._cap, self._base * 2.0 ** min(n - 1, 30))
        if len(self._state) >= self._max:
            del self._state[next(iter(self._state))]  # the oldest entry
        self._state[key] = (n, self._clock() + delay)
        return delay

    def ok(self, key: EndpointKey) -> None:
        self._state.pop(key, None)


def _failure_reason(e: BaseException) -> str:
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


#: Most pinned channels (each one TLS connection) a client keeps open at once;
#: the least recently used idle one is closed to make room for a new one.
MAX_CHANNELS = 64
#: A channel with no call for this long is closed (and reopened on the next call).
CHANNEL_IDLE_S = 60.0
#: Pinned certificates kept (DER, ~400 bytes each) so that reopening a channel
#: needs no second TLS handshake to fetch the certificate again (issue 14: at
#: scale nearly every probe opens a channel; the fetch was half its wire bytes).
MAX_CACHED_CERTIFICATES = 4096


@dataclass
class _Pooled:
    channel: grpc.aio.Channel
    used: float
    calls: int = 0


class RpcClient:
    """Calls other nodes over pinned channels, one per (endpoint, fingerprint).

    The channels form a bounded pool: at most ``max_channels`` are open, the
    least recently used idle one is closed to make room, and one without a call
    for ``channel_idle_s`` is closed (swept on later calls). A closed channel is
    reopened, pin checked again, on the next call to that member.
    """

    def __init__(
        self,
        identity: NodeIdentity,
        timeout: float = 5.0,
        *,
        max_channels: int = MAX_CHANNELS,
        channel_idle_s: float = CHANNEL_IDLE_S,
        clock: Callable[[], float] = time.monotonic,
        certificates: OrderedDict[bytes, bytes] | None = None,
    ) -> None:
        if max_channels < 1:
            raise ValueError("max_channels must be at least 1")
        self._identity = identity
        self._timeout = timeout
        self._max_channels = max_channels
        self._idle_s = channel_idle_s
        self._clock = clock
        #: Least recently used first.
        self._channels: OrderedDict[tuple[str, bytes], _Pooled] = OrderedDict()
        #: Per key being connected: the lock and how many callers hold or wait for it.
        self._locks: dict[tuple[str, bytes], tuple[asyncio.Lock, list[int]]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        #: fingerprint -> certificate (DER) whose SHA-256 it is; least recently used
        #: first (``certificates``: shared with other clients, e.g. a swarm's members)
        self._certs: OrderedDict[bytes, bytes] = (
            certificates if certificates is not None else OrderedDict()
        )
        self.backoff = EndpointBackoff()
        #: Failed connections, one line per endpoint per minute (no flood).
        self.failures = RateLog(log, "failed", unit="connections", prep="to")
        self.attempts = 0  # connection attempts (certificate fetches), for tests
        #: TCP payload bytes [sent, received] of the certificate fetches (metrics)
        self.fetch_wire = [0, 0]
        self.evictions = 0  # channels closed for room or idleness

    @property
    def open_channels(self) -> int:
        return len(self._channels)

    def _failed(self, endpoint: str, fp: bytes, reason: str) -> None:
        delay = self.backoff.failed((endpoint, fp))
        self.failures.note(endpoint, reason)
        log.debug("connection to %s failed (%s): retry in %g s", endpoint, reason, delay)

    def _take(self, key: tuple[str, bytes]) -> _Pooled | None:
        p = self._channels.get(key)
        if p is not None:  # no await between here and the caller's use
            p.calls += 1
            p.used = self._clock()
            self._channels.move_to_end(key)
        return p

    async def _channel(self, endpoint: str, fp: bytes) -> _Pooled:
        """The pooled channel for the key, with one call counted on it."""
        key = (endpoint, fp)
        p = self._take(key)
        if p is not None:
            return p
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                p = self._take(key)
                if p is not None:
                    return p
                wait = self.backoff.wait(key)
                if wait > 0:  # another call failed while we waited for the lock
                    raise RpcError(
                        f"{endpoint}: backing off ({wait:.0f} s) after failed connections"
                    )
                host, port = split_host_port(endpoint)
                der = self._certs.get(fp)
                if der is not None:
                    # Known by its hash: it stays the only root, so a server
                    # presenting another certificate still fails the handshake.
                    self._certs.move_to_end(fp)
                else:
                    der = await self._fetch(endpoint, host, port, fp)
                pem = ssl.DER_cert_to_PEM_cert(der).encode()
                creds = grpc.ssl_channel_credentials(root_certificates=pem)
                target = join_host_port(host, port)
                self._make_room(self._max_channels - 1)
                ch = grpc.aio.secure_channel(target, creds, options=_GRPC_OPTIONS)
                p = self._channels[key] = _Pooled(ch, self._clock(), calls=1)
                return p
        finally:
            users[0] -= 1
            if not users[0] and self._locks.get(key) is entry:
                del self._locks[key]

    async def _fetch(self, endpoint: str, host: str, port: int, fp: bytes) -> bytes:
        """The server's certificate, checked against the pin and remembered by it."""
        self.attempts += 1
        try:
            der = await fetch_certificate(host, port, self._timeout, self.fetch_wire)
        except (OSError, TimeoutError, ssl.SSLError, RpcError) as e:
            self._failed(endpoint, fp, _failure_reason(e))
            raise RpcError(f"cannot reach {endpoint}: {e or type(e).__name__}") from e
        if hashlib.sha256(der).digest() != fp:
            self._failed(endpoint, fp, "not the certificate its record pins")
            raise RpcError(f"{endpoint} presented an unexpected TLS certificate")
        self._certs[fp] = der
        if len(self._certs) > MAX_CACHED_CERTIFICATES:
            self._certs.popitem(last=False)
        return der

    def _evict(self, key: tuple[str, bytes]) -> None:
        p = self._channels.pop(key)
        self.evictions += 1
        # Calls still on it get up to their timeout to finish; idle ones close at once.
        task = asyncio.create_task(p.channel.close(self._timeout if p.calls else None))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _make_room(self, limit: int) -> None:
        """Close least recently used channels until at most ``limit`` are open."""
        if len(self._channels) <= limit:
            return
        for key in [k for k, p in self._channels.items() if not p.calls]:
            if len(self._channels) <= limit:
                return
            self._evict(key)
        while len(self._channels) > limit:  # all busy: close the oldest anyway
            self._evict(next(iter(self._channels)))

    def sweep(self) -> None:
        """Close the channels that have had no call for ``channel_idle_s``."""
        cutoff = self._clock() - self._idle_s
        for key, p in list(self._channels.items()):
            if p.used > cutoff:
                break  # ordered by last use: the rest are newer
            if not p.calls:
                self._evict(key)

    async def call(
        self,
        endpoint: str,
        fp: bytes,
        body: bytes,
        timeout: float | None = None,
        *,
        to: bytes | None = None,
        identity: NodeIdentity | None = None,
    ) -> bytes:
        """Call ``endpoint`` (pinned to ``fp``) with ``body``; returns the reply body.

        ``to``: the WireGuard key of the node meant (sent as the ``x-smeg-to``
        routing hint; the same on every call of a channel, so HPACK sends it
        once per connection). ``identity``: sign as this node instead of the
        client's own (a swarm process calling for many members over one pool).
        """
        wait = self.backoff.wait((endpoint, fp))
        if wait > 0:
            raise RpcError(f"{endpoint}: backing off ({wait:.0f} s) after failed connections")
        self.sweep()
        pooled = await self._channel(endpoint, fp)
        ts = int(time.time() * 1000)
        digest = hashlib.sha256(body).digest()
        me = identity or self._identity
        sig = me.sign(_signed_digest(fp, ts, digest))
        md: tuple[tuple[str, str], ...] = (
            ("x-smeg-key", me.wg_public_key.hex()),
            ("x-smeg-sign", me.sign_public_key.hex()),
            ("x-smeg-ts", str(ts)),
            ("x-smeg-hash", digest.hex()),
            ("x-smeg-len", str(len(body))),
            ("x-smeg-sig", sig.hex()),
        )
        if to is not None:
            md = (("x-smeg-to", to.hex()), *md)
        try:
            reply: bytes = await pooled.channel.unary_unary(FULL_METHOD)(
                body, metadata=md, timeout=timeout or self._timeout
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                await self._drop((endpoint, fp), pooled)
                self._failed(endpoint, fp, "unavailable")
            raise RpcError(f"{endpoint}: {e.code().name}: {e.details()}") from e
        finally:
            pooled.calls -= 1
            pooled.used = self._clock()
        self.backoff.ok((endpoint, fp))
        return reply

    async def _drop(self, key: tuple[str, bytes], pooled: _Pooled | None = None) -> None:
        p = self._channels.get(key)
        if p is None or (pooled is not None and p is not pooled):
            return  # already replaced by a fresh channel: keep that one
        del self._channels[key]
        await p.channel.close()

    async def close(self) -> None:
        for key in list(self._channels):
            await self._drop(key)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
