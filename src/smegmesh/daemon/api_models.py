"""Request and response models of the local REST API (``/v1``) and its data types.

The same models are the return types of :class:`smegmesh.daemon.service.NodeService`.
JSON field names are snake_case; the prototype-compatible routes (``/api/v1/...``)
use the ``Proto*`` models of :mod:`.api_models_proto`, in the prototype's camelCase shapes.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from smegmesh.core import record
from smegmesh.daemon.config import MeshOptions, Role
from smegmesh.daemon.meshopts import InvitePolicy
from smegmesh.daemon.textsafe import first_control

__all__ = [
    "ALIAS_RE",
    "MAX_INVITE_TTL_S",
    "MAX_INVITE_USES",
    "AliasRequest",
    "AliasResponse",
    "DescriptionRequest",
    "ErrorBody",
    "ErrorResponse",
    "GraphFormat",
    "InvitePolicy",
    "InviteRequest",
    "InviteResponse",
    "JoinRequest",
    "MemberStatus",
    "MeshDetail",
    "MeshIdResponse",
    "MeshOptions",
    "MeshStatus",
    "MeshSummary",
    "NodeInfo",
    "NotRestored",
    "OkResponse",
    "PathInfo",
    "PathKind",
    "PingRequest",
    "PingResponse",
    "QueryResponse",
    "RouteInfo",
    "SelectedRoute",
    "ServiceValueRequest",
    "StatusResponse",
]

GraphFormat = Literal["dot", "svg", "png"]
#: ``live``: heard from recently; ``suspect``: failure detection has not heard
#: from it and will prune it unless it answers.
NodeStatus = Literal["live", "suspect"]

#: The record's rules (core.record), anchored for pydantic/OpenAPI patterns;
#: aliases in any case (they are lower-cased before they are published).
ALIAS_RE = re.compile(f"^{record.ALIAS_RE.pattern}$", re.IGNORECASE)
SERVICE_KEY_RE = re.compile(f"^{record.SERVICE_KEY_RE.pattern}$")

MAX_INVITE_TTL_S = 365 * 86400
MAX_INVITE_USES = 1_000_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Request(_Model):
    """Request bodies take the documented JSON types only (no "1" for 1, no 0 for false)."""

    model_config = ConfigDict(strict=True)


# --------------------------------------------------------------------------- data


class RouteInfo(_Model):
    """A route advertised by a node: destination prefix and the meshes it crosses."""

    destination: str = Field(description="IPv6 prefix, e.g. fd12:3456:789a:bc01::/64 or ::/0")
    path: list[str] = Field(default_factory=list, description="Mesh ids the route crosses")


class NodeInfo(_Model):
    """One node of a mesh as seen by this daemon."""

    public_key: str = Field(description="WireGuard public key (base64); the node id")
    alias: str = ""
    description: str = ""
    role: Role
    overlay_address: str = Field(description="IPv6 address of the node in the mesh")
    wg_endpoint: str | None = Field(default=None, description="host:port of WireGuard (peers only)")
    control_endpoint: str | None = Field(default=None, description="host:port of the control plane")
    last_seen: float | None = Field(
        default=None, description="Unix time the node was last heard of"
    )
    seen_via: str | None = Field(
        default=None, description="Key of the peer its liveness is known through (docs/QUERY.md)"
    )
    handshake_age_s: float | None = Field(
        default=None,
        description="Seconds since the last WireGuard handshake (None: never/not a wg peer)",
    )
    wg_peer: bool = Field(
        default=False,
        description="This node has a WireGuard peer entry for it (false for itself and for "
        "nodes it reaches through another peer, e.g. a client's view of other clients)",
    )
    rx_bytes: int = 0
    tx_bytes: int = 0
    keepalive_s: int = 0
    allowed_ips: list[str] = Field(default_factory=list)
    assigned_peer: str | None = Field(default=None, description="Public key of a client's peer")
    routes: list[RouteInfo] = Field(default_factory=list)
    services: dict[str, str] = Field(default_factory=dict)
    is_self: bool = Field(default=False, description="True for this daemon's own record")
    # Additive fields (issue 6); defaults keep older producers valid.
    status: NodeStatus = Field(
        default="live", description="live, or suspect (not heard from; pruned unless it answers)"
    )
    node_id: str | None = Field(
        default=None, description="First 16 hex digits of SHA-256(key): NODEID.MESHID.smeg."
    )
    record_version: int | None = Field(default=None, description="Version of the node's record")
    nat_endpoint: str | None = Field(
        default=None,
        description="A client's WireGuard host:port as its assigned peer sees it (NAT traversal, "
        "docs/NAT.md); other clients reach it directly there",
    )
    record_timestamp: float | None = Field(
        default=None, description="Unix time the node last signed its record"
    )
    alias_conflict: bool = Field(
        default=False,
        description="Another node owns the same alias; this node is not reachable by it",
    )
    gateway_for: list[str] = Field(
        default_factory=list, description="Destinations this daemon routes through this node"
    )
    admin: bool = Field(default=False, description="The node is an admin of the mesh")
    rtt_ms: float | None = Field(
        default=None,
        description="Smoothed round trip (ms) of ICMPv6 echoes over the path in use, for "
        "the members a client probes (its direct-session partners, direct or relayed, and "
        "its assigned peer; docs/NAT.md); None otherwise",
    )
    path: PathInfo | None = Field(
        default=None,
        description="How this node reaches the member: direct (its own WireGuard entry), "
        "peer (through the peer named in via, e.g. a client's assigned peer), self, none",
    )


class EvictedNode(_Model):
    """A node an admin evicted from the mesh (``get-mesh --all``)."""

    public_key: str
    node_id: str
    overlay_address: str
    by: str = Field(description="Public key of the admin who evicted it")
    time: float = Field(description="When (Unix seconds, the admin's clock)")
    cascade: bool = Field(description="The nodes it admitted were evicted with it")
    through: str | None = Field(
        default=None,
        description="evicted_self only: the public key of the node that admitted this one "
        "(or one before it), whose eviction removed this node with it (by cascade)",
    )


class SelectedRoute(_Model):
    """A routed destination this daemon uses in a mesh, and the exit it goes through."""

    destination: str = Field(description="IPv6 prefix, e.g. ::/0")
    gateway: str = Field(description="Public key of the member traffic is sent to")
    gateway_alias: str = ""
    path: list[str] = Field(default_factory=list, description="Mesh ids the route crosses")
    path_length: int = Field(description="Number of meshes crossed (shortest wins)")
    alternatives: list[str] = Field(
        default_factory=list,
        description="Other gateways offering the destination at the same path length",
    )


class MeshSummary(_Model):
    mesh_id: str
    interface: str | None = Field(default=None, description="WireGuard interface of the mesh")
    prefix: str = Field(description="The mesh's /64 ULA prefix")
    role: Role = Field(description="This node's role in the mesh")
    overlay_address: str = Field(description="This node's address in the mesh")
    node_count: int


class DeviceInfo(_Model):
    """A sponsored device (issue 18): a phone or router without smegd, reached
    through the peer that sponsors it."""

    public_key: str = Field(description="The device's WireGuard public key")
    alias: str = ""
    overlay_address: str
    node_id: str | None = Field(default=None, description="NODEID of NODEID.MESH.smeg.")
    sponsor: str = Field(description="Public key of the sponsoring peer (its only WireGuard peer)")
    sponsor_alias: str = ""
    added: float = Field(description="Unix time the sponsor admitted it")
    key_kept: bool = Field(
        default=False, description="The sponsor keeps its private key (--keep-key; sponsor only)"
    )


class MeshDetail(_Model):
    mesh_id: str
    interface: str | None = None
    prefix: str
    self_key: str = Field(description="Public key of this node")
    leader: str | None = Field(default=None, description="Public key of the current leader")
    nodes: list[NodeInfo]
    role: Role | None = Field(default=None, description="This node's role in the mesh")
    invite_policy: str | None = Field(
        default=None, description="Who may admit new nodes: admins, peers or members"
    )
    admins: list[str] = Field(default_factory=list, description="Public keys of the mesh's admins")
    evicted: list[EvictedNode] = Field(
        default_factory=list, description="Nodes evicted from the mesh"
    )
    evicted_self: EvictedNode | None = Field(
        default=None,
        description="This node's own eviction, shown to it by a member that refused it: "
        "it is no member of the mesh any more (leave it with leave-mesh)",
    )
    routes: list[SelectedRoute] = Field(
        default_factory=list, description="Routed destinations this node uses, with their exit"
    )
    devices: list[DeviceInfo] = Field(
        default_factory=list,
        description="Sponsored devices (no smegd; reached through their sponsoring peer)",
    )


# --------------------------------------------------------------------------- requests


class JoinRequest(MeshOptions):
    """Join a mesh with an invitation token, with optional per-mesh overrides."""

    token: str = Field(min_length=1, description="Invitation token from `smegctl invite`")


class InviteRequest(_Request):
    ttl_s: int = Field(default=86400, gt=0, le=MAX_INVITE_TTL_S, description="Lifetime in seconds")
    uses: int = Field(
        default=1, ge=1, le=MAX_INVITE_USES, description="How many joins the token admits"
    )
    strict: bool = Field(
        default=False,
        description="Only this node admits with the token, so its use count is exact",
    )


class AliasRequest(_Request):
    alias: str = Field(description="DNS label: letters, digits, '-', at most 63 characters")

    @field_validator("alias")
    @classmethod
    def _label(cls, v: str) -> str:
        if not ALIAS_RE.match(v):
            raise ValueError(record.ALIAS_RULE)
        return v


def no_control(v: str) -> str:
    """``v`` if it holds no control character (C0, DEL, C1: NUL, ESC, newline, tab...),
    which would land in every member's tables and terminals. Only for what a user
    sets here: records from other nodes are taken as the wire allows."""
    bad = first_control(v)
    if bad is not None:
        raise ValueError(f"must not contain control characters (found U+{ord(bad):04X})")
    return v


def _utf8_bytes(most: int) -> Any:
    """A validator: text of at most ``most`` bytes of UTF-8, the record's limit (a
    request's body is bounded, so the text is too before this counts it)."""

    def check(v: str) -> str:
        n = len(v.encode("utf-8", "surrogatepass"))
        if n > most:
            raise ValueError(f"at most {most} bytes of UTF-8 (got {n})")
        return v

    return check


