"""``smegctl ui``: the dashboard on a loopback port, for a node without a TCP API.

A small ASGI app (served by uvicorn on ``127.0.0.1``) that serves the dashboard
from the package (:mod:`smegmesh.daemon.ui`) and forwards the page's API calls
(``/v1/...``, including the ``/v1/events`` stream, and ``/openapi.json``) to
``smegd``'s unix socket.

Access: a loopback TCP port can be reached by every user of the machine, while
the socket is reserved to its owner (mode 0600/0660). So the page is not open:
``smegctl ui`` prints a URL with a random one-time login token; opening it
exchanges the token for a session cookie (``HttpOnly``, ``SameSite=Strict``),
and the token is void from then on. Every request needs the session's key as
well as the cookie, as on the daemon's own ``/ui/`` (a browser sends the cookie
to every port of 127.0.0.1: see :mod:`smegmesh.daemon.ui`). Requests whose
``Host`` is not a loopback name are refused (DNS rebinding).
"""

from __future__ import annotations

import hmac
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from smegmesh.daemon.ui import SESSION_PARAM, SessionStore, create_ui_app, session_allows

__all__ = ["MAX_BODY_BYTES", "OneTimeToken", "create_proxy_app", "loopback_socket"]

#: Largest request body forwarded to smegd (the API's own requests are far smaller).
MAX_BODY_BYTES = 64 * 1024
_REQUEST_HEADERS = ("content-type", "accept", "last-event-id")
_RESPONSE_HEADERS = ("content-type", "cache-control", "allow", "x-accel-buffering")


class OneTimeToken:
    """A random token that is accepted once."""

    def __init__(self) -> None:
        self.value = secrets.token_urlsafe(24)
        self.used = False

    def check(self, candidate: str) -> bool:
        if self.used or not hmac.compare_digest(candidate.encode(), self.value.encode()):
            return False
        self.used = True
        return True


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _body(request: Request) -> bytes | None:
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
        return None
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            return None
    return data


def create_proxy_app(
    socket_path: str, token: OneTimeToken, store: SessionStore | None = None
) -> Starlette:
    """The ``smegctl ui`` app: ``/ui/`` from the package, ``/v1`` forwarded to ``socket_path``."""
    store = store or SessionStore()
    client = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=socket_path),
        base_url="http://smegd",
        timeout=httpx.Timeout(30.0, connect=5.0),
    )

    async def forward(request: Request) -> Response:
        if not session_allows(request, store):
            return _error(401, "unauthorized", "sign in first: open the URL smegctl ui printed")
        body = await _body(request)
        if body is None:
            return _error(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes")
        headers = {k: v for k in _REQUEST_HEADERS if (v := request.headers.get(k)) is not None}
        streaming = request.url.path == "/v1/events"
        timeout: Any = httpx.Timeout(30.0, connect=5.0, read=None) if streaming else None
        req = client.build_request(
            request.method,
            request.url.path,
            params=[(k, v) for k, v in request.query_params.multi_items() if k != SESSION_PARAM],
            content=body or None,
            headers=headers,
            **({"timeout": timeout} if timeout else {}),
        )
        try:
            resp = await client.send(req, stream=True)
        except (httpx.ConnectError, FileNotFoundError, PermissionError):
            return _error(502, "unreachable", f"cannot reach smegd at {socket_path}")
        except httpx.TimeoutException:
            return _error(504, "timeout", "smegd did not answer in time")
        out_headers = {k: v for k in _RESPONSE_HEADERS if (v := resp.headers.get(k)) is not None}

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            except httpx.HTTPError:
                return
            finally:
                await resp.aclose()  # the browser went away: so does the upstream stream

        return StreamingResponse(
            chunks(),
            status_code=resp.status_code,
            headers=out_headers,
            background=BackgroundTask(resp.aclose),
        )

    async def root(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=303)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    routes = [
        Route("/", root, methods=["GET"]),
        Route("/openapi.json", forward, methods=["GET"]),
        Route("/v1/{path:path}", forward, methods=methods),
        Mount("/ui", app=create_ui_app(store, token.check, url_login=True)),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"])],
    )
    app.state.http = client
    return app


def loopback_socket(port: int = 0) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (``port`` 0: a free one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)  # connections queue from now on: the URL may be opened at once
    except BaseException:
        sock.close()
        raise
    return sock


def serve(socket_path: str, sock: socket.socket, token: OneTimeToken) -> None:
    """Run the proxy on ``sock`` until interrupted."""
    import uvicorn

    app = create_proxy_app(socket_path, token)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", server_header=False)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
