"""Host names in peer endpoints, to the IP literals WireGuard takes.

A member may publish its endpoint as a DNS name (a dynamic address). The name
is a member's word, and its nameserver may be slow, gone or the member's own:
one peer's name must never hold up the configuration of the others. So an
:class:`EndpointResolver` looks a name up at most once per ``ttl_s`` (a
failure again after ``retry_s``), in a small pool of its own, and waits for an
answer at most ``timeout_s``, for a new name or one whose answer grew old (so
a changed address is sent as soon as it is asked for), but not for a name
whose last lookup failed: that one is looked up again in the background and
gives None meanwhile. A name it cannot resolve now gives ``None``, and
the backends configure that peer without an endpoint (WireGuard learns it
from the peer's handshakes) and say so (:func:`resolve_ops`): the reconciler
applies it again from its next health check (every 5 s in smegd) until the
name resolves. A lookup that outlives its wait goes on in the pool and its
answer is kept for that next apply.

A failed lookup goes to ``report`` (from the call that waited for it, else
from the next call that reads its failure: in the caller's thread). A member
can publish a new name that does not resolve with each version of its record,
so smegd passes a rate-limited one (daemon/ratelog.py); without one, each
failure is a WARNING here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from smegmesh.core.endpoint import join_host_port, split_host_port
from smegmesh.core.wgdiff import AddPeer, RemovePeer, UpdatePeer, WgOp

__all__ = [
    "EndpointResolver",
    "Report",
    "ResolveFn",
    "SentNames",
    "literal_only",
    "lookup_endpoint",
    "resolve_ops",
]

log = logging.getLogger("smegmesh.wg")

#: getaddrinfo's signature, replaceable in tests.
Lookup = Callable[..., list[tuple[Any, ...]]]
#: Told of a failed lookup: ``(endpoint, why)``.
Report = Callable[[str, str], None]
#: An endpoint to ``host:port`` with an IP literal, or None: leave the endpoint
#: out (:class:`EndpointResolver`; WireGuard learns it from handshakes).
ResolveFn = Callable[[str], str | None]


def _warn(endpoint: str, why: str) -> None:
    log.warning("endpoint %s: %s; peer left without it", endpoint, why)


def _literal(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def literal_only(endpoint: str) -> str | None:
    """``endpoint`` if its host is an IP literal, else None (no lookup)."""
    try:
        host, _port = split_host_port(endpoint)
    except ValueError:
        return None
    return endpoint if _literal(host) else None


def lookup_endpoint(endpoint: str, lookup: Lookup = socket.getaddrinfo) -> str:
    """``host:port`` with an IP literal; resolves a host name (blocking). ``OSError``/
    ``ValueError`` if it cannot."""
    host, port = split_host_port(endpoint)
    if _literal(host):
        return endpoint
    _family, _, _, _, addr = lookup(host, port, type=socket.SOCK_DGRAM)[0]
    return join_host_port(str(addr[0]), port)


def resolve_ops(ops: Sequence[WgOp], resolve: ResolveFn) -> tuple[list[WgOp], list[WgOp]]:
    """``(to send, as applied)`` of ``ops`` for a backend that resolves endpoints.

    To send: each endpoint as an IP literal, or left out when it does not
    resolve now (an update left with nothing to change is dropped). As applied:
    the same with the endpoints as given, or None where left out: what the
    backend's ``apply`` returns, so that a cache of live state built from it
    holds what WireGuard has, and the next diff sends the endpoint again.
    """
    send: list[WgOp] = []
    applied: list[WgOp] = []
    for op in ops:
        if isinstance(op, AddPeer) and op.peer.endpoint is not None:
            ep = resolve(op.peer.endpoint)
            if ep is None:
                op = replace(op, peer=replace(op.peer, endpoint=None))
                send.append(op)
            else:
                send.append(replace(op, peer=replace(op.peer, endpoint=ep)))
        elif isinstance(op, UpdatePeer) and op.endpoint is not None:
            ep = resolve(op.endpoint)
            if ep is None:
                op = replace(op, endpoint=None)
                if op.allowed_ips is None and op.keepalive is None:
                    continue
                send.append(op)
            else:
                send.append(replace(op, endpoint=ep))
        else:
            send.append(op)
        applied.append(op)
    return send, applied


class EndpointResolver:
    """Endpoints to IP literals, never waiting long on one name (module docstring)."""

    def __init__(
        self,
        *,
        timeout_s: float = 1.0,
        ttl_s: float = 60.0,
        retry_s: float = 30.0,
        max_names: int = 1024,
        workers: int = 2,
        clock: Callable[[], float] = time.monotonic,
        lookup: Lookup = socket.getaddrinfo,
        report: Report | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self.max_names = max_names
        self._workers = workers
        self._clock = clock
        self._lookup = lookup
        self._report = report or _warn
        self._lock = threading.RLock()  # a done callback may run inside _start
        #: endpoint -> (answer or None, when it may be looked up again, a failure
        #: of a lookup in the background not reported yet)
        self._known: dict[str, tuple[str | None, float, str | None]] = {}
        self._pending: dict[str, concurrent.futures.Future[str]] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: lookups made (a test and a metric can see names are not looked up per apply)
        self.lookups = 0

    def __call__(self, endpoint: str) -> str | None:
        """``endpoint`` with an IP literal, or None when its name does not resolve now."""
        fut, answer = self._begin(endpoint)
        if fut is None:
            return answer
        try:
            return fut.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            return self._no_answer(endpoint, answer)
        except (OSError, ValueError, UnicodeError) as exc:
            return self._no_answer(endpoint, None, exc)

    async def resolve_async(self, endpoint: str) -> str | None:
        """As a call, but the wait is the event loop's: no thread of the caller's is held
        while the name is looked up (in this resolver's own few threads)."""
        fut, answer = self._begin(endpoint)
        if fut is None:
            return answer
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), self.timeout_s)
        except TimeoutError:
            return self._no_answer(endpoint, answer)
        except (OSError, ValueError, UnicodeError) as exc:
            return self._no_answer(endpoint, None, exc)

    def peek(self, endpoint: str) -> str | None:
        """The answer held for ``endpoint``, never waiting: a name whose answer
        grew old (or a new one) is looked up in the background, and its new
        answer is held for the next call."""
        _fut, answer = self._begin(endpoint, wait=False)
        return answer

    def _no_answer(
        self, endpoint: str, answer: str | None, exc: Exception | None = None
    ) -> str | None:
        """A lookup waited for failed (``exc``) or took too long: reported, ``answer`` given."""
        why = (
            f"does not resolve ({exc})"
            if exc
            else f"no answer from DNS within {self.timeout_s:g} s"
        )
        self._report(endpoint, why)
        return answer

    def _begin(
        self, endpoint: str, *, wait: bool = True
    ) -> tuple[concurrent.futures.Future[str] | None, str | None]:
        """(a lookup to wait for, else None; the answer held, final when there is none to wait).

        A literal is its own answer; a name held and fresh, or failed and looked
        up again in the background, is answered from what is held (a failure
        of the background's reported now); a new name, or an answer grown old,
        is looked up and waited for (at most ``timeout_s``, by the caller), or
        with ``wait`` False looked up in the background (its failure reported
        by the next call that reads it).
        """
        if literal_only(endpoint) is not None:
            return None, endpoint
        now = self._clock()
        with self._lock:
            known = self._known.get(endpoint)
            busy = endpoint in self._pending or len(self._pending) >= self._workers * 4
            if known is None:
                # a lookup that outlived its wait is still out, or the pool is busy: not now
                if busy:
                    return None, None
                fut = self._start(endpoint, waited=wait)
                return (fut if wait else None), None
            answer, until, why = known
            if why is not None:
                self._known[endpoint] = (answer, until, None)
            if now < until or busy or answer is None:
                if now >= until and not busy:
                    # A failure, looked up again in the background: a name that
                    # never resolves, applied again every health check, never
                    # holds the caller.
                    self._start(endpoint, waited=False)
            else:
                # An answer grown old: waited for again (at most timeout_s), so a
                # name whose address changed is sent with its new one.
                fut = self._start(endpoint, waited=wait)
                return (fut if wait else None), answer
        if why is not None:
            self._report(endpoint, why)
        return None, answer

    def _start(self, endpoint: str, *, waited: bool) -> concurrent.futures.Future[str]:
        """Begin a lookup of ``endpoint`` in the pool (called with the lock held).
        Its failure is reported by the caller that ``waited`` for it, else by the
        next call that reads it."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self._workers, thread_name_prefix="smeg-resolve"
            )
        self.lookups += 1
        fut = self._pool.submit(lookup_endpoint, endpoint, self._lookup)
        self._pending[endpoint] = fut
        fut.add_done_callback(lambda f: self._done(endpoint, f, waited))
        return fut

    def _done(self, endpoint: str, fut: concurrent.futures.Future[str], waited: bool) -> None:
        if fut.cancelled():  # closed
            with self._lock:
                self._pending.pop(endpoint, None)
            return
        exc = fut.exception()
        answer = None if exc is not None else fut.result()
        why = None if waited or answer is not None else f"does not resolve ({exc})"
        until = self._clock() + (self.retry_s if answer is None else self.ttl_s)
        with self._lock:
            self._pending.pop(endpoint, None)
            # looked up again: to the end, so eviction takes the name refreshed longest ago
            if self._known.pop(endpoint, None) is None and len(self._known) >= self.max_names:
                self._known.pop(next(iter(self._known)))
            self._known[endpoint] = (answer, until, why)

    def close(self) -> None:
        """Stop the pool (lookups in flight are left to finish on their own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class SentNames:
    """The address each named peer endpoint was sent to WireGuard as, per interface.

    A member may publish its endpoint as a name because its address changes.
    The reconciler's cache holds the name as applied, so its diff sees nothing
    to do when the name's address moves: WireGuard kept the old address until
    the full read (every 300 s), and a client behind NAT, which only WireGuard
    on its side can reach the peer from, had no data path meanwhile (a peer
    that roams is followed by WireGuard only once it sends us a packet).

    :meth:`moved` compares what was sent with what the resolver holds now,
    without waiting (``EndpointResolver.peek``: an answer older than its TTL is
    looked up again in the background), so smegd's health check (every 5 s)
    sees a new address within about a TTL (60 s) and a check. Bounded by the
    peers applied: one entry per peer with a named endpoint that resolved.
    An entry goes with its peer's removal, a literal (or no endpoint) applied
    for it, or, at :meth:`moved`, once the peer's endpoint is no longer wanted as
    that name: a member that stops publishing its name sends the diff no op
    when its endpoint goes to None (learnt from handshakes), or to the address
    WireGuard has already, and its name was looked up once a TTL for nothing.
    """

    def __init__(self, resolver: EndpointResolver) -> None:
        self._resolver = resolver
        #: interface -> peer key -> (endpoint as given, the literal sent for it)
        self._sent: dict[str, dict[bytes, tuple[str, str]]] = {}

    def note(self, interface: str, send: Sequence[WgOp], applied: Sequence[WgOp]) -> None:
        """Record a batch of ``resolve_ops``' output as sent to ``interface``."""
        sent = self._sent.setdefault(interface, {})
        for out, op in zip(send, applied, strict=True):
            if isinstance(op, RemovePeer):
                sent.pop(op.public_key, None)
                continue
            if isinstance(op, AddPeer) and isinstance(out, AddPeer):
                key, given, literal = op.peer.public_key, op.peer.endpoint, out.peer.endpoint
            elif isinstance(op, UpdatePeer) and isinstance(out, UpdatePeer):
                if out.endpoint is None and op.endpoint is None:
                    continue  # the endpoint was not touched (or left out: see resolve_ops)
                key, given, literal = op.public_key, op.endpoint, out.endpoint
            else:
                continue
            if given is None or literal is None or given == literal:
                sent.pop(key, None)  # none, left out (applied again by the reconciler), or an IP
            else:
                sent[key] = (given, literal)
        if not sent:
            self._sent.pop(interface, None)

    def moved(self, interface: str, wanted: Mapping[bytes, str]) -> list[bytes]:
        """Peers of ``interface`` whose endpoint name resolves to another address now.

        ``wanted``: each peer's endpoint as wanted now (a peer with none left
        out). A peer's name no longer wanted is forgotten, not looked up.
        """
        sent = self._sent.get(interface, {})
        for key in [k for k, (given, _) in sent.items() if wanted.get(k) != given]:
            del sent[key]
        if not sent:
            self._sent.pop(interface, None)
        out = []
        for key, (given, literal) in sent.items():
            now = self._resolver.peek(given)
            if now is not None and now != literal:
                out.append(key)
        return out

    def forget(self, interface: str) -> None:
        self._sent.pop(interface, None)
