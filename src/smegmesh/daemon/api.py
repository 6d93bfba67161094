"""The local REST API of ``smegd`` (FastAPI), and helpers to serve it.

``create_app(service)`` builds the app over a :class:`NodeService`. It is served
on the control unix socket (no token; the socket's mode 0600 is the access
control) and, if ``apiListen`` is configured, on TCP with a bearer token.

Before any route runs, an outer guard (:class:`_Guard`) checks the bearer
token from the request's headers (every path but ``/v1/health``, including the
OpenAPI pages) and the body's size: a request without the token is answered
401 before a byte of its body is read, and a body over ``max_body`` bytes is
refused 413 (from its ``Content-Length`` at once, or as soon as a chunked body
passes the limit), so no request can make the daemon buffer more than that.

Every error is JSON ``{"error": {"code": ..., "message": ...}}``: service errors
with their status, validation errors 422 naming the field, unknown routes 404,
and anything unexpected 500 with code ``internal`` (logged, no traceback sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import hmac
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Generator
from pathlib import Path as FsPath
from typing import Annotated, Any, TypeVar

import h11
import uvicorn
from fastapi import Body, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from smegmesh.daemon.api_authority import add_authority_routes
from smegmesh.daemon.api_devices import add_device_routes
from smegmesh.daemon.api_models import (
    SERVICE_KEY_RE,
    AliasRequest,
    AliasResponse,
    DescriptionRequest,
    ErrorResponse,
    GraphFormat,
    InviteRequest,
    InviteResponse,
    JoinRequest,
    MeshDetail,
    MeshIdResponse,
    MeshOptions,
    MeshSummary,
    OkResponse,
    PingRequest,
    PingResponse,
    ProtoCreateRequest,
    ProtoJoinRequest,
    ProtoMesh,
    QueryResponse,
    ServiceValueRequest,
    StatusResponse,
    proto_mesh,
)
from smegmesh.daemon.config import VERSION
from smegmesh.daemon.config.errors import request_error
from smegmesh.daemon.events import KEEPALIVE_S, EventBus, Subscription, TooManySubscribers
from smegmesh.daemon.service import NodeService, ServiceError
from smegmesh.daemon.ui import SessionStore, mount_ui, session_allows
from smegmesh.daemon.views import model_json_bytes

__all__ = [
    "MAX_BODY_BYTES_TCP",
    "MAX_BODY_BYTES_UNIX",
    "ApiServer",
    "create_app",
    "serve_tcp",
    "serve_unix",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest request body on the TCP API (the largest legal one is a few KB).
MAX_BODY_BYTES_TCP = 64 * 1024
#: Largest request body on the unix socket (generous: only a local bug could exceed it).
MAX_BODY_BYTES_UNIX = 1024 * 1024
#: Requests served at once on the TCP API; more are answered 503.
TCP_CONCURRENCY = 64
#: Paths answered without the bearer token (status only, no mesh data).
OPEN_PATHS = frozenset({"/v1/health"})

GRAPH_MEDIA_TYPES: dict[str, str] = {
    "dot": "text/vnd.graphviz; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "Error"},
    "5XX": {"model": ErrorResponse, "description": "Error"},
}


EVENTS_DESCRIPTION = """\
A `text/event-stream` of this node's lifecycle events. Each message is
`id: <seq>`, `event: <type>` and `data: <json>`; the JSON object is
`{"seq", "time", "type", "mesh", "node", "alias", "detail"}` (`node`: the
member's WireGuard key as in `get-mesh`; `mesh`, `node` and `alias` may be
null). Types: `member.joined`, `member.left`, `member.pruned`,
`member.evicted`, `member.returned`, `member.changed` (detail: which of
alias, description, services, role changed, old and new),
`client.reassigned`, `route.changed`, `exit.changed`, `handshake.up`,
`handshake.down`, `wg.peer_added`, `wg.peer_removed`, `mesh.joined`,
`mesh.left`, `config.reloaded`, and `stream.dropped` (`detail.missed`:
events this stream did not get, because the client resumed with a
`Last-Event-ID` older than the buffer of the last 1,024 events, or read too
slowly; its `id` is the last event missed).

