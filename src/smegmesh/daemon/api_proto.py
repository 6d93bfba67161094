"""The prototype-compatible routes (``/api/v1/...``), in the prototype's shapes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Body, FastAPI

from smegmesh.daemon.api_models import MeshOptions
from smegmesh.daemon.api_models_proto import (
    ProtoCreateRequest,
    ProtoJoinRequest,
    ProtoMesh,
    proto_mesh,
)
from smegmesh.daemon.api_params import MeshId
from smegmesh.daemon.service import NodeService, ServiceError

__all__ = ["add_proto_routes"]


def add_proto_routes(app: FastAPI, service: NodeService) -> None:
    """The prototype's routes: all meshes, one mesh, create, join."""

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
