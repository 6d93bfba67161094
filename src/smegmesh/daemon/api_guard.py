"""What stands before the API's routes: the token and body-size guard, the JSON errors.

An outer guard (:class:`_Guard`) checks the bearer token from the request's
headers and the body's size before any route runs; :class:`_CatchAll` turns
an unexpected exception into a JSON 500; :func:`add_error_handlers` makes
every error ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smegmesh.daemon.api_head import HeadAsGet
from smegmesh.daemon.config.errors import request_error
from smegmesh.daemon.service import ServiceError
from smegmesh.daemon.ui import SessionStore, session_allows

__all__ = ["OPEN_PATHS", "add_error_handlers"]

log = logging.getLogger("smegmesh.daemon.api")

#: Paths answered without the bearer token (status only, no mesh data).
OPEN_PATHS = frozenset({"/v1/health"})


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message}},
    )


def _json_type(ctype: str) -> bool:
    """Whether FastAPI takes a body of this Content-Type as JSON (``application/json``,
    ``application/*+json``)."""
    main = ctype.split(";", 1)[0].strip().lower()
    return main == "application/json" or (
        main.startswith("application/") and main.endswith("+json")
    )


def _validation_message(exc: RequestValidationError) -> str:
    return request_error(exc.errors())


class _CatchAll:
    """ASGI middleware: an unexpected exception becomes a JSON 500, logged here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def _send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, _send)
        except ClientDisconnect:  # the client left mid-body: nobody to answer, nothing wrong
            log.debug("API: client left during %s %s", scope.get("method"), scope.get("path"))
        except Exception:
            log.exception("API: unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                resp = _error(500, "internal", "internal error in smegd (see its log)")
                await resp(scope, receive, send)


def _auth_and_length(scope: Scope) -> tuple[bytes, bytes | None]:
    """The request's (first) Authorization header and its Content-Length, if any."""
    auth = b""
    length: bytes | None = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and not auth:
            auth = value
        elif name == b"content-length":
            length = value
    return auth, length


class _Guard:
    """The checks made before a request reaches the app: token, then body size.

    Pure ASGI, outside every other layer: a refused request never reaches
    FastAPI, and its body is never read. An accepted body (at most
    ``max_body`` bytes) is read here and handed to the app in one piece.
    A dashboard session cookie (``/ui/``, see ``daemon/ui.py``) stands for the
    token; the dashboard's own pages (login form, assets) are open.
    """

    def __init__(self, app: ASGIApp, token: str | None, max_body: int) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_body = max_body
        #: the dashboard's session store, once mounted (``mount_ui``)
        self.ui_sessions: SessionStore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        auth, length = _auth_and_length(scope)
        authenticated = self.expected is None or hmac.compare_digest(auth, self.expected)
        path = scope.get("path", "")
        if not authenticated and self.ui_sessions is not None:
            authenticated = session_allows(Request(scope), self.ui_sessions)
            if not authenticated and (path == "/ui" or path.startswith("/ui/")):
                await self.app(scope, receive, send)  # the login form and its assets
                return
        if not authenticated and path not in OPEN_PATHS:
            resp = _error(401, "unauthorized", "missing or wrong bearer token")
            resp.headers["WWW-Authenticate"] = "Bearer"
            resp.headers["Connection"] = "close"
            await resp(scope, receive, send)
            return
        scope.setdefault("state", {})["authenticated"] = authenticated
        if length is not None:
            if not length.isdigit():
                await _error(400, "bad_request", "invalid Content-Length")(scope, receive, send)
                return
            if int(length) > self.max_body:
                await self._too_large(scope, receive, send)
                return
        body = await self._read_body(scope, receive, send)
        if body is None:
            return
        replayed = False

        async def _receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, _receive, send)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytearray | None:
        """The whole body (at most ``max_body`` bytes); None when answered or the client left."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await self._too_large(scope, receive, send)
                return None
            if not message.get("more_body", False):
                return body

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = _error(413, "body_too_large", f"request body larger than {self.max_body} bytes")
        resp.headers["Connection"] = "close"
        await resp(scope, receive, send)


class _App(FastAPI):
    """FastAPI behind a :class:`_Guard` (see the module's docstring), HEAD taken as
    GET outside both (``api_head.HeadAsGet``: a HEAD is guarded as its GET)."""

    def __init__(self, *, token: str | None, max_body: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.smeg_token = token
        self._guard = _Guard(super().__call__, token, max_body)
        self._outer = HeadAsGet(self._guard)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._outer(scope, receive, send)

    def set_token(self, token: str) -> None:
        """A new bearer token (a reload), at once: the old one opens nothing any more,
        nor does a dashboard session opened with it (they all end)."""
        self.smeg_token = token
        self._guard.expected = f"Bearer {token}".encode()
        if self._guard.ui_sessions is not None:
            self._guard.ui_sessions.clear()


def add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON: service errors with their status, 422 naming the field, 404/405."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        resp = _error(exc.status, exc.code, exc.message)
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        ctype = request.headers.get("content-type", "")
        if ctype and not _json_type(ctype) and any(e["loc"][:1] == ("body",) for e in exc.errors()):
            # FastAPI reads a body of another type as no object at all ("body: Input
            # should be a valid dictionary..."): say what to send instead
            shown = " ".join(ctype.split())[:100]
            msg = "invalid request: body: send JSON with Content-Type: application/json"
            return _error(422, "invalid_request", f"{msg} (got {shown})")
        return _error(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            # FastAPI's words for a body that is not UTF-8: like any body not JSON
            return _error(422, "invalid_request", "invalid request: body: not JSON in UTF-8")
        if exc.status_code == 404:
            # Never show routes to the user: a 404 here is almost always an id
            # that could not be part of a URL (e.g. with a '/').
            message = "not found: the request names no resource smegd knows (check the ids given)"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        resp = _error(exc.status_code, codes.get(exc.status_code, "http_error"), message)
        resp.headers.update(exc.headers or {})  # e.g. Allow on 405 (RFC 9110)
        return resp