Sequence numbers increase per daemon. A client that reconnects with the
`Last-Event-ID` header gets every later event still buffered. `meshid`
keeps the events of that mesh and those of no mesh. A comment line
`: keepalive` comes every 15 s. At most 32 streams at once (503 beyond).
"""

MeshId = Annotated[str, Path(min_length=1, max_length=128, description="Mesh id")]
ServiceKey = Annotated[
    str, Path(pattern=SERVICE_KEY_RE.pattern, description="Service name (1-64 chars)")
]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message}},
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
        except Exception:
            log.exception("API: unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                resp = _error(500, "internal", "internal error in smegd (see its log)")
                await resp(scope, receive, send)


#: A JSON answer larger than this is sent in pieces of this size.
_RESPONSE_PIECE = 256 * 1024


async def _json_off_loop(model: BaseModel) -> Response:
    """``model`` as a JSON response, serialised in a thread (it may be megabytes).

    A large body is handed to the server in pieces: framing and writing
    megabytes in one go stalls the event loop for a third of a second.
    """
    body = await asyncio.to_thread(model_json_bytes, model)
    if len(body) <= _RESPONSE_PIECE:
        return Response(content=body, media_type="application/json")

    async def pieces() -> AsyncIterator[bytes]:
        view = memoryview(body)
        for i in range(0, len(body), _RESPONSE_PIECE):
            yield bytes(view[i : i + _RESPONSE_PIECE])

    return StreamingResponse(
        pieces(), media_type="application/json", headers={"Content-Length": str(len(body))}
    )


class _EventStream(StreamingResponse):
    """The event stream; its subscription ends with the response, however it ends
    (a client gone before the body starts would otherwise keep its slot)."""

    def __init__(self, sub: Subscription, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sub = sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._sub.close()


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
        auth = b""
        length: bytes | None = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization" and not auth:
                auth = value
            elif name == b"content-length":
                length = value
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
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def _receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, _receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = _error(413, "body_too_large", f"request body larger than {self.max_body} bytes")
        resp.headers["Connection"] = "close"
        await resp(scope, receive, send)


class _App(FastAPI):
    """FastAPI behind a :class:`_Guard` (see the module's docstring)."""

    def __init__(self, *, token: str | None, max_body: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.smeg_token = token
        self._guard = _Guard(super().__call__, token, max_body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._guard(scope, receive, send)


def create_app(
    service: NodeService, token: str | None = None, *, max_body: int | None = None
) -> FastAPI:
    """Build the API over ``service``; with ``token`` every route needs ``Bearer <token>``.

    With a token (the TCP API) only ``/v1/health`` answers without it, and
    then with the status alone. Bodies over ``max_body`` bytes are refused
    (default: :data:`MAX_BODY_BYTES_TCP` with a token, else
    :data:`MAX_BODY_BYTES_UNIX`).
    """
    if max_body is None:
        max_body = MAX_BODY_BYTES_TCP if token else MAX_BODY_BYTES_UNIX
    app = _App(
        token=token,
        max_body=max_body,
        title="smegd",
        summary="Local API of the smegmesh daemon",
        version=VERSION,
        responses=_ERRORS,
    )
    app.add_middleware(_CatchAll)
    if token:
        # the dashboard at /ui/; its session cookie passes the guard
        app._guard.ui_sessions = mount_ui(app, token)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        resp = _error(exc.status, exc.code, exc.message)
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return _error(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = str(exc.detail)
        if exc.status_code == 404:
            # Never show routes to the user: a 404 here is almost always an id
            # that could not be part of a URL (e.g. with a '/').
            message = "not found: the request names no resource smegd knows (check the ids given)"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        resp = _error(exc.status_code, codes.get(exc.status_code, "http_error"), message)
        resp.headers.update(exc.headers or {})  # e.g. Allow on 405 (RFC 9110)
        return resp

    # ------------------------------------------------------------------ /v1
    @app.get("/v1/health", tags=["v1"], summary="Liveness of smegd")
    async def health(request: Request) -> dict[str, Any]:
        # without the token (TCP): the status alone
        if not request.scope.get("state", {}).get("authenticated", True):
            return {"ok": True}
        return {"ok": True, "version": VERSION}

    @app.post("/v1/meshes", status_code=201, tags=["v1"], summary="Create a mesh")
    async def new_mesh(opts: Annotated[MeshOptions | None, Body()] = None) -> MeshIdResponse:
        return MeshIdResponse(mesh_id=await service.new_mesh(opts or MeshOptions()))

    @app.get("/v1/meshes", tags=["v1"], summary="The meshes this node is in")
    async def list_meshes() -> list[MeshSummary]:
        return await service.list_meshes()

    @app.get(
        "/v1/meshes/{mesh_id}",
        tags=["v1"],
        summary="A mesh and its nodes",
        response_model=MeshDetail,
    )
    async def get_mesh(mesh_id: MeshId) -> Response:
        # serialised in a thread: a large mesh's JSON would stall the event loop
        return await _json_off_loop(await service.get_mesh(mesh_id))

    @app.delete("/v1/meshes/{mesh_id}", tags=["v1"], summary="Leave a mesh")
    async def leave_mesh(mesh_id: MeshId) -> OkResponse:
        await service.leave_mesh(mesh_id)
        return OkResponse()

    @app.post(
        "/v1/meshes/{mesh_id}/invites",
        status_code=201,
        tags=["v1"],
        summary="Issue an invitation token",
    )
    async def invite(
        mesh_id: MeshId, req: Annotated[InviteRequest | None, Body()] = None
    ) -> InviteResponse:
        req = req or InviteRequest()
        tok = await service.invite(mesh_id, req.ttl_s, req.uses, req.strict)
        return InviteResponse(token=tok, mesh_id=mesh_id, ttl_s=req.ttl_s, uses=req.uses)

    add_authority_routes(app, service)
    add_device_routes(app, service)

    @app.post("/v1/join", status_code=201, tags=["v1"], summary="Join a mesh with a token")
    async def join(req: JoinRequest) -> MeshIdResponse:
        opts = MeshOptions.model_validate(req.model_dump(exclude={"token"}))
        return MeshIdResponse(mesh_id=await service.join_mesh(req.token, opts))

    @app.put("/v1/meshes/{mesh_id}/alias", tags=["v1"], summary="Set this node's alias")
    async def put_alias(mesh_id: MeshId, req: AliasRequest) -> AliasResponse:
        stored = await service.put_alias(mesh_id, req.alias)
        return AliasResponse(alias=stored if isinstance(stored, str) else req.alias.lower())

    @app.put("/v1/meshes/{mesh_id}/description", tags=["v1"], summary="Set this node's description")
    async def put_description(mesh_id: MeshId, req: DescriptionRequest) -> OkResponse:
        await service.put_description(mesh_id, req.description)
        return OkResponse()

    @app.put("/v1/meshes/{mesh_id}/services/{key}", tags=["v1"], summary="Set a service")
    async def set_service(mesh_id: MeshId, key: ServiceKey, req: ServiceValueRequest) -> OkResponse:
        await service.set_service(mesh_id, key, req.value)
        return OkResponse()

    @app.delete("/v1/meshes/{mesh_id}/services/{key}", tags=["v1"], summary="Delete a service")
    async def delete_service(mesh_id: MeshId, key: ServiceKey) -> OkResponse:
        await service.delete_service(mesh_id, key)
        return OkResponse()

    @app.get(
        "/v1/meshes/{mesh_id}/query",
        tags=["v1"],
        summary="JMESPath query over a mesh",
        response_model=QueryResponse,
    )
    async def query(
        mesh_id: MeshId,
        q: Annotated[str, Query(min_length=1, max_length=4096, description="JMESPath")],
    ) -> Response:
        return await _json_off_loop(QueryResponse(result=await service.query_mesh(mesh_id, q)))

    @app.get(
        "/v1/graph",
        tags=["v1"],
        summary="The mesh (or all meshes) as a graph",
        response_class=Response,
        responses={200: {"content": {m: {} for m in GRAPH_MEDIA_TYPES.values()}}},
    )
    async def graph(
        meshid: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        format: Annotated[GraphFormat, Query()] = "dot",
    ) -> Response:
        data = await service.get_graph(meshid, format)
        return Response(content=data, media_type=GRAPH_MEDIA_TYPES[format])

    @app.get(
        "/v1/events",
        tags=["v1"],
        summary="Lifecycle events as they happen (Server-Sent Events)",
        description=EVENTS_DESCRIPTION,
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    )
    async def events(
        meshid: Annotated[
            str | None,
            Query(min_length=1, max_length=128, description="Only events of this mesh"),
        ] = None,
        last_event_id: Annotated[
            str | None,
            Header(
                alias="Last-Event-ID",
                max_length=20,
                description="Resume after this event (sent by EventSource on reconnect)",
            ),
        ] = None,
    ) -> StreamingResponse:
        bus: EventBus | None = getattr(service, "events", None)
        if bus is None:
            raise ServiceError("unavailable", "this daemon has no event stream", 503)
        last: int | None = None
        if last_event_id is not None and last_event_id.strip():
            try:
                last = int(last_event_id.strip())
            except ValueError:
                raise ServiceError(
                    "invalid_argument",
                    f"Last-Event-ID: {last_event_id[:20]!r} is not an event number",
                    400,
                ) from None
            if last < 0:
                raise ServiceError("invalid_argument", "Last-Event-ID: must be >= 0", 400)
        try:
            sub = bus.subscribe(last_id=last, mesh=meshid)
        except TooManySubscribers as e:
            raise ServiceError("unavailable", str(e), 503) from None

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b": smegd event stream\n\n"
                while True:
                    ev = await sub.get(timeout=KEEPALIVE_S)
                    if ev is None:
                        if sub.closed:
                            return
                        yield b": keepalive\n\n"
                    else:
                        yield ev.sse()
            finally:
                sub.close()

        return _EventStream(
            sub,
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/v1/status", tags=["v1"], summary="The whole node: meshes, members, paths, routes")
    async def status() -> StatusResponse:
        return await service.get_status()

    @app.post("/v1/ping", tags=["v1"], summary="Ping a node over the overlay")
    async def ping(req: PingRequest) -> PingResponse:
        return await service.ping(req.node, req.mesh_id, req.count, req.timeout_s)

    # ------------------------------------------------------------------ prototype aliases
    async def proto_meshes() -> list[ProtoMesh]:
        out = []
        for m in await service.list_meshes():
            try:
                out.append(proto_mesh(await service.get_mesh(m.mesh_id)))
            except ServiceError as e:
                if e.code != "unknown_mesh":  # left meanwhile
                    raise
        return out

    for p in ("/api/v1/meshes/", "/api/v1/meshes"):
        app.add_api_route(
            p,
            proto_meshes,
            methods=["GET"],
            tags=["prototype"],
            summary="All meshes (prototype shape)",
            include_in_schema=p.endswith("/"),
        )

    @app.get("/api/v1/mesh/{meshid}", tags=["prototype"], summary="A mesh (prototype shape)")
    async def proto_get(meshid: MeshId) -> ProtoMesh:
        return proto_mesh(await service.get_mesh(meshid))

    @app.post("/api/v1/mesh/create", tags=["prototype"], summary="Create (prototype shape)")
    async def proto_create(
        req: Annotated[ProtoCreateRequest | None, Body()] = None,
    ) -> dict[str, str]:
        port = req.port if req else None
        return {"meshid": await service.new_mesh(MeshOptions(wgport=port))}

    @app.post("/api/v1/mesh/join", tags=["prototype"], summary="Join with a token (prototype)")
    async def proto_join(req: ProtoJoinRequest) -> dict[str, str]:
        mesh_id = await service.join_mesh(req.token, MeshOptions(wgport=req.port))
        return {"status": "success", "meshid": mesh_id}

    return app


# --------------------------------------------------------------------------- serving


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


#: Seconds a TCP connection may take to send a request's headers (or idle between requests).
HEADER_TIMEOUT_S = 10.0


class _H11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing connections that send no request in time.

    uvicorn only times out idle keep-alive connections: one that never sends
    a complete request head (or trickles it) would hold one of the
    :data:`TCP_CONCURRENCY` places forever, and that many would lock every
    client out. Every :data:`HEADER_TIMEOUT_S` such a connection is closed
    if no request was answered on it meanwhile.
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
        if self.conn.their_state is h11.IDLE and self._answered == self._seen:
            self.transport.close()  # no request head within the timeout
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
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        os.unlink(path)  # nobody listening: stale socket of a dead daemon
    else:
        raise OSError(errno.EADDRINUSE, f"{path} is in use: another smegd is running")
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
    p = FsPath(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_socket(p)
    if group is not None and mode == 0o600:
        mode = 0o660
    gid = grp.getgrnam(group).gr_gid if group is not None else -1
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
) -> ApiServer:
    """Serve ``app`` on TCP ``host:port`` (pass a token to :func:`create_app`!).

    With ``tls_certificate`` and ``tls_key`` (PEM files) it serves HTTPS.
    At most :data:`TCP_CONCURRENCY` requests are served at once (more: 503).
    """
    if (tls_certificate is None) != (tls_key is None):
        raise ValueError("apiTlsCertificate and apiTlsKey go together")
    options: dict[str, Any] = {"limit_concurrency": TCP_CONCURRENCY, "http": _H11}
    if tls_certificate is not None:
        options.update(ssl_certfile=tls_certificate, ssl_keyfile=tls_key)
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
    return await _start(app, sock, None, **options)
