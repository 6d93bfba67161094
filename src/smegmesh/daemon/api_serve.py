"""Serving the API: uvicorn on the control socket and on TCP, idle-cheap and bounded."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
import stat
from collections.abc import Generator
from pathlib import Path as FsPath
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from smegmesh.core.endpoint import listen_error
from smegmesh.daemon.config.files import group_id

__all__ = ["TCP_CONCURRENCY", "ApiServer", "serve_tcp", "serve_unix"]

log = logging.getLogger("smegmesh.daemon.api")

#: Requests served at once on the TCP API; more are answered 503.
TCP_CONCURRENCY = 64


class _Server(uvicorn.Server):
    """uvicorn server that leaves signal handling to the daemon and idles cheaply.

    uvicorn's own main loop wakes ten times a second to poll ``should_exit``;
    an idle smegd spent a third of its CPU there. This one wakes once a second
    (to refresh the ``Date`` header, as uvicorn does) or at once on
    :meth:`request_exit`.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit = asyncio.Event()

    def request_exit(self) -> None:
        self.should_exit = True
        self._exit.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        counter = 0  # on_tick refreshes the Date header when counter % 10 == 0
        while not await self.on_tick(counter):
            counter += 10
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit.wait(), 1.0)


#: Seconds a TCP connection may take to send a request (head and body), or idle between them.
HEADER_TIMEOUT_S = 10.0


class _H11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing connections that send no request in time.

    uvicorn only times out idle keep-alive connections: one that never sends
    a complete request head (or trickles it), or sends a head and never the
    body it announces, would hold one of the :data:`TCP_CONCURRENCY` places
    forever, and that many would lock every client out (no token is needed:
    ``/v1/health`` and the dashboard's login read a body before any check).
    Every :data:`HEADER_TIMEOUT_S` a connection that still owes part of a
    request is closed if no request was answered on it meanwhile; one whose
    request is all in (an event stream, a slow answer) is left alone.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._answered = 0
        self._seen = 0
        self._watch = self.loop.call_later(HEADER_TIMEOUT_S, self._check_progress)

    def on_response_complete(self) -> None:
        self._answered += 1
        super().on_response_complete()

    def _check_progress(self) -> None:
        if self.transport.is_closing():
            return
        owes = self.conn.their_state in (h11.IDLE, h11.SEND_BODY)  # a head, or a body
        if owes and self._answered == self._seen:
            self.transport.close()  # no whole request within the timeout
            return
        self._seen = self._answered
        self._watch = self.loop.call_later(HEADER_TIMEOUT_S, self._check_progress)

    def connection_lost(self, exc: Exception | None) -> None:
        self._watch.cancel()
        super().connection_lost(exc)


class ApiServer:
    """A running API listener; ``await stop()`` to close it."""

    def __init__(self, server: _Server, task: asyncio.Task[None], path: FsPath | None):
        self._server = server
        self._task = task
        self.path = path

    @property
    def running(self) -> bool:
        return not self._task.done()

    @property
    def tls(self) -> bool:
        """Whether it serves HTTPS."""
        return self._server.config.ssl is not None

    def reload_tls(self, certificate: str | os.PathLike[str], key: str | os.PathLike[str]) -> None:
        """Serve this certificate and key from the next connection on (a renewal).

        The running context loads them in place (OpenSSL hands each new
        connection the context's current pair), once a context of their own
        took them: a pair that does not load (``ssl.SSLError``, an ``OSError``)
        leaves the old one, not half of each.
        """
        ctx = self._server.config.ssl
        if ctx is None:
            raise ValueError("the TCP API serves plain HTTP")
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certificate, key)
        ctx.load_cert_chain(certificate, key)

    async def stop(self) -> None:
        self._server.request_exit()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def wait(self) -> None:
        """Until the server stops (it only stops through :meth:`stop`)."""
        await asyncio.shield(self._task)


async def _start(
    app: FastAPI, sock: socket.socket, path: FsPath | None, **options: Any
) -> ApiServer:
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
        proxy_headers=False,
        server_header=False,
        **options,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="api-server")
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # raises the startup error
            raise RuntimeError("API server exited during startup")
        await asyncio.sleep(0.01)
    return ApiServer(server, task, path)


def _clear_stale_socket(path: FsPath) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "exists and is not a socket (remove it, or give another path)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        os.unlink(path)  # nobody listening: stale socket of a dead daemon
    else:
        raise OSError(errno.EADDRINUSE, "in use (another smegd is running?)")
    finally:
        probe.close()


async def serve_unix(
    app: FastAPI, path: str | os.PathLike[str], mode: int = 0o600, group: str | None = None
) -> ApiServer:
    """Serve ``app`` on unix socket ``path`` with ``mode`` (0660 and ``group`` if given).

    Race-free: the socket's mode (and group) is set after ``bind()`` but before
    ``listen()``, and until ``listen()`` every ``connect()`` is refused; the
    inode's mode is also set before ``bind()`` so the file never appears wider.
    A stale socket left by a dead daemon is replaced; a live one is an error.
    """
    gid = -1
    if group is not None:  # checked with the configuration; gone since: one line, no traceback
        try:
            gid = group_id(group)
        except ValueError as e:
            raise OSError(f"controlSocketGroup: {e}") from None
        if mode == 0o600:
            mode = 0o660
    p = FsPath(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_socket(p)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(OSError):
            os.fchmod(sock.fileno(), mode)  # Linux: bind() creates the file with this mode
        sock.bind(str(p))
        os.chmod(p, mode)
        if gid != -1:
            os.chown(p, -1, gid)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(p)
        raise
    # listen() happens in loop.create_server(sock=...)
    return await _start(app, sock, p)


async def serve_tcp(
    app: FastAPI,
    host: str,
    port: int,
    *,
    tls_certificate: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    key: str | None = None,
) -> ApiServer:
    """Serve ``app`` on TCP ``host:port`` (pass a token to :func:`create_app`!).

    With ``tls_certificate`` and ``tls_key`` (PEM files) it serves HTTPS.
    At most :data:`TCP_CONCURRENCY` requests are served at once (more: 503).
    A bind that fails is an ``OSError`` naming ``key``, the configuration key
    of the address (``cannot listen on HOST:PORT (apiListen): …``).
    """
    if (tls_certificate is None) != (tls_key is None):
        raise ValueError("apiTlsCertificate and apiTlsKey go together")
    options: dict[str, Any] = {"limit_concurrency": TCP_CONCURRENCY, "http": _H11}
    if tls_certificate is not None:
        options.update(ssl_certfile=tls_certificate, ssl_keyfile=tls_key)
    try:
        sock = await _bound_tcp(host, port)
    except OSError as e:
        raise listen_error(key, host, port, e) from None
    return await _start(app, sock, None, **options)


async def _bound_tcp(host: str, port: int) -> socket.socket:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
