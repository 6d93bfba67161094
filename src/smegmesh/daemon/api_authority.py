"""REST routes of mesh authority: evict, admins, invitations (issue 11)."""

from __future__ import annotations

from fastapi import FastAPI

from smegmesh.daemon.api_models_authority import (
    AdminRequest,
    AdminResponse,
    AliasReservation,
    AliasReserved,
    EvictRequest,
    EvictResponse,
    InviteInfo,
    PolicyRequest,
    PolicyResponse,
)
from smegmesh.daemon.api_params import MeshId, TokenId
from smegmesh.daemon.service import NodeService

__all__ = ["add_authority_routes"]


def add_authority_routes(app: FastAPI, service: NodeService) -> None:
    @app.post(
        "/v1/meshes/{mesh_id}/evict",
        tags=["v1"],
        summary="Evict a node (admins only)",
        description="Publishes a signed revocation: every member removes the node's "
        "WireGuard peer, routes and names and refuses its calls and records. "
        "`cascade` also evicts the nodes it admitted.",
    )
    async def evict(mesh_id: MeshId, req: EvictRequest) -> EvictResponse:
        return await service.evict(mesh_id, req.node, req.cascade)

    @app.post(
        "/v1/meshes/{mesh_id}/admins",
        tags=["v1"],
        summary="Make a node an admin, or drop one (admins only)",
    )
    async def set_admin(mesh_id: MeshId, req: AdminRequest) -> AdminResponse:
        return await service.set_admin(mesh_id, req.node, req.admin)

    @app.put(
        "/v1/meshes/{mesh_id}/policy",
        tags=["v1"],
        summary="Change who may admit new nodes (admins only)",
    )
    async def set_policy(mesh_id: MeshId, req: PolicyRequest) -> PolicyResponse:
        return await service.set_policy(mesh_id, req.invite_policy)

    @app.post(
        "/v1/meshes/{mesh_id}/alias-reservations",
        tags=["v1"],
        summary="Reserve an alias for a node, or release it (admins only)",
    )
    async def reserve_alias(mesh_id: MeshId, req: AliasReservation) -> AliasReserved:
        return await service.reserve_alias(mesh_id, req.alias, req.node)

    @app.get(
        "/v1/meshes/{mesh_id}/invites",
        tags=["v1"],
        summary="Outstanding invitations (ids and counts, never secrets)",
    )
    async def list_invites(mesh_id: MeshId) -> list[InviteInfo]:
        return await service.list_invites(mesh_id)

    @app.delete(
        "/v1/meshes/{mesh_id}/invites/{token_id}",
        tags=["v1"],
        summary="Revoke an invitation (its issuer or an admin)",
    )
    async def revoke_invite(mesh_id: MeshId, token_id: TokenId) -> InviteInfo:
        return await service.revoke_invite(mesh_id, token_id)
