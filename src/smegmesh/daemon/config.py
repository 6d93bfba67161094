"""Configuration of the ``smegd`` daemon (SPEC §6).

The YAML file uses the prototype's camelCase keys; the Python models expose
snake_case attributes with the YAML key as alias (``Config.grpc_port`` is
``gRPCPort``).  Every prototype key is accepted; unknown keys and bad values
are errors (:class:`ConfigError`) whose one-line message names the key path and
what is allowed.

Entry point: :func:`load_config`.  Per-mesh overrides coming from the
``new-mesh``/``join-mesh`` flags are :class:`MeshOptions`, merged over
``baseConfiguration`` by :func:`resolve_mesh_settings`.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import ssl
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

# Defined in a module without pydantic, so smegctl starts fast.
from smegmesh.core.desired import DEFAULT_CLIENT_KEEPALIVE as _CORE_DEFAULT_CLIENT_KEEPALIVE
from smegmesh.core.endpoint import join_host_port, split_host_port
from smegmesh.core.record import check_endpoint
from smegmesh.daemon.defaults import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_STATE_DIR,
    VERSION,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_CONTROL_SOCKET",
    "DEFAULT_STATE_DIR",
    "SKIP_CERT_WARNING",
    "VERSION",
    "BaseConfiguration",
    "Config",
    "ConfigError",
    "IpDiscovery",
    "LogLevel",
    "MeshOptions",
    "ResolvedMesh",
    "Role",
    "WgBackend",
    "load_config",
    "parse_config",
    "resolve_mesh_settings",
    "split_host_port",
]


#: Persistent keepalive a client uses when ``keepAliveWg`` is not set: clients
#: sit behind NAT and must keep the mapping to their assigned peer open. One
#: value, the core's (``core/desired.py``).
DEFAULT_CLIENT_KEEPALIVE = _CORE_DEFAULT_CLIENT_KEEPALIVE

Role = Literal["peer", "client"]
IpDiscovery = Literal["outgoing", "public"]
WgBackend = Literal["auto", "kernel", "userspace", "memory"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

#: Keys whose values are secrets: never echoed back in an error message.
SECRET_KEYS = frozenset({"apiToken"})

SKIP_CERT_WARNING = "node-to-node TLS is always verified; skipCertVerification is ignored"
CA_TLS_WARNING = (
    "certificatePath/privateKeyPath/caCertificatePath are accepted but not used: "
    "CA-based TLS is not implemented; node-to-node TLS stays pinned to each node's "
    "own certificate"
)


class ConfigError(Exception):
    """A bad configuration. ``str(err)`` is a single line suitable for users.

    ``problems`` lists every problem found, one line each (``smegd --check``
    prints them all); ``str(err)`` is the first, with a count of the others.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems else [message]


# --------------------------------------------------------------------------- helpers


def _host_port(value: str | None) -> str | None:
    if value is None:
        return None
    split_host_port(value)
    return value.strip()


def _str_list(value: Any) -> Any:
    """Accept a single command string where a list of commands is expected."""
    if isinstance(value, str):
        return [value]
    return value


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        str_strip_whitespace=True,
    )


# --------------------------------------------------------------------------- models


