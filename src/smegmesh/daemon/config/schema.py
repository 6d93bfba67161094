"""The schema of the ``smegd`` YAML file (SPEC §6): :class:`Config` and ``baseConfiguration``.

The YAML file uses the prototype's camelCase keys; the Python models expose
snake_case attributes with the YAML key as alias (``Config.grpc_port`` is
``gRPCPort``). The per-mesh keys of ``baseConfiguration`` come from the table
of :mod:`smegmesh.daemon.meshopts`.
"""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from smegmesh.core.endpoint import join_host_port, split_host_port
from smegmesh.core.record import check_endpoint
from smegmesh.daemon.config.files import group_id, read_api_token
from smegmesh.daemon.config.mesh import base_fields
from smegmesh.daemon.config.model import _host_port, _Model, _socket_path, _str_list
from smegmesh.daemon.defaults import DEFAULT_CONTROL_SOCKET, DEFAULT_STATE_DIR
from smegmesh.daemon.meshopts import DEFAULT_CLIENT_KEEPALIVE, IpDiscovery, Role

__all__ = [
    "CA_TLS_WARNING",
    "DEFAULT_CLIENT_KEEPALIVE",
    "SKIP_CERT_WARNING",
    "BaseConfiguration",
    "Config",
    "Dissemination",
    "IpDiscovery",
    "LogFormat",
    "LogLevel",
    "Role",
    "WgBackend",
]

