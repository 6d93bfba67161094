"""The contract between the local API (``daemon/api.py``) and the daemon.

The daemon implements :class:`NodeService`; the API (and tests, with an
in-memory fake) only talk to it through this protocol. Failures are raised as
:class:`ServiceError`, which the API turns into ``{"error": {"code", "message"}}``
with the given HTTP status.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from smegmesh.daemon.api_models import (
    AddDeviceResponse,
    DeviceInfo,
    GraphFormat,
    MeshDetail,
    MeshSummary,
    PingResponse,
    StatusResponse,
)
from smegmesh.daemon.api_models_authority import (
    AdminResponse,
    AliasReserved,
    EvictResponse,
    InviteInfo,
    PolicyResponse,
)
from smegmesh.daemon.config import MeshOptions

__all__ = [
    "GraphFormat",
    "MeshDetail",
    "MeshOptions",
    "MeshSummary",
    "NodeService",
    "ServiceError",
    "conflict",
    "invalid_argument",
    "not_saved",
    "refused",
    "unavailable",
    "unknown_mesh",
]


class ServiceError(Exception):
    """An operation failed in a way the user should be told about.

    ``code`` is a stable machine-readable string, ``message`` one human line,
    ``status`` the HTTP status the API answers with.
    """

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"ServiceError({self.code!r}, {self.message!r}, {self.status})"


# Conventional errors ------------------------------------------------------------


def unknown_mesh(mesh_id: str) -> ServiceError:
    """404: this node is not in mesh ``mesh_id``."""
    return ServiceError("unknown_mesh", f"not a member of mesh {mesh_id!r}", 404)


def invalid_argument(message: str) -> ServiceError:
    """400: the request is well-formed but its values are not acceptable."""
    return ServiceError("invalid_argument", message, 400)


def refused(message: str) -> ServiceError:
    """403: e.g. an invitation token that is invalid, expired or used up."""
    return ServiceError("refused", message, 403)


def conflict(message: str) -> ServiceError:
    """409: e.g. joining a mesh this node is already in, or a port in use."""
    return ServiceError("conflict", message, 409)


def unavailable(message: str) -> ServiceError:
    """503: e.g. no member reachable to join through, graphviz missing."""
    return ServiceError("unavailable", message, 503)


def not_saved(reason: str, outcome: str = "") -> ServiceError:
    """503: a change that could not be written to disk (a full or read-only disk).

    ``outcome``: what became of the change; by default it is in effect, and
    smegd writes it again every second.
    """
    outcome = (
        outcome or "the change is in effect but lost if smegd stops first; retried each second"
    )
    return ServiceError("not_saved", f"not saved: {reason} ({outcome})", 503)


@runtime_checkable
class NodeService(Protocol):
    """What the local API needs from the daemon. All methods are coroutines."""

    async def new_mesh(self, opts: MeshOptions) -> str:
        """Create a mesh with this node as its first member; return its id."""
        ...

    async def invite(self, mesh_id: str, ttl_s: int, uses: int, strict: bool = False) -> str:
        """Issue an invitation token for ``mesh_id`` valid ``ttl_s`` seconds, ``uses`` times.

        ``strict``: only this node admits with it (exact use count).
        """
        ...

    async def join_mesh(self, token: str, opts: MeshOptions) -> str:
        """Join the mesh the token admits to; return its id."""
        ...

    async def leave_mesh(self, mesh_id: str, *, force: bool = False) -> None:
        """Leave ``mesh_id``: tell the others, remove the interface and state.

        Refused (409 ``last_admin``) for the last admin of a mesh with other
        members unless ``force``: nobody could evict a node or name an admin after."""
        ...

    async def list_meshes(self) -> list[MeshSummary]: ...

    async def get_mesh(self, mesh_id: str) -> MeshDetail: ...

    async def put_alias(self, mesh_id: str, alias: str) -> str:
        """Set this node's alias; return it as stored (lower case)."""
        ...

    async def put_description(self, mesh_id: str, description: str) -> None: ...

    async def set_service(self, mesh_id: str, key: str, value: str) -> None: ...

    async def delete_service(self, mesh_id: str, key: str) -> None:
        """Remove service ``key`` of this node (``unknown_service`` 404 if absent)."""
        ...

    async def query_mesh(self, mesh_id: str, expr: str) -> Any:
        """Evaluate JMESPath ``expr`` over the mesh (``invalid_argument`` if it is bad).

        The document queried is ``get_mesh(mesh_id)`` dumped to JSON.
        """
        ...

    async def get_graph(self, mesh_id: str | None, fmt: GraphFormat) -> bytes:
        """Render ``mesh_id`` (or all meshes, linked by bridges) as dot, svg or png."""
        ...

    async def evict(self, mesh_id: str, node: str, cascade: bool) -> EvictResponse:
        """Evict ``node`` (admins only; ``forbidden`` 403 otherwise)."""
        ...

    async def set_admin(self, mesh_id: str, node: str, admin: bool) -> AdminResponse:
        """Make ``node`` an admin or drop it (admins only)."""
        ...

    async def set_policy(self, mesh_id: str, policy: str) -> PolicyResponse:
        """Change who may admit new nodes (admins only)."""
        ...

    async def reserve_alias(self, mesh_id: str, alias: str, node: str | None) -> AliasReserved:
        """Reserve ``alias`` for ``node`` (None: release it); admins only."""
        ...

    async def list_invites(self, mesh_id: str) -> list[InviteInfo]:
        """The mesh's outstanding invitations (ids, issuers, uses; never secrets)."""
        ...

    async def revoke_invite(self, mesh_id: str, token_id: str) -> InviteInfo:
        """Revoke an invitation by id or unique prefix (its issuer or an admin)."""
        ...

    async def add_device(
        self,
        mesh_id: str,
        name: str,
        public_key: str | None = None,
        keep_key: bool = False,
        via: str | None = None,
    ) -> AddDeviceResponse:
        """Sponsor a device without smegd; return its wg-quick config (issue 18)."""
        ...

    async def list_devices(self, mesh_id: str) -> list[DeviceInfo]:
        """The mesh's sponsored devices and their sponsors."""
        ...

    async def remove_device(self, mesh_id: str, device: str) -> DeviceInfo:
        """Stop sponsoring ``device`` (alias, key or address; ``unknown_device`` 404)."""
        ...

    async def device_config(self, mesh_id: str, device: str) -> AddDeviceResponse:
        """The device's current wg-quick config (its private key only if kept here)."""
        ...

    async def get_status(self) -> StatusResponse:
        """The whole node: identity, every mesh, members with their paths, routes in use."""
        ...

    async def ping(
        self, node: str, mesh_id: str | None, count: int, timeout_s: int
    ) -> PingResponse:
        """Ping ``node`` (resolved by :func:`smegmesh.daemon.resolve.resolve_node`) over the
        overlay and say which path answered."""
        ...