class BaseConfiguration(_Model):
    """Defaults for every mesh (``baseConfiguration``); mesh flags override them."""

    ip_discovery: IpDiscovery = Field(
        default="outgoing",
        alias="ipDiscovery",
        description="How the node finds the IP address it advertises as its endpoint: "
        "'outgoing' = source address of the default route (without one: the first "
        "global, non-ULA address, with a warning); 'public' = on join-mesh, ask the "
        "member named in the invitation which address our calls come from (no "
        "third-party service; the address only: the advertised port stays the local "
        "WireGuard port, so a NAT must forward it unchanged; new-mesh has nobody to "
        "ask and uses 'outgoing'). Ignored when publicEndpoint is set.",
    )
    public_endpoint: str | None = Field(
        default=None,
        alias="publicEndpoint",
        description="Host (or host:port) other nodes use to reach this node, instead "
        "of discovering it. Peers only.",
    )
    role: Role = Field(
        default="peer",
        description="'peer' (reachable endpoint, forwards for its clients) or 'client' "
        "(behind NAT, talks to one assigned peer).",
    )
    advertise_route: bool = Field(
        default=False,
        alias="advertiseRoute",
        description="Advertise each of this node's meshes (and learned routes) into its "
        "other meshes, bridging them.",
    )
    advertise_defaults: bool = Field(
        default=False,
        alias="advertiseDefaults",
        description="Offer a default route (::/0) to the meshes of this node.",
    )
    keep_alive_wg: int | None = Field(
        default=None,
        alias="keepAliveWg",
        ge=0,
        le=65535,
        description="WireGuard persistent keepalive in seconds, 0 = off. Unset: "
        f"{DEFAULT_CLIENT_KEEPALIVE} for clients, off for peers.",
    )
    pre_up: list[str] = Field(
        default_factory=list,
        alias="preUp",
        description="Shell commands run before a mesh interface is brought up "
        "($IFNAME / %i is the interface name).",
    )
    post_up: list[str] = Field(
        default_factory=list,
        alias="postUp",
        description="Shell commands run after a mesh interface is up and configured.",
    )
    pre_down: list[str] = Field(
        default_factory=list,
        alias="preDown",
        description="Shell commands run before a mesh interface is removed (leave-mesh).",
    )
    post_down: list[str] = Field(
        default_factory=list,
        alias="postDown",
        description="Shell commands run after a mesh interface is removed. A failing hook "
        "of any kind is logged and does not stop the daemon.",
    )

    _lists = field_validator("pre_up", "post_up", "pre_down", "post_down", mode="before")(_str_list)

    @field_validator("public_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v:
            raise ValueError("must be a non-empty host or host:port")
        # The same rules the signed record applies to endpoints, checked now
        # rather than when the first mesh is created.
        host, port = split_host_port(v, default_port=51820)
        check_endpoint(join_host_port(host, port))
        return v


class Config(_Model):
    """The whole ``smegd`` YAML file."""

    # --- prototype keys -----------------------------------------------------
    certificate_path: Path | None = Field(
        default=None,
        alias="certificatePath",
        description="Prototype key for extra CA-based TLS (PEM certificate of this node). "
        "Accepted and checked to exist, but NOT USED yet: node-to-node TLS is pinned "
        "to each node's own certificate fingerprint. Setting it logs a warning.",
    )
    private_key_path: Path | None = Field(
        default=None,
        alias="privateKeyPath",
        description="Private key for certificatePath (PEM); checked to exist, not used yet.",
    )
    ca_certificate_path: Path | None = Field(
        default=None,
        alias="caCertificatePath",
        description="Prototype key: CA for extra CA-based TLS (PEM). Checked to exist, "
        "NOT USED yet: other nodes' certificates are not checked against it.",
    )
    skip_cert_verification: bool = Field(
        default=False,
        alias="skipCertVerification",
        description="Accepted for compatibility and ignored: node-to-node TLS is always "
        "verified. Setting it adds a warning.",
    )
    timeout: float = Field(
        default=5,
        gt=0,
        description="Seconds without an answer before a node-to-node call fails.",
    )
    max_channels: int = Field(
        default=64,
        alias="maxChannels",
        ge=1,
        le=1024,
        description="Most outgoing node-to-node connections kept open at once (the least "
        "recently used idle one is closed to make room; one idle for 60 s is closed too): "
        "a node's connections do not grow with the size of the mesh.",
    )
    grpc_port: int = Field(
        default=4000,
        alias="gRPCPort",
        ge=1,
        le=65535,
        description="Port of the node-to-node control plane.",
    )
    stub_wg: bool = Field(
        default=False,
        alias="stubWg",
        description="No WireGuard at all: control plane only (same as wgBackend: memory).",
    )
    sync_interval: float = Field(
        default=1,  # docs/SCALE.md: 100 % of 1,000 nodes in 1.75 s instead of 2.5 s, same bytes
        alias="syncInterval",
        gt=0,
        description="Seconds between gossip rounds while there are fresh changes.",
    )
    pull_interval: float = Field(
        default=3,  # docs/SCALE.md: bounds a node every push missed to ~3 s, +32 B/s per node
        alias="pullInterval",
        gt=0,
        description="Seconds between background anti-entropy pulls when idle.",
    )
    cluster_size: int = Field(
        default=64,
        alias="clusterSize",
        ge=1,
        description="Members per gossip cluster (members grouped by key order).",
    )
    inter_cluster_chance: float = Field(
        default=0.15,
        alias="interClusterChance",
        ge=0,
        le=1,
        description="Probability that one gossip target is taken from another cluster.",
    )
    branch: int = Field(default=3, ge=1, description="Gossip targets per round.")
    infection_count: int = Field(
        default=3,
        alias="infectionCount",
        ge=1,
        description="Rounds a node keeps gossiping after the last change it saw.",
    )
    heartbeat_interval: float = Field(
        default=2,  # docs/SCALE.md: crash pruned by 99 % of 3,000 nodes in 3.0 s, 84 B/s/node
        alias="heartbeatInterval",
        gt=0,
        description="Failure-detection period: each node probes one member every half "
        "of it, a silent member is suspected and pruned after one more period; clients "
        "unheard of for 3x this are pruned (docs/ARCHITECTURE.md, Liveness).",
    )
    log_level: LogLevel = Field(
        default="info", alias="logLevel", description="debug, info, warning or error."
    )
    log_format: LogFormat = Field(
        default="text",
        alias="logFormat",
        description="'text' (TIME LEVEL LOGGER: message) or 'json' (one object per line: "
        "time, level, logger, message and extra fields); --log-format overrides it. Under "
        "systemd's journal, lines carry no timestamp of ours and start with the priority "
        "prefix (<3> error ... <7> debug).",
    )
    base_configuration: BaseConfiguration = Field(
        default_factory=lambda: BaseConfiguration(),
        alias="baseConfiguration",
        description="Defaults for every mesh; new-mesh/join-mesh flags override them.",
    )

    # --- new keys -----------------------------------------------------------
    state_dir: Path = Field(
        default=Path(DEFAULT_STATE_DIR),
        alias="stateDir",
        description="Node identity (mode 0600) and persisted mesh state.",
    )
    control_socket: Path = Field(
        default=Path(DEFAULT_CONTROL_SOCKET),
        alias="controlSocket",
        description="Unix socket of the local API (smegctl), mode 0600.",
    )
    control_socket_group: str | None = Field(
        default=None,
        alias="controlSocketGroup",
        description="If set, the control socket is owned by this group with mode 0660.",
    )
    bind_address: str = Field(
        default="::",
        alias="bindAddress",
        description="Address the node-to-node listener binds to (port: gRPCPort). "
        "'::' = all addresses.",
    )
    wg_backend: WgBackend = Field(
        default="auto",
        alias="wgBackend",
        description="WireGuard implementation: auto (kernel if available, else "
        "wireguard-go), kernel, userspace (wireguard-go) or memory (none).",
    )
    wg_socket_dir: Path | None = Field(
        default=None,
        alias="wgSocketDir",
        description="Directory of the userspace backend's UAPI sockets. Unset: "
        "<stateDir>/wireguard, so several daemons on one machine never collide.",
    )
    api_listen: str | None = Field(
        default=None,
        alias="apiListen",
        description="host:port of the TCP REST API (off when unset); needs apiToken.",
    )
    api_token: str | None = Field(
        default=None,
        alias="apiToken",
        min_length=16,
        description="Bearer token required by the TCP API (at least 16 characters).",
    )
    api_token_file: Path | None = Field(
        default=None,
        alias="apiTokenFile",
        description="File holding the TCP API's bearer token (instead of apiToken, so the "
        "token stays out of this file; surrounding whitespace is ignored; at least 16 "
        "characters). Keep it mode 0600.",
    )
    api_tls_certificate: Path | None = Field(
        default=None,
        alias="apiTlsCertificate",
        description="PEM certificate (chain) of the TCP API: with apiTlsKey it serves "
        "HTTPS. Without TLS, an apiListen beyond loopback logs a warning at start.",
    )
    api_tls_key: Path | None = Field(
        default=None,
        alias="apiTlsKey",
        description="PEM private key of apiTlsCertificate (both or neither).",
    )
    dns_listen: str | None = Field(
        default=None,
        alias="dnsListen",
        description="host:port of the DNS server (UDP and TCP; off when unset).",
    )
    dns_ttl: int = Field(
        default=5, alias="dnsTtl", ge=0, le=86400, description="TTL in seconds of DNS answers."
    )
    dns_forwarder: str | None = Field(
        default=None,
        alias="dnsForwarder",
        description="host:port of a resolver for names outside smeg. (REFUSED when unset).",
    )
    metrics_listen: str | None = Field(
        default=None,
        alias="metricsListen",
        description="host:port serving Prometheus metrics at /metrics over plain HTTP, "
        "without authentication (off when unset): bind it to a private address "
        "(docs/OPERATIONS.md lists the metrics).",
    )
    accept_defaults: bool = Field(
        default=False,
        alias="acceptDefaults",
        description="Route unmatched traffic (::/0) to a mesh member offering advertiseDefaults. "
        "Off by default: it replaces this host's IPv6 default route.",
    )
    bridge_masquerade: bool = Field(
        default=True,
        alias="bridgeMasquerade",
        description="On a bridge, masquerade traffic forwarded from one mesh into another "
        "(docs/ROUTING.md). Needed with several bridges between the same meshes; off keeps "
        "senders' addresses but then only one bridge per pair of meshes carries traffic.",
    )
    gc_horizon: float = Field(
        default=86400,
        alias="gcHorizon",
        gt=0,
        description="Seconds the record of a departed or pruned node (tombstone) is kept "
        "before it is garbage-collected; must exceed 3 x heartbeatInterval.",
    )
    max_members: int = Field(
        default=10_000,
        alias="maxMembers",
        ge=2,
        le=100_000,
        description="Most nodes one mesh may hold (records of live, pruned and departed "
        "nodes); a record beyond it is refused on receipt and logged. The mesh's total "
        "record bytes are bounded too: maxMembers x 8 KiB (a record is at most 96 KiB).",
    )
    direct_peers: int = Field(
        default=0,
        alias="directPeers",
        ge=0,
        le=64,
        description="NAT traversal (docs/NAT.md): a client holds direct WireGuard sessions "
        "with at most this many other clients (mutual best by a pair hash), relayed by its "
        "assigned peer until a session is up and whenever it breaks. 0 = off (the "
        "default): a client holds its assigned peer only; 8 is the suggested value.",
    )
    direct_attempt: float = Field(
        default=15.0,
        alias="directAttempt",
        gt=0,
        le=600,
        description="NAT traversal: seconds a direct session attempt may take to come up "
        "before it counts as failed (then retried after directBackoff x 2^(failures-1), "
        "at most 300 s).",
    )
    direct_backoff: float = Field(
        default=5.0,
        alias="directBackoff",
        gt=0,
        le=300,
        description="NAT traversal: seconds before the first retry of a failed or broken "
        "direct session; doubled per further failure (+-20 % jitter), at most 300 s.",
    )

    _warnings: list[str] = PrivateAttr(default_factory=list)
    _file_token: str | None = PrivateAttr(default=None)

    _hp = field_validator("api_listen", "dns_listen", "dns_forwarder", "metrics_listen")(_host_port)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("bind_address")
    @classmethod
    def _bind(cls, v: str) -> str:
        v = v.strip("[]")
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(
                f"must be an IP address such as '::' or '0.0.0.0' (got {v!r})"
            ) from None
        return v

    @field_validator(
        "timeout", "sync_interval", "pull_interval", "heartbeat_interval", "gc_horizon"
    )
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number of seconds")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        problems = []  # all of them at once, one per line
        if self.api_token is not None and self.api_token_file is not None:
            problems.append("apiTokenFile: set apiToken or apiTokenFile, not both")
        if self.api_listen is not None and not self.api_token and self.api_token_file is None:
            problems.append(
                "apiToken: required when apiListen is set (at least 16 characters), "
                "or apiTokenFile naming a file that holds it"
            )
        if (self.api_tls_certificate is None) != (self.api_tls_key is None):
            problems.append("apiTlsKey: apiTlsCertificate and apiTlsKey go together")
        if self.api_listen is not None:
            from smegmesh.daemon.tcp_api import tcp_api_exposure_warning

            host = split_host_port(self.api_listen)[0]
            exposed = tcp_api_exposure_warning(host, tls=self.api_tls_certificate is not None)
            if exposed:
                self._warnings.append(f"apiListen: {exposed}")
        if self.stub_wg and "wg_backend" in self.model_fields_set and self.wg_backend != "memory":
            problems.append(
                f"wgBackend: {self.wg_backend!r} contradicts stubWg: true "
                "(stubWg means 'memory'); remove one of them"
            )
        if self.gc_horizon <= 3 * self.heartbeat_interval:
            problems.append(
                f"gcHorizon: must be greater than 3 x heartbeatInterval "
                f"({3 * self.heartbeat_interval:g} s)"
            )
        if (self.certificate_path is None) != (self.private_key_path is None):
            problems.append("privateKeyPath: certificatePath and privateKeyPath go together")
        if problems:
            raise ValueError("\n".join(problems))
        if self.skip_cert_verification:
            self._warnings.append(SKIP_CERT_WARNING)
        if self.certificate_path or self.ca_certificate_path:
            self._warnings.append(CA_TLS_WARNING)
        return self

    # --- derived values -----------------------------------------------------
    @property
    def warnings(self) -> list[str]:
        """Non-fatal remarks about the configuration, for the log."""
        return list(self._warnings)

    @property
    def effective_wg_backend(self) -> WgBackend:
        return "memory" if self.stub_wg else self.wg_backend

    @property
    def effective_wg_socket_dir(self) -> Path:
        return (
            self.wg_socket_dir if self.wg_socket_dir is not None else self.state_dir / "wireguard"
        )

    @property
    def api_bearer_token(self) -> str | None:
        """The TCP API's token: ``apiToken``, or the one read from ``apiTokenFile``."""
        if self.api_token is not None:
            return self.api_token
        if self._file_token is None and self.api_token_file is not None:
            self._file_token = read_api_token(self.api_token_file)
        return self._file_token

    @property
    def api_listen_addr(self) -> tuple[str, int] | None:
        return split_host_port(self.api_listen) if self.api_listen else None

    @property
    def dns_listen_addr(self) -> tuple[str, int] | None:
        return split_host_port(self.dns_listen) if self.dns_listen else None

    @property
    def metrics_listen_addr(self) -> tuple[str, int] | None:
        return split_host_port(self.metrics_listen) if self.metrics_listen else None


# --------------------------------------------------------------------------- per mesh


class MeshOptions(_Model):
    """Per-mesh overrides (``new-mesh``/``join-mesh`` flags); ``None`` = use the base."""

    # API input: JSON types as documented (no "1" for 1 or 0 for false).
    model_config = ConfigDict(strict=True)

    wgport: int | None = Field(
        default=None, ge=1, le=65535, description="WireGuard listen port (unset: first free one)."
    )
    endpoint: str | None = Field(
        default=None, min_length=1, description="Host other nodes use to reach this node."
    )
    role: Role | None = None
    keepalive: int | None = Field(
        default=None, ge=0, le=65535, description="Persistent keepalive in seconds, 0 = off."
    )
    advertise_routes: bool | None = None
    advertise_defaults: bool | None = None
    invite_policy: Literal["admins", "peers", "members"] | None = Field(
        default=None,
        description="new-mesh only: who may admit new nodes (admins, peers, members; "
        "default peers).",
    )


class ResolvedMesh(_Model):
    """Concrete settings of one mesh: ``baseConfiguration`` with the flags applied."""

    wg_port: int | None  # None: pick a free port
    endpoint: str | None  # None: discover with ip_discovery
    ip_discovery: IpDiscovery
    role: Role
    keepalive: int  # 0 = off
    advertise_routes: bool
    advertise_defaults: bool
    pre_up: list[str]
    post_up: list[str]
    pre_down: list[str]
    post_down: list[str]


def resolve_mesh_settings(base: BaseConfiguration, opts: MeshOptions | None = None) -> ResolvedMesh:
    """Merge per-mesh ``opts`` over ``base``."""
    o = opts or MeshOptions()
    role: Role = o.role if o.role is not None else base.role
    keepalive = o.keepalive if o.keepalive is not None else base.keep_alive_wg
    if keepalive is None:
        keepalive = DEFAULT_CLIENT_KEEPALIVE if role == "client" else 0
    return ResolvedMesh(
        wg_port=o.wgport,
        endpoint=o.endpoint if o.endpoint is not None else base.public_endpoint,
        ip_discovery=base.ip_discovery,
        role=role,
        keepalive=keepalive,
        advertise_routes=(
            o.advertise_routes if o.advertise_routes is not None else base.advertise_route
        ),
        advertise_defaults=(
            o.advertise_defaults if o.advertise_defaults is not None else base.advertise_defaults
        ),
        pre_up=list(base.pre_up),
        post_up=list(base.post_up),
        pre_down=list(base.pre_down),
        post_down=list(base.post_down),
    )


# --------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _loc_str(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel]:
    model: type[BaseModel] = Config
    for part in loc:
        if not isinstance(part, str):
            continue
        for name, f in model.model_fields.items():
            if part in (name, f.alias):
                ann = f.annotation
                if isinstance(ann, type) and issubclass(ann, BaseModel):
                    model = ann
                break
    return model


def _describe(err: ErrorDetails) -> str:
    loc = err["loc"]
    typ = err["type"]
    inp = err.get("input")
    ctx = err.get("ctx") or {}
    if typ == "extra_forbidden":
        parent = loc[:-1]
        model = _model_at(parent)
        where = f" in {_loc_str(parent)}" if parent else ""
        keys = [f.alias or n for n, f in model.model_fields.items()]
        close = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        allowed = ", ".join(sorted(keys))
        return f"{_loc_str(loc)}: unknown key{where}{hint}; allowed keys: {allowed}"
    if typ == "literal_error":
        return f"{_loc_str(loc)}: must be one of {ctx.get('expected')} (got {inp!r})"
    if typ == "value_error" and not loc:
        # model-level check: the message starts with the key it is about
        return str(ctx.get("error", err["msg"]))
    got = f" (got {inp!r})" if not isinstance(inp, dict | list) else ""
    if any(part in SECRET_KEYS for part in loc):
        got = ""  # a secret, even a bad one, is never echoed
    msg = err["msg"]
    if typ == "value_error":
        msg = str(ctx.get("error", msg))
    elif typ in ("int_type", "int_parsing", "int_from_float"):
        msg = "must be an integer"
    elif typ in ("float_type", "float_parsing"):
        msg = "must be a number"
    elif typ in ("bool_type", "bool_parsing"):
        msg = "must be true or false"
    elif typ in ("string_type",):
        msg = "must be a string"
    elif typ in ("list_type",):
        msg = "must be a list of strings"
    elif typ in ("model_type", "model_attributes_type", "dict_type"):
        msg = "must be a mapping of keys"
    else:
        msg = msg[0].lower() + msg[1:] if msg else msg
        msg = msg.replace("Input should be", "must be").replace("input should be", "must be")
    return f"{_loc_str(loc)}: {msg}{got}"


def parse_config(data: Any, base_dir: Path | None = None, source: str = "config") -> Config:
    """Validate already-parsed YAML ``data``; relative cert paths resolve against ``base_dir``.

    Certificate files must exist. Raises :class:`ConfigError`.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    problems: list[str] = []
    cfg: Config | None = None
    try:
        # YAML keys are the camelCase names only (by_name=False): snake_case is an error
        cfg = Config.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as e:
        for err in e.errors():
            problems.extend(_describe(err).splitlines())

    # Certificate files are checked even when other keys are bad: every problem at once.
    updates: dict[str, Path] = {}
    for attr, key in (
        ("certificate_path", "certificatePath"),
        ("private_key_path", "privateKeyPath"),
        ("ca_certificate_path", "caCertificatePath"),
    ):
        raw = data.get(key)
        if not isinstance(raw, str | Path) or not str(raw).strip():
            continue
        p = Path(str(raw).strip()).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if not p.is_file():
            problems.append(f"{key}: file not found: {p}")
        updates[attr] = p
    file_token = None
    if cfg is not None:
        for attr in ("api_token_file", "api_tls_certificate", "api_tls_key"):
            p = getattr(cfg, attr)
            if p is not None:
                p = p.expanduser()
                updates[attr] = p if p.is_absolute() or base_dir is None else base_dir / p
        try:
            if "api_token_file" in updates:
                file_token = read_api_token(updates["api_token_file"], source)
            if "api_tls_certificate" in updates:
                check_api_tls(updates["api_tls_certificate"], updates["api_tls_key"], source)
        except ConfigError as e:
            problems.extend(m.removeprefix(f"{source}: ") for m in e.problems)
    if problems:
        lines = [f"{source}: {m}" for m in problems]
        extra = f" (and {len(lines) - 1} more problem(s))" if len(lines) > 1 else ""
        raise ConfigError(lines[0] + extra, lines)
    assert cfg is not None
    if updates:
        warnings = cfg.warnings
        cfg = cfg.model_copy(update=updates)
        cfg._warnings = warnings
    cfg._file_token = file_token
    return cfg


#: Largest token file read (a token is a line, not a document).
MAX_TOKEN_FILE_BYTES = 4096


def read_api_token(path: Path, source: str = "config") -> str:
    """The bearer token held in ``path`` (``apiTokenFile``); :class:`ConfigError` if unusable.

    The messages name the file and the problem, never the token.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{source}: apiTokenFile: file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"{source}: apiTokenFile: cannot read {path}: {e.strerror}") from None
    if len(raw) > MAX_TOKEN_FILE_BYTES:
        raise ConfigError(
            f"{source}: apiTokenFile: {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes "
            "(it must hold the token alone)"
        )
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(
            f"{source}: apiTokenFile: {path} must hold a printable ASCII token"
        ) from None
    if not token.isprintable() or any(c.isspace() for c in token):
        raise ConfigError(
            f"{source}: apiTokenFile: {path} must hold one token: printable ASCII, no spaces"
        )
    if len(token) < 16:
        raise ConfigError(
            f"{source}: apiTokenFile: the token in {path} is too short "
            f"({len(token)} characters, at least 16)"
        )
    return token


def check_api_tls(cert: Path, key: Path, source: str = "config") -> None:
    """Load the TCP API's certificate and key once, so a bad pair fails at start, named."""
    for name, p in (("apiTlsCertificate", cert), ("apiTlsKey", key)):
        if not p.is_file():
            raise ConfigError(f"{source}: {name}: file not found: {p}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except OSError as e:  # ssl.SSLError is an OSError
        reason = getattr(e, "reason", None) or e.strerror or str(e)
        raise ConfigError(
            f"{source}: apiTlsCertificate/apiTlsKey: cannot load {cert} with key {key}: {reason}"
        ) from None


def load_config(path: str | Path) -> Config:
    """Read and validate the YAML file at ``path``. Raises :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = e.problem or e.context or "invalid YAML"
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML syntax error: {' '.join(str(e).split())}") from None
    return parse_config(data, base_dir=path.resolve().parent, source=str(path))
