"""Request and response models of the mesh authority routes (evictions, admins,
the invite policy, alias reservations, invitations): ``/v1/meshes/{id}/...``."""

from __future__ import annotations

from pydantic import Field

from smegmesh.daemon.api_models import _Model, _Request
from smegmesh.daemon.meshopts import InvitePolicy

__all__ = [
    "AdminRequest",
    "AdminResponse",
    "AliasReservation",
    "EvictRequest",
    "EvictResponse",
    "InviteInfo",
    "PolicyRequest",
    "PolicyResponse",
]


class EvictRequest(_Request):
    node: str = Field(
        min_length=1,
        max_length=200,
        description="Alias, public key, overlay address, or a unique prefix of one",
    )
    cascade: bool = Field(default=False, description="Also evict the nodes it admitted")


class EvictResponse(_Model):
    evicted: list[str] = Field(
        description="Public keys evicted: the node, then those this eviction removed with it"
    )
    alias: str = ""
    kept: int = Field(default=0, description="Nodes it admitted that stay (without cascade)")


class AdminRequest(_Request):
    node: str = Field(min_length=1, max_length=200, description="The node (alias, key, address…)")
    admin: bool = Field(description="true: make it an admin; false: drop it")


class AdminResponse(_Model):
    node: str
    admin: bool
    admins: list[str]
    changed: bool = Field(
        default=True,
        description="False: the node already was (or was not) an admin; nothing was published",
    )


class PolicyRequest(_Request):
    invite_policy: InvitePolicy = Field(description="Who may admit new nodes from now on")


class PolicyResponse(_Model):
    mesh_id: str
    invite_policy: str


class AliasReservation(_Model):
    alias: str = Field(
        min_length=1, max_length=63, description="The alias (a DNS label, lower case)"
    )
    node: str | None = Field(
        default=None,
        max_length=200,
        description="The node it is reserved for (alias, key, address…); null releases it",
    )


class AliasReserved(AliasReservation):
    warnings: list[str] = Field(
        default_factory=list,
        description="Other nodes and devices that claim the alias: the reservation "
        "outranks their claims in DNS",
    )


class InviteInfo(_Model):
    token_id: str = Field(description="Hex id of the token (not the secret)")
    issuer: str = Field(description="Public key of the member that issued it")
    issuer_alias: str = ""
    expires: float = Field(description="Unix seconds")
    uses: int
    used: int = Field(description="Distinct nodes admitted with it, mesh-wide")
    strict: bool
    revoked: bool
    expired: bool
