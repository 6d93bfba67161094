"""The local REST API of ``smegd`` (FastAPI), and helpers to serve it.

``create_app(service)`` builds the app over a :class:`NodeService`. It is served
on the control unix socket (no token; the socket's mode 0600 is the access
control) and, if ``apiListen`` is configured, on TCP with a bearer token.

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
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path as FsPath
from typing import Annotated, Any, TypeVar

import uvicorn
from fastapi import Body, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
from smegmesh.daemon.service import NodeService, ServiceError

__all__ = ["ApiServer", "create_app", "serve_tcp", "serve_unix"]

log = logging.getLogger(__name__)

T = TypeVar("T")

GRAPH_MEDIA_TYPES: dict[str, str] = {
    "dot": "text/vnd.graphviz; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "Error"},
    "5XX": {"model": ErrorResponse, "description": "Error"},
}


MeshId = Annotated[str, Path(min_length=1, max_length=128, description="Mesh id")]
ServiceKey = Annotated[
    str, Path(pattern=SERVICE_KEY_RE.pattern, description="Service name (1-64 chars)")
]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message}},
    )


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out or "body"


def _validation_message(exc: RequestValidationError) -> str:
    msgs = []
    for err in exc.errors():
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        if err.get("type") == "missing":
            msg = "required"
        elif err.get("type") == "json_invalid":
            return "request body is not valid JSON"
        msgs.append(f"{_loc(err.get('loc', ()))}: {msg}")
    return "invalid request: " + "; ".join(msgs)


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


def _bearer(token: str) -> Callable[[Request], Coroutine[Any, Any, None]]:
    expected = f"Bearer {token}".encode()

    async def check(request: Request) -> None:
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, expected):
            raise ServiceError("unauthorized", "missing or wrong bearer token", 401)

    return check


def create_app(service: NodeService, token: str | None = None) -> FastAPI:
    """Build the API over ``service``; with ``token`` every route needs ``Bearer <token>``."""
    deps = [Depends(_bearer(token))] if token else []
    app = FastAPI(
        title="smegd",
        summary="Local API of the smegmesh daemon",
        version=VERSION,
        dependencies=deps,
        responses=_ERRORS,
    )
    app.add_middleware(_CatchAll)

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
    async def health() -> dict[str, Any]:
        return {"ok": True, "version": VERSION}

    @app.post("/v1/meshes", status_code=201, tags=["v1"], summary="Create a mesh")
    async def new_mesh(opts: Annotated[MeshOptions | None, Body()] = None) -> MeshIdResponse:
        return MeshIdResponse(mesh_id=await service.new_mesh(opts or MeshOptions()))

    @app.get("/v1/meshes", tags=["v1"], summary="The meshes this node is in")
    async def list_meshes() -> list[MeshSummary]:
        return await service.list_meshes()

    @app.get("/v1/meshes/{mesh_id}", tags=["v1"], summary="A mesh and its nodes")
    async def get_mesh(mesh_id: MeshId) -> MeshDetail:
        return await service.get_mesh(mesh_id)

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
        tok = await service.invite(mesh_id, req.ttl_s, req.uses)
        return InviteResponse(token=tok, mesh_id=mesh_id, ttl_s=req.ttl_s, uses=req.uses)

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

    @app.get("/v1/meshes/{mesh_id}/query", tags=["v1"], summary="JMESPath query over a mesh")
    async def query(
        mesh_id: MeshId,
        q: Annotated[str, Query(min_length=1, max_length=4096, description="JMESPath")],
    ) -> QueryResponse:
        return QueryResponse(result=await service.query_mesh(mesh_id, q))

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


async def _start(app: FastAPI, sock: socket.socket, path: FsPath | None) -> ApiServer:
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
        proxy_headers=False,
        server_header=False,
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


async def serve_tcp(app: FastAPI, host: str, port: int) -> ApiServer:
    """Serve ``app`` on TCP ``host:port`` (pass a token to :func:`create_app`!)."""
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
    return await _start(app, sock, None)
