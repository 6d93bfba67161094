"""The node-to-node RPC server: authentication before the body, limits, refusals
(``daemon/transport.py`` describes the design).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import grpc

from smegmesh.core.endpoint import join_host_port
from smegmesh.core.identity import verify_signature, x25519_matches_ed25519
from smegmesh.core.wire import message_name
from smegmesh.daemon.member_budget import OVER_BUDGET_DELAY_S, MemberBudget
from smegmesh.daemon.ratelog import RateLog
from smegmesh.daemon.rpc_common import (
    CLOCK_SKEW_MS,
    MAX_MESSAGE,
    METHOD,
    SERVICE,
    Refused,
    _b,
    _signed_digest,
)
from smegmesh.daemon.rpc_dgram import (
    DatagramKeys,
    DatagramServer,
    DatagramStats,
    start_datagram_server,
)
from smegmesh.daemon.rpc_slots import UNBOUNDED, BodyWaits, Slots, source_networks
from smegmesh.daemon.rpc_tls import TlsIdentity

log = logging.getLogger("smegmesh.daemon.transport")  # one logger for the transport


#: Largest message a non-member may send: a join request (its own fresh record)
#: or a ``WhoAmI``.
MAX_STRANGER_MESSAGE = 64 * 1024
#: Ports tried when asked for any port (0), whose UDP twin may be taken.
ANY_PORT_TRIES = 8
#: Members' calls being handled (their body read), in all and per key; the last
#: RESERVED_CALLS only for a key with fewer than FEW_CALLS there (rpc_slots.Slots).
MAX_CALLS = 128
MAX_CALLS_PER_KEY = 16
RESERVED_CALLS = 32
FEW_CALLS = 2
#: Members' calls waiting for their body, in all (a full pool gives way to a
#: caller holding fewer: rpc_slots.BodyWaits).
MAX_AWAITING = 128
#: Datagram calls being handled: a pool of their own, so that no stream call
#: keeps a probe out (the last RESERVED_DATAGRAM_CALLS as above).
MAX_DATAGRAM_CALLS = 256
RESERVED_DATAGRAM_CALLS = 64
#: Non-members' calls (keys are free, addresses are not: counted by source
#: network, an IPv6 /64 or an IPv4 address): waiting for a body (a full pool gives
#: way as members' does) and being handled, each at most MAX_STRANGER_CALLS in
#: all and MAX_STRANGER_CALLS_PER_ADDRESS per network; an IPv6 /48 (a site) has
#: at most MAX_STRANGER_CALLS_PER_SITE in flight.
MAX_STRANGER_CALLS = 32
MAX_STRANGER_CALLS_PER_ADDRESS = 2
MAX_STRANGER_CALLS_PER_SITE = 4
MAX_CONNECTIONS = 1024
MAX_STREAMS_PER_CONNECTION = 32
IDLE_CONNECTION_MS = 5 * 60 * 1000
HANDSHAKE_TIMEOUT_MS = 10_000
#: Seconds a caller has to send its (announced) body once its call is admitted:
#: BODY_BASE_S and one more per BODY_RATE bytes announced, at most READ_TIMEOUT_S
#: (members) or STRANGER_READ_TIMEOUT_S (:func:`body_deadline`).
BODY_BASE_S = 2.0
BODY_RATE = 64 * 1024
READ_TIMEOUT_S = 30.0
STRANGER_READ_TIMEOUT_S = 5.0


def body_deadline(length: int, member: bool) -> float:
    """Seconds to wait for a body of ``length`` bytes (2 s for a small one, 18 s for 1 MiB)."""
    cap = READ_TIMEOUT_S if member else STRANGER_READ_TIMEOUT_S
    return min(cap, BODY_BASE_S + length / BODY_RATE)


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
#: Whether ``caller_address`` was seen on a connection (TCP: the caller answered
#: from it), not as a UDP source address, which anyone can forge. Set with it.
caller_address_verified: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "caller_address_verified", default=False
)
#: The WireGuard key the caller meant to reach (``x-smeg-to``), set while a handler
#: runs; ``None`` if it did not say. A server given ``is_ours`` refuses a call
#: meant for a key not its own (two records may name one endpoint and TLS
#: fingerprint: a dead member's calls were answered by the node it named); for
#: servers that host several identities (the test swarm,
#: ``smegmesh.testbed.swarm``), it routes the call. Not in the signature, which
#: names the server's TLS fingerprint (shared by such a server); the header
#: travels inside TLS to the pinned server, so no one else can change it.
callee_key: contextvars.ContextVar[bytes | None] = contextvars.ContextVar(
    "callee_key", default=None
)


def _callee(md: dict[str, str | bytes]) -> bytes | None:
    """The ``x-smeg-to`` routing hint: a 32-byte key, or None (absent or malformed)."""
    to = md.get("x-smeg-to")
    if to is None or len(to) != 64:
        return None
    try:
        return _b(to)
    except ValueError:
        return None


def parse_grpc_peer(peer: str) -> str | None:
    """``ipv6:[2001:db8::5]:4000`` / ``ipv4:192.0.2.1:4000`` -> the address."""
    kind, _, rest = peer.partition(":")
    rest = urllib.parse.unquote(rest)
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].partition("]")[0].split("%")[0]
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return None


Handler = Callable[[bytes, bytes], Awaitable[bytes]]
"""``handler(caller_wg_key, request_body) -> reply_body``; raise ``Refused`` to refuse."""


class _Reject(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Caller:
    """An authenticated caller: its key, whether a member, and whom its calls
    count against: the key (a member), or its /64 and /48 (a non-member)."""

    key: bytes
    member: bool
    owner: Hashable
    site: str

    @classmethod
    def of(cls, key: bytes, member: bool, addr: str) -> _Caller:
        if member:
            return cls(key, True, key, "")
        net, site = source_networks(addr)
        return cls(key, False, net, site)


class RpcServer:
    """Serves the node-to-node method on ``host:port`` with TLS.

    ``is_member(key)`` tells whether an authenticated caller is a member of one
    of our meshes (default: everyone is); non-members get the stranger limits.
    ``is_ours(key)``: whether we are that key; a call whose ``x-smeg-to`` names
    another key (or is malformed) is refused (default: no check; a caller
    that does not say is served).
    """

    def __init__(
        self,
        tls: TlsIdentity,
        handler: Handler,
        is_member: Callable[[bytes], bool] | None = None,
        refusals: RateLog | None = None,
        *,
        is_ours: Callable[[bytes], bool] | None = None,
        datagram_keys: DatagramKeys | None = None,
        datagram_stats: DatagramStats | None = None,
    ) -> None:
        self._tls = tls
        self._fp = tls.fingerprint
        self._handler = handler
        self._is_member = is_member or (lambda _k: True)
        self._is_ours = is_ours
        self._server: grpc.aio.Server | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.refusals = refusals or RateLog(log, "refused")
        #: the slots of calls in flight (``daemon/rpc_slots.py``): per key, any
        #: phase; members' calls waiting for their body, then being handled;
        #: non-members' likewise, by source network (/64; their calls in flight
        #: by /48 too: rpc_slots.source_networks); datagram calls
        self._keys = Slots(UNBOUNDED, MAX_CALLS_PER_KEY)
        self._waits = BodyWaits(MAX_AWAITING, MAX_CALLS_PER_KEY)
        self._handling = Slots(MAX_CALLS, MAX_CALLS_PER_KEY, RESERVED_CALLS, FEW_CALLS)
        self._stranger_waits = BodyWaits(MAX_STRANGER_CALLS, MAX_STRANGER_CALLS_PER_ADDRESS)
        self._strangers = Slots(MAX_STRANGER_CALLS, MAX_STRANGER_CALLS_PER_ADDRESS)
        self._sites = Slots(UNBOUNDED, MAX_STRANGER_CALLS_PER_SITE)
        self.datagram_calls = Slots(
            MAX_DATAGRAM_CALLS, MAX_CALLS_PER_KEY, RESERVED_DATAGRAM_CALLS, FEW_CALLS
        )
        #: bytes and calls a member may send us (``daemon/member_budget.py``)
        self.budget = MemberBudget()
        #: the datagram path (``daemon/rpc_dgram.py``): who key ids name (None:
        #: no datagrams, no UDP socket)
        self._datagram_keys = datagram_keys
        self._datagram_stats = datagram_stats
        self.datagrams: DatagramServer | None = None
        #: calls answered, by ("in", message type, "stream" or "datagram")
        self.transport_calls: Counter[tuple[str, str, str]] = Counter()

    @property
    def calls_in_flight(self) -> int:
        """Calls held, stream (any phase) and datagram."""
        return self._keys.n + self.datagram_calls.n

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (TCP for gRPC, UDP on the same number for
        datagrams). With port 0 ("any"), a port whose UDP twin is taken is given
        back and another is tried, so that "any port" means one where both work."""
        for _ in range(ANY_PORT_TRIES if port == 0 else 1):
            server, bound = await self._listen(host, port)
            self._server, self.port = server, bound
            if self._datagram_keys is None:
                break
            self.datagrams = await start_datagram_server(
                self,
                host,
                bound,
                self._datagram_keys,
                self._datagram_stats,
                quiet=port == 0,
            )
            if self.datagrams is not None or port != 0:
                break
            await server.stop(0)
            self._server = None
        else:  # every "any" port tried had its UDP twin taken: gRPC alone, as warned
            self._server, bound = await self._listen(host, port)
            self.port = bound
            log.warning(
                "no port free for both TCP and UDP on %s: node-to-node calls use the gRPC "
                "stream only",
                host,
            )
        self._flusher = asyncio.create_task(self._flush_loop())
        return bound

    async def _listen(self, host: str, port: int) -> tuple[grpc.aio.Server, int]:
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
            bound = server.add_secure_port(bind, creds)
        except RuntimeError:  # grpc's "Failed to bind": no errno to pass on
            bound = 0
        if not bound:
            raise OSError(
                f"cannot listen on {bind} (gRPCPort): address already in use or not available"
            )
        await server.start()
        return server, bound

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refusals.interval_s)
            self.refusals.flush()

    async def stop(self, grace: float = 0.5) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self.datagrams is not None:
            self.datagrams.close()
            self.datagrams = None
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

    def _check_callee(self, md: dict[str, str | bytes]) -> None:
        """A call meant for another node (``x-smeg-to``) is refused, before any crypto."""
        if self._is_ours is None or "x-smeg-to" not in md:
            return
        to = _callee(md)
        if to is None or not self._is_ours(to):
            raise _Reject(grpc.StatusCode.PERMISSION_DENIED, "meant for another node (x-smeg-to)")

    def _admit(self, c: _Caller, length: int) -> None:
        """The per-caller limits before the body is read (raises ``_Reject``);
        the call holds its key's slot (and a non-member's, its site's) when it returns."""
        if not self._keys.room(c.key):
            raise _Reject(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls from one key")
        if not c.member:
            if length > MAX_STRANGER_MESSAGE:
                raise _Reject(grpc.StatusCode.PERMISSION_DENIED, "not a member: too large")
            if not self._sites.room(c.site) or not self._strangers.room(c.owner):
                raise _Reject(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls (not a member)")
            self._sites.enter(c.site)
        elif not self._handling.room(c.key):
            raise _Reject(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls in total")
        self._keys.enter(c.key)

    def _release(self, c: _Caller) -> None:
        self._keys.leave(c.key)
        if not c.member:
            self._sites.leave(c.site)

    async def _read_body(self, context: grpc.aio.ServicerContext, c: _Caller, length: int) -> bytes:
        """The one request message, within :func:`body_deadline`; the call waits
        in a :class:`BodyWaits` meanwhile, and may have to give way."""
        waits = self._waits if c.member else self._stranger_waits
        give_way = waits.admit(c.owner)
        if give_way is None:
            raise _Reject(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls awaiting a body")
        read = asyncio.ensure_future(context.read())
        try:
            await asyncio.wait(
                (read, give_way),
                timeout=body_deadline(length, c.member),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waits.leave(c.owner, give_way)
            if not read.done():  # a caller that never sends its body holds no slot for long
                read.cancel()
        if not read.done() or read.cancelled():
            if give_way.done() and not give_way.cancelled():
                raise _Reject(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "gave way (calls awaiting a body)"
                )
            raise _Reject(grpc.StatusCode.DEADLINE_EXCEEDED, "body not sent in time")
        body = read.result()
        if type(body) is not bytes or len(body) != length:
            raise _Reject(grpc.StatusCode.INVALID_ARGUMENT, "body length mismatch")
        return body

    async def _handle(self, c: _Caller, body: bytes) -> bytes:
        """Run the handler in a slot of :attr:`_handling` (non-members: :attr:`_strangers`)."""
        slots = self._handling if c.member else self._strangers
        if not slots.room(c.owner):
            raise _Reject(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls in total")
        slots.enter(c.owner)
        try:
            return await self._handler(c.key, body)
        finally:
            slots.leave(c.owner)

    async def _call(self, requests: object, context: grpc.aio.ServicerContext) -> bytes:
        peer = context.peer()
        parsed = parse_grpc_peer(peer)
        addr = parsed or peer
        caller: _Caller | None = None
        try:
            md = {k: v for k, v in (context.invocation_metadata() or ())}
            self._check_callee(md)
            wg_key, digest, length = self._authenticate(md)
            c = _Caller.of(wg_key, self._is_member(wg_key), addr)
            self._admit(c, length)
            caller = c
            over = self.budget.charge(wg_key, length) if c.member else None
            if over is not None:
                # held a while in one of its key's slots first: refused at once, a
                # member sending without end made 11,666 calls in 12 s, each costing us
                await asyncio.sleep(OVER_BUDGET_DELAY_S)
                raise _Reject(grpc.StatusCode.RESOURCE_EXHAUSTED, over)
            body = await self._read_body(context, c, length)
            if hashlib.sha256(body).digest() != digest:
                raise _Reject(grpc.StatusCode.UNAUTHENTICATED, "body hash mismatch")
            self.transport_calls["in", message_name(body) or "malformed", "stream"] += 1
            caller_address.set(parsed)
            caller_address_verified.set(True)
            callee_key.set(_callee(md))
            try:
                return await self._handle(c, body)
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
            if caller is not None:
                self._release(caller)
        raise AssertionError("unreachable")

    @staticmethod
    def _set_context(address: str | None, callee: bytes | None) -> None:
        """The context variables a handler reads (run in the handler task's context).

        For a datagram: its UDP source address, which is not verified.
        """
        caller_address.set(address)
        caller_address_verified.set(False)
        callee_key.set(callee)