#: The schema's maxLength: the bytes, an upper bound of the characters too.
_DESCRIPTION_LEN: dict[str, JsonValue] = {"maxLength": record.MAX_DESCRIPTION_BYTES}
_VALUE_LEN: dict[str, JsonValue] = {"maxLength": record.MAX_SERVICE_VALUE_BYTES}


class DescriptionRequest(_Request):
    description: str = Field(
        description=f"Free text on one line, at most {record.MAX_DESCRIPTION_BYTES} bytes of UTF-8",
        json_schema_extra=_DESCRIPTION_LEN,
    )

    _text = field_validator("description")(no_control)
    _bytes = field_validator("description")(_utf8_bytes(record.MAX_DESCRIPTION_BYTES))


class ServiceValueRequest(_Request):
    value: str = Field(
        description=f"Free text on one line, at most {record.MAX_SERVICE_VALUE_BYTES} bytes "
        "of UTF-8",
        json_schema_extra=_VALUE_LEN,
    )

    _text = field_validator("value")(no_control)
    _bytes = field_validator("value")(_utf8_bytes(record.MAX_SERVICE_VALUE_BYTES))


def check_service_key(key: str) -> str:
    if not SERVICE_KEY_RE.match(key):
        raise ValueError("service key must be 1-64 characters of letters, digits and . _ -")
    return key


