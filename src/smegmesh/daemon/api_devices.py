"""REST routes of sponsored devices: add, list, remove, config (issue 18)."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Path

from smegmesh.daemon.api_models import AddDeviceRequest, AddDeviceResponse, DeviceInfo
from smegmesh.daemon.service import NodeService

__all__ = ["add_device_routes"]

MeshId = Annotated[str, Path(min_length=1, max_length=128, description="Mesh id")]
# ``:path`` in the routes: a public key (base64) may hold a "/", which the server
# decodes from %2F before routing.
DeviceName = Annotated[
    str, Path(min_length=1, max_length=128, description="Device alias, public key or address")
]


def add_device_routes(app: FastAPI, service: NodeService) -> None:
    @app.post(
        "/v1/meshes/{mesh_id}/devices",
        tags=["v1"],
        summary="Sponsor a device without smegd (a phone, a router)",
        description="This peer lists the device in its signed record (admitting it under the "
        "mesh's invite policy) and returns a wg-quick configuration whose only peer is this "
        "node. A generated private key is returned once and kept only with `keep_key`.",
    )
    async def add_device(mesh_id: MeshId, req: AddDeviceRequest) -> AddDeviceResponse:
        return await service.add_device(mesh_id, req.name, req.public_key, req.keep_key, req.via)

    @app.get(
        "/v1/meshes/{mesh_id}/devices",
        tags=["v1"],
        summary="The mesh's sponsored devices, with their sponsors",
    )
    async def list_devices(mesh_id: MeshId) -> list[DeviceInfo]:
        return await service.list_devices(mesh_id)

    @app.delete(
        "/v1/meshes/{mesh_id}/devices/{device:path}",
        tags=["v1"],
        summary="Stop sponsoring a device (it disappears from the mesh)",
    )
    async def remove_device(mesh_id: MeshId, device: DeviceName) -> DeviceInfo:
        return await service.remove_device(mesh_id, device)

    @app.get(
        "/v1/meshes/{mesh_id}/devices/{device:path}/config",
        tags=["v1"],
        summary="A device's current wg-quick configuration",
        description="Rendered with the sponsor's current endpoint, DNS and routed "
        "destinations (asked of the sponsor when it is another peer). The private key is "
        "included only if this daemon kept it (`keep_key`).",
    )
    async def device_config(mesh_id: MeshId, device: DeviceName) -> AddDeviceResponse:
        return await service.device_config(mesh_id, device)
