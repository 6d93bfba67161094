"""REST routes of meshes and of this node in them (``/v1``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from smegmesh.daemon.api_models import (
    AliasRequest,
    AliasResponse,
    DescriptionRequest,
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
    QueryResponse,
    ServiceValueRequest,
    StatusResponse,
)
from smegmesh.daemon.api_params import MeshId, ServiceKey
from smegmesh.daemon.config import VERSION
from smegmesh.daemon.service import NodeService
from smegmesh.daemon.views import model_json_bytes

__all__ = ["add_mesh_routes", "add_node_routes", "add_status_routes"]

GRAPH_MEDIA_TYPES: dict[str, str] = {
    "dot": "text/vnd.graphviz; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
}

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


def add_mesh_routes(app: FastAPI, service: NodeService) -> None:
    """Health, and the meshes: create, list, show, leave, invite."""

    @app.get("/v1/health", tags=["v1"], summary="Liveness of smegd")
    async def health(request: Request) -> dict[str, Any]:
        # without the token (TCP): the status alone
        if not request.scope.get("state", {}).get("authenticated", True):
            return {"ok": True}
        # saved meshes that did not start (smegctl status says why): list-meshes names them
        unrestored = sorted(getattr(service, "unrestored", None) or ())
        return {"ok": True, "version": VERSION, "not_restored": unrestored}

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
    async def leave_mesh(
        mesh_id: MeshId,
        force: Annotated[
            bool,
            Query(description="Leave even as the last admin of a mesh with other members"),
        ] = False,
    ) -> OkResponse:
        await service.leave_mesh(mesh_id, force=force)
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


def add_node_routes(app: FastAPI, service: NodeService) -> None:
    """Join; this node's alias, description and services; query and graph."""

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


def add_status_routes(app: FastAPI, service: NodeService) -> None:
    """The whole node at a glance, and ping over the overlay."""

    @app.get("/v1/status", tags=["v1"], summary="The whole node: meshes, members, paths, routes")
    async def status() -> StatusResponse:
        return await service.get_status()

    @app.post("/v1/ping", tags=["v1"], summary="Ping a node over the overlay")
    async def ping(req: PingRequest) -> PingResponse:
        return await service.ping(req.node, req.mesh_id, req.count, req.timeout_s)