# --------------------------------------------------------------------------- responses


class MeshIdResponse(_Model):
    mesh_id: str


class InviteResponse(_Model):
    token: str
    mesh_id: str
    ttl_s: int
    uses: int


class OkResponse(_Model):
    ok: bool = True


class AliasResponse(OkResponse):
    """``put-alias``: the alias as stored (lower case), which may differ from the input."""

    alias: str = Field(description="The alias as stored and served in DNS (lower case)")


class QueryResponse(_Model):
    result: Any


class ErrorBody(_Model):
    code: str
    message: str


class ErrorResponse(_Model):
    error: ErrorBody


# --------------------------------------------------------------------------- status, ping

#: How this node reaches a member (or an address): ``self``; ``direct``: the
#: member is its own WireGuard peer here; ``peer``: through another member of
#: the mesh (a client's assigned peer, or this client's own peer); ``bridge``:
#: an address outside the mesh, through the gateway of a route; ``none``: no
#: WireGuard peer covers it (not yet configured, or unreachable).
PathKind = Literal["self", "direct", "peer", "bridge", "none"]


class PathInfo(_Model):
    """The WireGuard peer traffic to an address goes to (longest AllowedIPs match)."""

    kind: PathKind
    via: str | None = Field(default=None, description="Public key of the next hop (peer/bridge)")
    via_alias: str = ""
    mesh_id: str | None = Field(default=None, description="Mesh of the interface used")


