"""The node-to-node RPC client: a bounded pool of pinned channels, signed calls,
and the back-off per endpoint (``daemon/transport.py`` describes the design).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from smegmesh.core.endpoint import join_host_port, split_host_port
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.wire import message_name
from smegmesh.daemon.ratelog import RateLog
from smegmesh.daemon.rpc_backoff import EndpointBackoff
from smegmesh.daemon.rpc_common import (
    FULL_METHOD,
    MAX_MESSAGE,
    TLS_NAME,
    RpcError,
    call_metadata,
    failure_reason,
)
from smegmesh.daemon.rpc_dgram_client import DatagramClient
from smegmesh.daemon.rpc_tls import fetch_certificate
from smegmesh.wg.resolver import literal_only

log = logging.getLogger("smegmesh.daemon.transport")  # one logger for the transport


_GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.ssl_target_name_override", TLS_NAME),
    ("grpc.keepalive_time_ms", 30_000),
]


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
class _Connecting:
    """A channel being opened: the task, the calls waiting for it, the channel once made."""

    task: asyncio.Task[None] | None = None
    waiting: int = 0
    pooled: _Pooled | None = None


def _retrieved(task: asyncio.Task[None]) -> None:
    """A connection attempt's failure is its callers' (or nobody's, if they gave up)."""
    if not task.cancelled():
        task.exception()


@dataclass
class _Pooled:
    channel: grpc.aio.Channel
    used: float
    calls: int = 0


class RpcClient:
    """Calls other nodes over pinned channels, one per (endpoint, fingerprint).

    The channels form a bounded pool: at most ``max_channels`` connections are
    open, the least recently used idle one is closed to make room, and one
    without a call for ``channel_idle_s`` is closed (swept on later calls). A
    closed channel is reopened, pin checked again, on the next call to that
    member. The cap counts every outgoing connection: open channels, the
    certificate fetch of one being opened, and one still closing. A channel
    with a call on it is never closed to make room: when every connection is
    busy, a new one waits for a call to end (within the call's timeout) rather
    than exceed the cap.
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
        datagrams: DatagramClient | None = None,
        resolve: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        if max_channels < 1:
            raise ValueError("max_channels must be at least 1")
        self._identity = identity
        self._timeout = timeout
        #: a member's endpoint name to an address, in the resolver's own threads
        #: (``EndpointResolver.resolve_async``); None: the event loop's default
        #: pool resolves it while connecting, a thread held for as long as DNS takes
        self._resolve = resolve
        self._max_channels = max_channels
        self._idle_s = channel_idle_s
        self._clock = clock
        #: Least recently used first.
        self._channels: OrderedDict[tuple[str, bytes], _Pooled] = OrderedDict()
        #: Per key being connected: the one task connecting it (its callers wait
        #: for it within their own time; it goes on with the client's timeout)
        self._connects: dict[tuple[str, bytes], _Connecting] = {}
        self._closing: set[asyncio.Task[None]] = set()
        #: connections being opened (a slot reserved: certificate fetch, channel setup)
        self._connecting = 0
        #: callers waiting for a slot; woken when a call ends or a connection closes
        self._waiters: list[asyncio.Future[None]] = []
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
        self.slot_waits = 0  # new connections that waited for a busy one to free
        #: the datagram path for small calls (``daemon/rpc_dgram.py``; None: stream only)
        self.datagrams = datagrams
        #: calls made, by ("out", message type, "stream" or "datagram")
        self.transport_calls: Counter[tuple[str, str, str]] = Counter()

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

    @property
    def connections(self) -> int:
        """Outgoing connections counted against the cap (open, opening, closing)."""
        return len(self._channels) + self._connecting + len(self._closing)

    def _wake(self) -> None:
        """A slot may have freed: let the waiters look again."""
        waiters, self._waiters = self._waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    async def _reserve(self, endpoint: str, timeout: float) -> None:
        """Wait until one more connection fits under the cap, then count it as opening.

        Idle channels are closed to make room (least recently used first);
        busy ones are not: the caller waits for a call to end, up to ``timeout``.
        """
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            self._make_room(self._max_channels - 1 - self._connecting - len(self._closing))
            if self.connections < self._max_channels:
                self._connecting += 1
                return
            left = max(0.0, deadline - time.monotonic())
            if self._closing:  # an idle one is closing: its slot frees in a moment
                await asyncio.wait(set(self._closing), timeout=left)
            else:
                if not waited:
                    waited = True
                    self.slot_waits += 1
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fut, left)
            if time.monotonic() >= deadline and self.connections >= self._max_channels:
                raise RpcError(
                    f"{endpoint}: all {self._max_channels} connections busy "
                    f"(maxChannels) for {timeout:g} s"
                )

    async def _channel(self, endpoint: str, fp: bytes, deadline: float) -> _Pooled:
        """The pooled channel for the key, with one call counted on it, by
        ``deadline`` (``time.monotonic()``): waiting for room under the cap and
        for the connection count against the call's own time.

        One task connects a key (:meth:`_connect`), with the client's timeout:
        a call that gives up first leaves it to go on, so that its outcome (a
        channel, or a failure backed off) is not lost (a relayed probe has 0.4
        s; a fetch bounded by that would fail and back off a slow node).
        """
        key = (endpoint, fp)
        while True:
            p = self._take(key)
            if p is not None:
                return p
            c = self._connects.get(key)
            if c is None:
                wait = self.backoff.wait(key)
                if wait > 0:  # a connection failed meanwhile
                    raise RpcError(
                        f"{endpoint}: backing off ({wait:.0f} s) after failed connections"
                    )
                host, port = split_host_port(endpoint)
                await self._reserve(endpoint, max(0.0, deadline - time.monotonic()))
                if key in self._channels or key in self._connects:  # made while we waited
                    self._connecting -= 1
                    self._wake()
                    continue
                c = self._connects[key] = _Connecting()
                c.task = asyncio.create_task(self._connect(key, host, port, c))
                c.task.add_done_callback(_retrieved)
            return await self._await_connection(endpoint, c, deadline)

    async def _await_connection(self, endpoint: str, c: _Connecting, deadline: float) -> _Pooled:
        """The channel ``c`` makes, with this call counted on it, by ``deadline``."""
        assert c.task is not None
        c.waiting += 1
        try:
            await asyncio.wait_for(asyncio.shield(c.task), max(0.0, deadline - time.monotonic()))
        except BaseException as e:
            if c.pooled is not None:  # made, with this call counted on it
                self._release(c.pooled)
            else:
                c.waiting -= 1
            if isinstance(e, TimeoutError):
                raise RpcError(f"{endpoint}: not connected in the call's time") from None
            raise
        assert c.pooled is not None
        return c.pooled

    async def _connect(self, key: tuple[str, bytes], host: str, port: int, c: _Connecting) -> None:
        """Open the channel for ``key`` (its place under the cap reserved), with a
        call counted on it for each caller still waiting (idle if none is)."""
        endpoint, fp = key
        try:
            host, port = await self._address(endpoint, fp, host, port)
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
            ch = grpc.aio.secure_channel(target, creds, options=_GRPC_OPTIONS)
            c.pooled = self._channels[key] = _Pooled(ch, self._clock(), calls=c.waiting)
        finally:
            self._connecting -= 1
            self._wake()
            if self._connects.get(key) is c:
                del self._connects[key]

    async def _address(self, endpoint: str, fp: bytes, host: str, port: int) -> tuple[str, int]:
        """``host``, ``port`` with the host an address (a name resolved by ``resolve``).

        A member chooses its endpoint's name, and its nameserver how long a lookup
        takes: that wait holds none of the threads the daemon shares.
        """
        if self._resolve is None or literal_only(endpoint) is not None:
            return host, port
        literal = await self._resolve(endpoint)
        if literal is None:
            self._failed(endpoint, fp, "its name does not resolve")
            raise RpcError(f"cannot reach {endpoint}: its name does not resolve")
        return split_host_port(literal)

    def _release(self, p: _Pooled) -> None:
        """A call on ``p`` ended."""
        p.calls -= 1
        p.used = self._clock()
        if not p.calls and self._waiters:
            self._wake()

    async def _fetch(self, endpoint: str, host: str, port: int, fp: bytes) -> bytes:
        """The server's certificate, checked against the pin and remembered by it."""
        self.attempts += 1
        try:
            der = await fetch_certificate(host, port, self._timeout, self.fetch_wire)
        except (OSError, TimeoutError, ssl.SSLError, RpcError) as e:
            self._failed(endpoint, fp, failure_reason(e))
            raise RpcError(f"cannot reach {endpoint}: {str(e) or failure_reason(e)}") from e
        if hashlib.sha256(der).digest() != fp:
            self._failed(endpoint, fp, "not the certificate its record pins")
            raise RpcError(f"{endpoint} presented an unexpected TLS certificate")
        self._certs[fp] = der
        if len(self._certs) > MAX_CACHED_CERTIFICATES:
            self._certs.popitem(last=False)
        return der

    def _close_later(self, channel: grpc.aio.Channel) -> asyncio.Task[None]:
        """Close ``channel``; its connection counts against the cap until closed."""
        task = asyncio.create_task(channel.close(None))
        self._closing.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._closing.discard(t)
            self._wake()

        task.add_done_callback(done)
        return task

    def _evict(self, key: tuple[str, bytes]) -> None:
        p = self._channels.pop(key)
        self.evictions += 1
        self._close_later(p.channel)

    def _make_room(self, limit: int) -> None:
        """Close least recently used idle channels until at most ``limit`` are open.

        A channel with a call on it is left open (fewer may be closed than asked).
        """
        if len(self._channels) <= limit:
            return
        for key in [k for k, p in self._channels.items() if not p.calls]:
            if len(self._channels) <= limit:
                return
            self._evict(key)

    def sweep(self) -> None:
        """Close the channels that have had no call for ``channel_idle_s``."""
        cutoff = self._clock() - self._idle_s
        due = []
        for key, p in self._channels.items():
            if p.used > cutoff:
                break  # ordered by last use: the rest are newer
            if not p.calls:
                due.append(key)
        for key in due:
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
        Small idempotent calls go by datagram when ``datagrams`` is set and
        ``to`` is known, falling back to the stream (``daemon/rpc_dgram.py``).
        """
        # Every call sweeps, by datagram or stream (O(1) unless a channel is
        # due): once a node's calls all go by datagram, channels opened for a
        # bulk transfer still close.
        self.sweep()
        dg = self.datagrams
        target = dg.target(endpoint, to, body) if dg is not None and to is not None else None
        if dg is None or target is None or to is None:
            return await self._stream_call(endpoint, fp, body, timeout, to=to, identity=identity)
        wait = self.backoff.wait((endpoint, fp))  # no datagrams to an endpoint backed off
        if wait > 0:
            raise RpcError(f"{endpoint}: backing off ({wait:.0f} s) after failed connections")
        t = timeout or self._timeout
        kind = message_name(body) or "unknown"
        used = ["datagram"]

        def stream(left: float) -> Any:
            used[0] = "stream"
            return self._stream_call(endpoint, fp, body, left, to=to, identity=identity)

        reply = await dg.call(target, endpoint, to, body, t, identity or self._identity, stream)
        if used[0] == "datagram":  # answered by datagram (the stream counts its own)
            self.transport_calls["out", kind, "datagram"] += 1
            self.backoff.ok((endpoint, fp))
        return reply

    async def _stream_call(
        self,
        endpoint: str,
        fp: bytes,
        body: bytes,
        timeout: float | None = None,
        *,
        to: bytes | None = None,
        identity: NodeIdentity | None = None,
    ) -> bytes:
        """The call over the pinned gRPC channel (see :meth:`call`)."""
        self.transport_calls["out", message_name(body) or "unknown", "stream"] += 1
        wait = self.backoff.wait((endpoint, fp))
        if wait > 0:
            raise RpcError(f"{endpoint}: backing off ({wait:.0f} s) after failed connections")
        deadline = time.monotonic() + (timeout or self._timeout)
        pooled = await self._channel(endpoint, fp, deadline)
        md = call_metadata(identity or self._identity, fp, body, to)
        try:
            reply: bytes = await pooled.channel.unary_unary(FULL_METHOD)(
                body, metadata=md, timeout=max(0.001, deadline - time.monotonic())
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                await self._drop((endpoint, fp), pooled)
                self._failed(endpoint, fp, "unavailable")
            raise RpcError(f"{endpoint}: {e.code().name}: {e.details()}") from e
        finally:
            self._release(pooled)
        self.backoff.ok((endpoint, fp))
        return reply

    async def probe(
        self, endpoint: str, fp: bytes, body: bytes, timeout: float, to: bytes
    ) -> bytes | None:
        """One stream call on a connection of its own, nothing learnt: the reply or None.

        A client's probe through its peer with ``datagrams: false``
        (``daemon/forward_probe.py``): neither pooled nor backed off, and no
        back-off learnt, so a probe is always sent (one skipped for a back-off
        another path earned would count against the peer) and its failure says
        nothing of the member's endpoint. The pin is checked as ever; the connection
        counts against the cap while it is open. IP literals only (a name: None).
        """
        deadline = time.monotonic() + timeout
        if literal_only(endpoint) is None:
            return None  # a name: connecting would resolve it in the loop's shared pool
        try:
            host, port = split_host_port(endpoint)
            await self._reserve(endpoint, timeout)
        except (ValueError, RpcError):
            return None
        ch: grpc.aio.Channel | None = None
        try:
            der = self._certs.get(fp)
            if der is None:
                left = max(0.001, deadline - time.monotonic())  # a slot's wait took some
                fetch = fetch_certificate(host, port, left, self.fetch_wire)
                der = await asyncio.wait_for(fetch, left)
                if hashlib.sha256(der).digest() != fp:
                    return None
                self._certs[fp] = der
                if len(self._certs) > MAX_CACHED_CERTIFICATES:
                    self._certs.popitem(last=False)
            pem = ssl.DER_cert_to_PEM_cert(der).encode()
            creds = grpc.ssl_channel_credentials(root_certificates=pem)
            ch = grpc.aio.secure_channel(join_host_port(host, port), creds, options=_GRPC_OPTIONS)
            md = call_metadata(self._identity, fp, body, to)
            left = max(0.001, deadline - time.monotonic())
            reply: bytes = await ch.unary_unary(FULL_METHOD)(body, metadata=md, timeout=left)
            return reply
        except (OSError, TimeoutError, ssl.SSLError, RpcError, grpc.aio.AioRpcError):
            return None
        finally:
            # closed in a task counted under the cap: a cancel cannot keep the slot
            closing = self._close_later(ch) if ch is not None else None
            self._connecting -= 1
            self._wake()
            if closing is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(closing)

    async def _drop(self, key: tuple[str, bytes], pooled: _Pooled | None = None) -> None:
        p = self._channels.get(key)
        if p is None or (pooled is not None and p is not pooled):
            return  # already replaced by a fresh channel: keep that one
        del self._channels[key]
        await self._close_later(p.channel)

    async def close(self) -> None:
        if self.datagrams is not None:
            self.datagrams.close()
        connects = [c.task for c in self._connects.values() if c.task is not None]
        for t in connects:
            t.cancel()
        await asyncio.gather(*connects, return_exceptions=True)
        for key in list(self._channels):
            await self._drop(key)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