WgBackend = Literal["auto", "kernel", "userspace", "memory"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
Dissemination = Literal["gossip", "tree"]

SKIP_CERT_WARNING = "node-to-node TLS is always verified; skipCertVerification is ignored"
CA_TLS_WARNING = (
    "certificatePath/privateKeyPath/caCertificatePath are accepted but not used: "
    "CA-based TLS is not implemented; node-to-node TLS stays pinned to each node's "
    "own certificate"
)


class BaseConfiguration(base_fields()):  # type: ignore[misc]
    """Defaults for every mesh (``baseConfiguration``); mesh flags override them."""

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
        le=3600,
        description="Seconds without an answer before a node-to-node call fails.",
    )
    max_channels: int = Field(
        default=64,
        alias="maxChannels",
        ge=1,
        le=1024,
        description="Most outgoing node-to-node connections open at once (the least "
        "recently used idle one is closed to make room, a busy one never: a call then waits "
        "for one to free, within its timeout; one idle for 60 s is closed too): "
        "a node's connections do not grow with the size of the mesh.",
    )
    datagrams: bool = Field(
        default=True,
        alias="datagrams",
        description="Send small idempotent node-to-node calls (probes, acks, in-sync digest "
        "pulls, small pushes) as single authenticated UDP datagrams to the gRPCPort number, "
        "the gRPC stream carrying the rest and any call datagrams do not answer in time; "
        "UDP on gRPCPort must be open for it (otherwise calls fall back to the stream). "
        "false: every call on the gRPC stream and no UDP socket.",
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
        le=86400,
        description="Seconds between gossip rounds while there are fresh changes.",
    )
    pull_interval: float = Field(
        default=3,  # docs/SCALE.md: bounds a node every push missed to ~3 s, +32 B/s per node
        alias="pullInterval",
        gt=0,
        le=86400,
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
        description=(
            "Rounds a node keeps gossiping an item it learnt (at most: every 2 targets"
            " that already held it cost the item one round). Late rounds announce keys"
            " and versions; a target pulls what it lacks (docs/SCALE.md, Offers)."
        ),
    )
    dissemination: Dissemination = Field(
        default="gossip",
        description="How a node forwards changes it received: 'gossip' (to random members) or "
        "'tree' (along a spanning tree; the periodic rounds offer to one member, one round unless "
        "infectionCount is set; pushes ask for an answer once a second): a third of gossip's "
        "bytes under churn (docs/SCALE.md, 15-19). Switch members one at a time, a restart each.",
    )
    tree_fanout: int = Field(
        default=4, alias="treeFanout", ge=2, le=64, description="Children per member in the tree."
    )
    heartbeat_interval: float = Field(
        default=2,  # docs/SCALE.md: crash pruned by 99 % of 3,000 nodes in 3.0 s, 84 B/s/node
        alias="heartbeatInterval",
        gt=0,
        le=86400,
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
        description="If set, the control socket is owned by this group (one this host has) "
        "with mode 0660.",
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
        "characters). Keep it mode 0600. A reload (SIGHUP) takes a new token at once.",
    )
    api_tls_certificate: Path | None = Field(
        default=None,
        alias="apiTlsCertificate",
        description="PEM certificate (chain) of the TCP API: with apiTlsKey it serves "
        "HTTPS; a reload (SIGHUP) serves a renewed pair. Without TLS, an apiListen beyond "
        "loopback logs a warning at start.",
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
        "Off by default: it replaces this host's IPv6 default route. A peer passes its "
        "clients' default traffic on to its exit only with it; without an exit that "
        "traffic is dropped, not sent out of this host's uplink (docs/ROUTING.md, "
        "Forwarding guard).",
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
        le=315_360_000,
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
        "at most 320 s).",
    )
    direct_backoff: float = Field(
        default=5.0,
        alias="directBackoff",
        gt=0,
        le=300,
        description="NAT traversal: retry period of a failed or broken direct session "
        "(the first retry comes after 0.5-1.5 periods); doubled per further failure, at most "
        "320 s. Retries start in slots both ends of a pair share (the wall clock and the "
        "pair), so they try together; keep it the same on every client of a mesh.",
    )

    _warnings: list[str] = PrivateAttr(default_factory=list)
    _file_token: str | None = PrivateAttr(default=None)
    #: SHA-256 of the API's certificate and key files as loaded (a reload compares them)
    _tls_digest: bytes | None = PrivateAttr(default=None)

    _hp = field_validator("api_listen", "dns_listen", "dns_forwarder", "metrics_listen")(_host_port)
    _sock = field_validator("control_socket")(_socket_path)

    @field_validator("log_level", "log_format", "dissemination", mode="before")
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

    @field_validator("control_socket_group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v is not None:
            group_id(v)  # at --check, not once every other listener is up
        return v

    @field_validator(
        "timeout", "sync_interval", "pull_interval", "heartbeat_interval", "gc_horizon"
    )
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number of seconds")
        return v

    @field_validator(
        "sync_interval",
        "pull_interval",
        "heartbeat_interval",
        "gc_horizon",
        "direct_attempt",
        "direct_backoff",
    )
    @classmethod
    def _whole_ms(cls, v: float) -> float:
        # The engine counts these in whole milliseconds: less would be 0, which it refuses.
        if v < 0.001:
            raise ValueError("must be at least 0.001 (1 ms: smegd counts it in ms)")
        return v

    def _rule_problems(self) -> list[str]:
        """What breaks a rule between keys: all of it, one problem per line."""
        problems = []
        if self.api_token is not None and self.api_token_file is not None:
            problems.append("apiTokenFile: set apiToken or apiTokenFile, not both")
        if self.api_listen is not None and not self.api_token and self.api_token_file is None:
            problems.append(
                "apiToken: required when apiListen is set (at least 16 characters), "
                "or apiTokenFile naming a file that holds it"
            )
        if (self.api_tls_certificate is None) != (self.api_tls_key is None):
            problems.append("apiTlsKey: apiTlsCertificate and apiTlsKey go together")
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
        return problems

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        problems = self._rule_problems()
        if problems:
            raise ValueError("\n".join(problems))
        if self.api_listen is not None:
            from smegmesh.daemon.tcp_api import tcp_api_exposure_warning

            host = split_host_port(self.api_listen)[0]
            exposed = tcp_api_exposure_warning(host, tls=self.api_tls_certificate is not None)
            if exposed:
                self._warnings.append(f"apiListen: {exposed}")
        if self.skip_cert_verification:
            self._warnings.append(SKIP_CERT_WARNING)
        if self.certificate_path or self.ca_certificate_path:
            self._warnings.append(CA_TLS_WARNING)
        return self

    def check_rules(self) -> None:
        """The rules between keys, again (a reload merges two files); ValueError if broken."""
        problems = self._rule_problems()
        if problems:
            raise ValueError("\n".join(problems))

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