class MemberStatus(_Model):
    public_key: str
    alias: str = ""
    overlay_address: str
    role: Role
    status: NodeStatus = "live"
    is_self: bool = False
    handshake_age_s: float | None = Field(
        default=None, description="Seconds since the last WireGuard handshake with the next hop"
    )
    rx_bytes: int = Field(default=0, description="Bytes received from this WireGuard peer")
    tx_bytes: int = Field(default=0, description="Bytes sent to this WireGuard peer")
    last_seen: float | None = None
    seen_via: str | None = Field(default=None, description="As in NodeInfo")
    path: PathInfo
    rtt_ms: float | None = Field(
        default=None, description="Measured round trip over the path in use (ms; see NodeInfo)"
    )


class MeshStatus(_Model):
    mesh_id: str
    interface: str | None = None
    prefix: str
    role: Role | None = None
    overlay_address: str | None = None
    members_online: int = Field(description="Members not suspected by failure detection")
    members_total: int
    members: list[MemberStatus]
    routes: list[SelectedRoute] = Field(default_factory=list)
    exits: list[str] = Field(
        default_factory=list, description="Keys of the members offering an exit (::/0) here"
    )
    evicted_self: EvictedNode | None = Field(
        default=None, description="This node's own eviction (as in get-mesh): no member now"
    )


class NotRestored(_Model):
    """A saved mesh that did not start: its file (kept) and why."""

    mesh_id: str
    file: str
    reason: str
    retrying: bool = Field(description="Tried again (no address yet); else fix the file")


class StatusResponse(_Model):
    """``GET /v1/status``: the whole node on one screen (``smegctl status``)."""

    version: str
    public_key: str | None = Field(default=None, description="This node's key (its id)")
    meshes: list[MeshStatus]
    dns_listen: str | None = Field(
        default=None, description="Where smegd's DNS server listens (dnsListen); null: no DNS"
    )
    not_restored: list[NotRestored] = Field(default_factory=list)
    accept_defaults: bool | None = Field(default=None, description="acceptDefaults of the config")


class PingRequest(_Request):
    node: str = Field(
        min_length=1,
        max_length=128,
        description="Alias, public key, overlay address, or a unique prefix of one",
    )
    mesh_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="Only look in this mesh"
    )
    count: int = Field(default=3, ge=1, le=20, description="Echo requests to send")
    timeout_s: int = Field(default=2, ge=1, le=10, description="Seconds to wait for each reply")


class PingResponse(_Model):
    mesh_id: str | None = None
    public_key: str | None = None
    alias: str = ""
    address: str
    path: PathInfo
    sent: int
    received: int
    rtt_ms: list[float] = Field(default_factory=list, description="RTT of each reply")
    rtt_avg_ms: float | None = None
    error: str | None = Field(default=None, description="Why no reply came, when known")


# --------------------------------------------------------------------------- devices (issue 18)


class AddDeviceRequest(_Request):
    """Sponsor a device without smegd: this peer publishes it and forwards its traffic."""

    name: str = Field(min_length=1, max_length=63, description="The device's alias (a DNS label)")
    public_key: str | None = Field(
        default=None,
        max_length=64,
        description="The device's WireGuard public key (default: generate a key pair; the "
        "private key is returned once, in the config)",
    )
    keep_key: bool = Field(
        default=False, description="Keep the generated private key in the state directory (0600)"
    )
    via: str | None = Field(
        default=None,
        max_length=256,
        description="The sponsoring peer (NODE): this daemon (default) or, for an admin, "
        "another peer of the mesh, which is asked to sponsor the device",
    )


class AddDeviceResponse(_Model):
    device: DeviceInfo
    config: str = Field(description="wg-quick configuration for the device")
    has_private_key: bool = Field(
        description="The config holds the device's private key (generated here)"
    )
