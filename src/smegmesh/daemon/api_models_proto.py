"""Models of the prototype-compatible routes (``/api/v1/...``), in its camelCase shapes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from smegmesh.daemon.api_models import MeshDetail

__all__ = [
    "ProtoCreateRequest",
    "ProtoJoinRequest",
    "ProtoMesh",
    "ProtoNode",
    "ProtoRoute",
    "ProtoStats",
    "proto_mesh",
]


class ProtoRoute(BaseModel):
    prefix: str
    path: list[str]


class ProtoStats(BaseModel):
    totalTransmit: int
    totalReceived: int
    keepaliveInterval: int
    allowedIps: list[str]


class ProtoNode(BaseModel):
    alias: str
    wgHost: str
    wgEndpoint: str
    endpoint: str
    timestamp: int
    description: str
    publicKey: str
    routes: list[ProtoRoute]
    services: dict[str, str]
    stats: ProtoStats


class ProtoMesh(BaseModel):
    meshid: str
    nodes: dict[str, ProtoNode] = Field(description="Keyed by overlay address")


class ProtoCreateRequest(BaseModel):
    # A key the route does not take is an error: {"role": "client"} or a misspelt
    # port must not create a mesh with the defaults.
    model_config = ConfigDict(strict=True, extra="forbid")

    port: int | None = Field(default=None, ge=1024, lt=65535)


class ProtoJoinRequest(BaseModel):
    """The prototype's join, taking an invitation token instead of a bootstrap address."""

    model_config = ConfigDict(strict=True, extra="forbid")

    token: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1024, lt=65535)
    meshid: str | None = Field(default=None, description="Ignored: the token names the mesh")


def proto_mesh(detail: MeshDetail) -> ProtoMesh:
    """Convert a mesh into the prototype's JSON shape."""
    nodes: dict[str, ProtoNode] = {}
    for n in detail.nodes:
        nodes[n.overlay_address] = ProtoNode(
            alias=n.alias,
            wgHost=n.overlay_address,
            wgEndpoint=n.wg_endpoint or "",
            endpoint=n.control_endpoint or "",
            timestamp=int(n.last_seen or 0),
            description=n.description,
            publicKey=n.public_key,
            routes=[ProtoRoute(prefix=r.destination, path=list(r.path)) for r in n.routes],
            services=dict(n.services),
            stats=ProtoStats(
                totalTransmit=n.tx_bytes,
                totalReceived=n.rx_bytes,
                keepaliveInterval=n.keepalive_s * 1_000_000_000,
                allowedIps=list(n.allowed_ips),
            ),
        )
    return ProtoMesh(meshid=detail.mesh_id, nodes=nodes)
