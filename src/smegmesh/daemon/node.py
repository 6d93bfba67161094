"""``smegd``: the daemon. A thin asyncio adapter around the pure engine.

Per mesh a ``MeshNode`` (core) decides; this module only moves bytes (gRPC
transport), keeps time, persists state, and hands the engine's desired
configuration to the reconciler (WireGuard + host networking) in a worker
thread. It implements the local API's ``NodeService``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import functools
import gc
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from smegmesh.core.addressing import (
    generate_mesh_id,
    mesh_prefix,
    overlay_address,
    validate_mesh_id,
)
from smegmesh.core.authority import copy_authority
from smegmesh.core.cert import Founding, Policy, founding_name
from smegmesh.core.desired import desired_config, interface_name
from smegmesh.core.endpoint import join_host_port, split_host_port
from smegmesh.core.gossip import GossipParams
from smegmesh.core.identity import NodeIdentity, key_to_text
from smegmesh.core.invite import Bootstrap, TokenError, parse_token
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.meshnode import Call, Changed, MeshNode, MeshSettings, NotAllowed, Out, Relay
from smegmesh.core.messages import Ack, JoinReply, Observed, Refusal, WhereAmI, WhoAmI, YouAre
from smegmesh.core.multimesh import MeshRouting, route_meshes
from smegmesh.core.record import RecordError, Role, check_endpoint
from smegmesh.core.routing import RoutingResult
from smegmesh.core.state import MeshState
from smegmesh.core.wgdiff import AddPeer
from smegmesh.core.wire import WireError, decode, decode_item, encode, encode_item
from smegmesh.daemon import service as svc
from smegmesh.daemon import views
from smegmesh.daemon.api_models import MeshDetail, MeshSummary, PingResponse, StatusResponse
from smegmesh.daemon.authority_ops import AuthorityOps
from smegmesh.daemon.config import (
    VERSION,
    Config,
    ConfigError,
    MeshOptions,
    resolve_mesh_settings,
)
from smegmesh.daemon.devices_ops import DEVICE_REQUESTS, DeviceOps
from smegmesh.daemon.direct import DirectManager
from smegmesh.daemon.direct import annotate as annotate_paths
from smegmesh.daemon.events import (
    WG_PEER_EVENTS_MAX,
    EventBus,
    HandshakeEvents,
    MemberEvents,
    route_events,
    wg_peer_events,
)
from smegmesh.daemon.joinretry import JOIN_DEADLINE_TIMEOUTS
from smegmesh.daemon.joinretry import attempts as join_attempts
from smegmesh.daemon.logsetup import configure_logging
from smegmesh.daemon.metrics import MeteredRpcClient, Metrics, serve_metrics
from smegmesh.daemon.persist import PersistError, atomic_write
from smegmesh.daemon.ports import choose_wg_port
from smegmesh.daemon.ratelog import RateLog
from smegmesh.daemon.sdnotify_glue import Notifier
from smegmesh.daemon.statelock import StateDirLocked, StateLock
from smegmesh.daemon.transport import (
    Refused,
    RpcError,
    RpcServer,
    TlsIdentity,
    caller_address,
)

log = logging.getLogger("smegd")

DEFAULT_WG_PORT = 51820


def release_free_memory() -> None:
    """Give freed heap pages back to the OS after start-up (imports churn a lot)."""
    gc.collect()
    gc.freeze()  # start-up objects live for ever: keep the collector off them
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas (default up to 8 per core).

    smegd's threads (gRPC's event engine, the WireGuard worker, wireguard-go
    log pumps) each grew an arena that was mostly empty; two are plenty for a
    daemon whose work runs on one event loop (about 2 MB less RSS in a 30-peer
    mesh, bench/join_bench.py). ``MALLOC_ARENA_MAX`` in the environment wins.
    Must run before those threads start.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)


def now_ms() -> int:
    return int(time.time() * 1000)


_ULA = ipaddress.ip_network("fc00::/7")  # overlay prefixes live here


def outgoing_address() -> str | None:
    """The source address of the interface the default route leaves by (no packet sent).

    Without a default route (an isolated host or namespace) the first global
    unicast address that is not on a smegmesh interface and not a ULA, with a
    warning: it may not be the address other nodes can reach.
    """
    for fam, probe in ((socket.AF_INET6, "2001:db8::1"), (socket.AF_INET, "192.0.2.1")):
        with contextlib.suppress(OSError), socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            addr = ipaddress.ip_address(s.getsockname()[0].split("%")[0])
            if not (addr.is_loopback or addr.is_link_local or addr.is_unspecified):
                return str(addr)
    fallback = _first_global_address()
    if fallback is not None:
        log.warning(
            "ipDiscovery outgoing: no default route; advertising %s, the first global "
            "address (set publicEndpoint if other nodes reach this one elsewhere)",
            fallback,
        )
    return fallback


def _first_global_address() -> str | None:
    # pyroute2's synchronous API runs an event loop of its own, which cannot
    # nest in the daemon's: ask from a short-lived thread (a rare path).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            return pool.submit(_list_first_global_address).result(timeout=10)
        except Exception as e:
            log.debug("cannot list addresses: %s", e)
            return None


def _list_first_global_address() -> str | None:
    try:
        from pyroute2 import IPRoute
    except ImportError:
        return None
    try:
        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") or "" for link in ipr.get_links()}
            for msg in ipr.get_addr():
                if msg["scope"] != 0:  # RT_SCOPE_UNIVERSE: global addresses only
                    continue
                if names.get(msg["index"], "").startswith("smeg"):
                    continue
                text = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
                if not text:
                    continue
                addr = ipaddress.ip_address(text)
                if addr.is_loopback or addr.is_link_local or (addr.version == 6 and addr in _ULA):
                    continue
                return str(addr)
    except Exception as e:  # netlink unavailable: nothing to offer
        log.debug("cannot list addresses: %s", e)
    return None


@dataclass
class MeshRuntime:
    mesh_id: str
    ifname: str
    node: MeshNode
    opts: dict[str, Any]
    listen_port: int
    keepalive: int
    advertise_routes: bool
    advertise_defaults: bool
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    dirty_wg: bool = True
    dirty_disk: bool = True
    calls: set[asyncio.Task[None]] = field(default_factory=set)
    hooks: dict[str, list[str]] = field(default_factory=dict)
    up: bool = False
    #: ``join-mesh`` in progress: no WireGuard interface until a member admits us
    #: (a refused join must leave nothing behind).
    joining: bool = False
    #: the alias-clash message last reported, and the state version it was computed at
    alias_clash: str | None = None
    alias_checked: int = -1


def run_hooks(stage: str, commands: list[str], ifname: str, mesh_id: str) -> None:
    """Run wg-quick style hook commands; ``%i`` and ``$IFNAME`` name the interface."""
    for cmd in commands:
        line = cmd.replace("%i", ifname)
        env = {**os.environ, "IFNAME": ifname, "SMEG_MESH_ID": mesh_id}
        try:
            res = subprocess.run(
                ["/bin/sh", "-c", line], env=env, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            log.error("mesh %s: %s hook %r failed: %s", mesh_id, stage, line, e)
            continue
        if res.returncode != 0:
            log.error(
                "mesh %s: %s hook %r exited %d: %s",
                mesh_id,
                stage,
                line,
                res.returncode,
                res.stderr.strip()[:200],
            )
        else:
            log.info("mesh %s: ran %s hook %r", mesh_id, stage, line)


class Daemon(AuthorityOps, DeviceOps):
    """One node: its identity, its meshes, the transport, and the local API."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.meshes: dict[str, MeshRuntime] = {}
        self._stop = asyncio.Event()
        self._wg_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wg")
        self._reconcile_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.rng = random.Random()
        self.gossip = GossipParams(
            sync_interval_ms=int(config.sync_interval * 1000),
            pull_interval_ms=int(config.pull_interval * 1000),
            cluster_size=config.cluster_size,
            inter_cluster_chance=config.inter_cluster_chance,
            branch=config.branch,
            infection_count=config.infection_count,
        )
        self.liveness = LivenessParams.from_heartbeat(int(config.heartbeat_interval * 1000))
        self.dns: Any = None
        self._dns_serial = int(time.time())
        self._dns_key: tuple[tuple[str, int], ...] | None = None  # meshes+versions served
        self.api_servers: list[Any] = []
        self.rpc_server: RpcServer | None = None
        self.backend: Any = None
        self.reconciler: Any = None
        self.wg_status: dict[str, Any] = {}
        self.routing: RoutingResult | None = None
        self._bridge_nat: frozenset[str] | None = None  # applied (None: not yet)
        self._bridge_nat_error: frozenset[str] | None = None  # last set that failed
        #: items members sent that the mesh's rules refused (no admission proof,
        #: forged or non-member prunes...): one summary per sender per minute
        self.dropped_items = RateLog(log, "dropped", unit="items", prep="from member")
        self.state_lock = StateLock(self.state_dir)
        self.metrics = Metrics(self)
        self.metrics_server: Any = None
        #: lifecycle events (GET /v1/events, smegctl watch, the INFO log lines);
        #: others publish through ``self.events.publish(...)``
        self.events = EventBus(first_seq=now_ms())
        self.member_events = MemberEvents(self.events)
        self.handshakes = HandshakeEvents(self.events)
        self._handshakes_polled = 0.0
        #: NAT traversal (docs/NAT.md): direct client-to-client sessions
        self.direct = DirectManager(self, config.direct_peers)

    # ------------------------------------------------------------------ identity & disk
    def _load_identity(self) -> NodeIdentity:
        path = self.state_dir / "identity.key"
        if path.exists():
            seed = path.read_bytes()
            if len(seed) != 32:
                raise SystemExit(f"smegd: {path} is corrupt (expected 32 bytes); move it away")
            return NodeIdentity.from_seed(seed)
        ident = NodeIdentity.generate()
        atomic_write(path, ident.seed, mode=0o600)
        log.info("created node identity %s", key_to_text(ident.wg_public_key))
        return ident

    def _new_state(self, mesh_id: str) -> MeshState:
        # Meshes with a self-certifying id have an authority: records need
        # admission proofs. (Older meshes keep working without one.)
        return MeshState(
            mesh_id,
            gc_horizon_ms=int(self.config.gc_horizon * 1000),
            admission=founding_name(mesh_id) is not None,
            max_members=self.config.max_members,
        )

    def _mesh_dir(self) -> Path:
        return self.state_dir / "meshes"

    def _save_mesh(self, rt: MeshRuntime) -> None:
        d = self._mesh_dir()
        meta = {"mesh_id": rt.mesh_id, "opts": rt.opts, "listen_port": rt.listen_port}
        items = [encode_item(i) for i in rt.node.mesh.all_items()]
        try:
            atomic_write(d / f"{rt.mesh_id}.json", json.dumps(meta).encode())
            atomic_write(d / f"{rt.mesh_id}.state", msgpack.packb(items, use_bin_type=True))
            rt.dirty_disk = False
        except PersistError as e:
            log.error("%s (state kept in memory; will retry)", e)

    def _load_meshes(self) -> list[tuple[dict[str, Any], list[Any]]]:
        out: list[tuple[dict[str, Any], list[Any]]] = []
        d = self._mesh_dir()
        if not d.is_dir():
            return out
        for meta_path in sorted(d.glob("*.json")):
            try:
                meta = json.loads(meta_path.read_text())
                validate_mesh_id(meta["mesh_id"])
                state_path = meta_path.with_suffix(".state")
                raw = state_path.read_bytes() if state_path.exists() else msgpack.packb([])
                items = []
                for obj in msgpack.unpackb(raw, raw=False, strict_map_key=True):
                    with contextlib.suppress(WireError, RecordError):
                        items.append(decode_item(obj))
                out.append((meta, items))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("ignoring unreadable mesh state %s: %s", meta_path, e)
        return out

    # ------------------------------------------------------------------ startup
    async def start(self) -> None:
        cfg = self.config
        for w in cfg.warnings:
            log.warning("%s", w)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)
        self.state_lock.acquire()  # one daemon per state directory (StateDirLocked)
        self.identity = self._load_identity()
        self.tls = TlsIdentity.load_or_create(self.state_dir)
        self.rpc = MeteredRpcClient(
            self.metrics, self.identity, timeout=float(cfg.timeout), max_channels=cfg.max_channels
        )
        self.rpc_server = RpcServer(
            self.tls, self.metrics.handler(self._on_rpc), is_member=self._is_member_anywhere
        )
        port = await self.rpc_server.start(cfg.bind_address, cfg.grpc_port)
        self._rpc_port = port
        log.info(
            "node %s listening for mesh traffic on port %d",
            key_to_text(self.identity.wg_public_key),
            port,
        )

        from smegmesh.net.host import HostNetwork, MemoryHost
        from smegmesh.wg.factory import create_backend
        from smegmesh.wg.reconcile import Reconciler

        kind = cfg.effective_wg_backend
        self.backend = create_backend(kind, socket_dir=str(cfg.effective_wg_socket_dir))
        host = MemoryHost() if kind == "memory" else HostNetwork()
        self.reconciler = Reconciler(self.backend, host)
        if not cfg.bridge_masquerade:
            log.info(
                "bridgeMasquerade is off: a bridge forwards without address translation "
                "(replies through another bridge between the same meshes are dropped)"
            )
        log.info("WireGuard backend: %s", getattr(self.backend, "kind", kind))

        from smegmesh.daemon.api import create_app, serve_tcp, serve_unix

        if cfg.api_listen:
            await self._serve_tcp_api(create_app, serve_tcp)
        if cfg.dns_listen:
            from smegmesh.dns.names import NameView
            from smegmesh.dns.server import DnsServer

            self.dns = DnsServer(NameView(), ttl=cfg.dns_ttl, forwarder=cfg.dns_forwarder)
            dh, dp = cfg.dns_listen_addr  # type: ignore[misc]
            await self.dns.start(dh, dp)
            log.info("DNS on %s", cfg.dns_listen)
        if cfg.metrics_listen:
            mh, mp = cfg.metrics_listen_addr  # type: ignore[misc]
            self.metrics_server = await serve_metrics(self.metrics, mh, mp)
            log.info("Prometheus metrics on http://%s/metrics", cfg.metrics_listen)

        for meta, items in self._load_meshes():
            opts = MeshOptions(**meta.get("opts", {}))
            state = self._new_state(meta["mesh_id"])
            state.apply_many(items, now_ms())
            rt = self._add_runtime(meta["mesh_id"], opts, state, meta.get("listen_port"))
            self._emit(rt, rt.node.start(now_ms()))
            self.member_events.track(rt.mesh_id, state, "restored")
            log.info("rejoined mesh %s (%d nodes known)", rt.mesh_id, len(state.live_records()))
        self._tasks.append(asyncio.create_task(self._reconcile_loop()))
        self._tasks.append(asyncio.create_task(self._persist_loop()))
        if cfg.direct_peers > 0:
            self._tasks.append(asyncio.create_task(self.direct.run()))
        # The control socket comes last: once `/v1/health` answers on it, every
        # other listener is bound and the saved meshes are restored.
        self.api_servers.append(
            await serve_unix(create_app(self), cfg.control_socket, group=cfg.control_socket_group)
        )
        log.info("local API on %s", cfg.control_socket)
        release_free_memory()

    async def stop(self) -> None:
        for rt in self.meshes.values():
            if rt.task:
                rt.task.cancel()
            if rt.dirty_disk and not rt.joining:
                self._save_mesh(rt)
        for t in self._tasks:
            t.cancel()
        self.events.close()  # ends the event streams: the API servers stop at once
        for s in [*self.api_servers, *([self.metrics_server] if self.metrics_server else [])]:
            with contextlib.suppress(Exception):
                await s.stop()
        if self.dns is not None:
            await self.dns.close()
        if self.rpc_server:
            await self.rpc_server.stop()
        if hasattr(self, "rpc"):  # absent when start() failed early (state lock, state dir)
            await self.rpc.close()
        # WireGuard interfaces stay up across a daemon restart (traffic keeps
        # flowing); `leave-mesh` removes them.
        self._wg_pool.shutdown(wait=False, cancel_futures=True)
        self.state_lock.release()

    async def _serve_tcp_api(self, create_app: Any, serve_tcp: Any) -> None:
        """The TCP API (``apiListen``): token, optional TLS (exposure: a config warning)."""
        cfg = self.config
        h, p = cfg.api_listen_addr  # type: ignore[misc]
        try:
            token = cfg.api_bearer_token
        except ConfigError as e:
            raise svc.ServiceError("config", str(e), 500) from None
        app = create_app(self, token=token)
        server = await serve_tcp(
            app, h, p, tls_certificate=cfg.api_tls_certificate, tls_key=cfg.api_tls_key
        )
        self.api_servers.append(server)
        tls = cfg.api_tls_certificate is not None
        log.info(
            "TCP API on %s (%s, bearer token required)", cfg.api_listen, "HTTPS" if tls else "HTTP"
        )

    # ------------------------------------------------------------------ meshes
    def _endpoint_host(self, settings: Any) -> str | None:
        if settings.endpoint:
            return str(settings.endpoint)
        return outgoing_address()

    def _add_runtime(
        self, mesh_id: str, opts: MeshOptions, state: MeshState, listen_port: int | None
    ) -> MeshRuntime:
        s = resolve_mesh_settings(self.config.base_configuration, opts)
        role = Role(s.role)
        port = listen_port or choose_wg_port(
            mesh_id, s.wg_port, {rt.listen_port for rt in self.meshes.values()}
        )
        host = self._endpoint_host(s)
        if role == Role.PEER and host is None:
            raise svc.unavailable(
                "cannot find this node's address: "
                "set baseConfiguration.publicEndpoint or --endpoint"
            )
        host_only = host
        if host:
            try:  # "host", "host:port", "v6", "[v6]" or "[v6]:port": keep the host
                host_only = split_host_port(host, default_port=0)[0]
            except ValueError as e:
                raise svc.invalid_argument(f"endpoint: {host!r}: {e}") from None
        if host_only:
            # Checked before anything is registered: a bad --endpoint is the
            # user's error (400), not a record the engine fails to sign (500).
            try:
                check_endpoint(join_host_port(host_only, port))
            except ValueError as e:
                raise svc.invalid_argument(
                    f"endpoint: {host_only!r} is not an IP address or DNS name ({e})"
                ) from None
        settings = MeshSettings(
            role=role,
            wg_endpoint=join_host_port(host_only, port) if host_only else None,
            control_endpoint=join_host_port(host_only, self._rpc_port) if host_only else None,
            tls_fp=self.tls.fingerprint,
        )
        node = MeshNode(
            self.identity,
            mesh_id,
            settings,
            self.gossip,
            self.liveness,
            random.Random(self.rng.getrandbits(64)),
            state,
            refresh_ms=min(3_600_000, int(self.config.gc_horizon * 1000) // 4),
        )
        rt = MeshRuntime(
            mesh_id=mesh_id,
            ifname=interface_name(mesh_id),
            node=node,
            opts=opts.model_dump(exclude_none=True),
            listen_port=port,
            keepalive=s.keepalive,
            advertise_routes=s.advertise_routes,
            advertise_defaults=s.advertise_defaults,
            hooks={
                "preUp": list(s.pre_up),
                "postUp": list(s.post_up),
                "preDown": list(s.pre_down),
                "postDown": list(s.post_down),
            },
        )
        self.meshes[mesh_id] = rt
        rt.task = asyncio.create_task(self._mesh_loop(rt))
        return rt

    def _get(self, mesh_id: str) -> MeshRuntime:
        rt = self.meshes.get(mesh_id)
        if rt is None:
            raise svc.unknown_mesh(mesh_id)
        return rt

    async def _mesh_loop(self, rt: MeshRuntime) -> None:
        node = rt.node
        while True:
            try:
                deadline = node.next_deadline()
                delay = 1.0 if deadline is None else max(0.0, (deadline - now_ms()) / 1000)
                rt.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(rt.wake.wait(), timeout=min(delay, 1.0))
                self._emit(rt, node.tick(now_ms()))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mesh %s: engine error (continuing)", rt.mesh_id)
                await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ engine outputs
    def _emit(self, rt: MeshRuntime, outs: list[Out]) -> None:
        for o in outs:
            if isinstance(o, Call):
                t = asyncio.create_task(self._do_call(rt, o))
                rt.calls.add(t)
                t.add_done_callback(rt.calls.discard)
            elif isinstance(o, Changed):
                rt.dirty_wg = rt.dirty_disk = True
                self._reconcile_wake.set()
                self.member_events.changed(rt.mesh_id, rt.node.mesh, o.keys)
                if log.isEnabledFor(logging.DEBUG):  # bench/calibrate.py reads this line
                    keys = ",".join(key_to_text(k)[:12] for k in o.keys)
                    log.debug("mesh %s: changed %s at %.6f", rt.mesh_id, keys, time.time())
        rt.wake.set()

    async def _do_call(self, rt: MeshRuntime, call: Call) -> None:
        node = rt.node
        rec = node.mesh.record(call.to)
        if rec is None or rec.control_endpoint is None or rec.tls_fp is None:
            self._emit(rt, node.handle_failure(call.to, call.ctx, now_ms()))
            return
        try:
            data = await self.rpc.call(
                rec.control_endpoint, rec.tls_fp, encode(call.msg), to=call.to
            )
            reply = decode(data)
        except (RpcError, WireError) as e:
            log.debug("mesh %s: call to %s failed: %s", rt.mesh_id, key_to_text(call.to)[:8], e)
            self._emit(rt, node.handle_failure(call.to, call.ctx, now_ms()))
            return
        self._emit(rt, node.handle_reply(call.to, call.ctx, reply, now_ms()))

    def _is_member_anywhere(self, key: bytes) -> bool:
        """The transport's member test: a caller known in any of our meshes."""
        return any(rt.node.is_member(key) for rt in self.meshes.values())

    def _clear_backoff(self, rt: MeshRuntime, src: bytes) -> None:
        """An authenticated call from ``src`` from the address of its control
        endpoint: that endpoint answers again, stop backing off from it."""
        if not len(self.rpc.backoff):
            return
        rec = rt.node.mesh.record(src)
        seen = caller_address.get()
        if rec is None or not rec.control_endpoint or rec.tls_fp is None or seen is None:
            return
        try:
            same = ipaddress.ip_address(split_host_port(rec.control_endpoint)[0]) == (
                ipaddress.ip_address(seen)
            )
        except ValueError:
            return
        if same:
            self.rpc.backoff.ok((rec.control_endpoint, rec.tls_fp))

    async def _on_rpc(self, src: bytes, body: bytes) -> bytes:  # noqa: C901 (issue 13 splits it)
        try:
            msg = decode(body)
        except WireError as e:
            # Not logged per call (a flood on demand): the transport's rate-limited
            # refusal log counts it under "malformed message".
            log.debug("dropped malformed message from %s: %s", key_to_text(src)[:8], e)
            raise Refused("malformed message") from None
        mesh_id = getattr(msg, "mesh_id", None)
        if isinstance(msg, WhoAmI):
            # Only tells the caller its own address: nothing about any mesh.
            seen = caller_address.get()
            if seen is None:
                raise Refused("address unknown")
            return encode(YouAre(msg.mesh_id, seen))
        if isinstance(msg, WhereAmI):
            # NAT traversal: the caller's own WireGuard endpoint as we see it.
            wrt = self.meshes.get(msg.mesh_id)
            if wrt is None or not wrt.node.is_member(src):
                return encode(Refusal(msg.mesh_id))
            return encode(Observed(msg.mesh_id, await self.direct.observed(wrt, src)))
        if isinstance(msg, DEVICE_REQUESTS):  # sponsored devices (issue 18)
            return encode(await self.device_rpc(src, msg))
        rt = self.meshes.get(mesh_id) if isinstance(mesh_id, str) else None
        if rt is None:
            return encode(Refusal(mesh_id if isinstance(mesh_id, str) else "x"))
        rejected = rt.node.rejected
        reply, outs = rt.node.handle_request(src, msg, now_ms())
        self._emit(rt, outs)
        if rt.node.rejected > rejected:  # dropped items: logged per sender, rate-limited
            for reason in rt.node.last_rejects:
                self.dropped_items.note(key_to_text(src)[:12], reason)
        self._clear_backoff(rt, src)
        if isinstance(reply, Relay):
            target = rt.node.mesh.record(reply.target)
            ok = False
            if target is not None and target.control_endpoint and target.tls_fp:
                try:
                    r = decode(
                        await self.rpc.call(
                            target.control_endpoint,
                            target.tls_fp,
                            encode(reply.msg),
                            timeout=self.liveness.probe_timeout_ms / 1000,
                            to=reply.target,
                        )
                    )
                    ok = isinstance(r, Ack) and r.ok
                except (RpcError, WireError):
                    ok = False
            reply = Ack(rt.mesh_id, reply.msg.probe_id, ok)
        return encode(reply)

    # ------------------------------------------------------------------ WireGuard
    async def _reconcile_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_check = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_wake.wait(), timeout=2.0)
            self._reconcile_wake.clear()
            self._recompute_routes()
            for rt in list(self.meshes.values()):
                # Skip a mesh left (or a join abandoned) while this pass awaited
                # another mesh's apply: applying it would re-create its interface
                # after leave-mesh removed it.
                if not rt.dirty_wg or rt.joining or self.meshes.get(rt.mesh_id) is not rt:
                    continue
                rt.dirty_wg = False
                try:
                    iface, host = self._desired(rt)
                    if not rt.up:
                        await self._run_hooks(rt, "preUp")
                    res = await loop.run_in_executor(
                        self._wg_pool, self.reconciler.apply, iface, host
                    )
                    if not rt.up:
                        rt.up = True
                        await self._run_hooks(rt, "postUp")
                    if not res.created:
                        self._nudge_new_peers(rt, res.wg_ops)
                    self.metrics.reconcile.observe(res.seconds)
                    self._wg_peer_events(rt, res.wg_ops)
                    if res.changed:
                        log.info(
                            "mesh %s: %s updated (%d WireGuard ops, %d host ops, %.1f ms)",
                            rt.mesh_id,
                            rt.ifname,
                            len(res.wg_ops),
                            len(res.host_ops),
                            res.seconds * 1000,
                        )
                except Exception as e:
                    rt.dirty_wg = True
                    log.error("mesh %s: cannot apply WireGuard configuration: %s", rt.mesh_id, e)
            self._update_dns()
            self._report_alias_clashes()
            await self._apply_bridge_nat()
            if time.monotonic() - last_check > 5:
                last_check = time.monotonic()
                try:
                    fixed = await loop.run_in_executor(self._wg_pool, self.reconciler.check)
                    for r in fixed:
                        log.warning("repaired WireGuard interface (%d ops)", len(r.wg_ops))
                    # (No periodic status read: get-mesh reads handshakes and
                    # counters when asked, so an idle daemon does not poll.)
                except Exception as e:
                    log.warning("WireGuard health check failed: %s", e)
                await self._poll_handshakes()

    #: Handshake state is read this often, only while an event stream is open.
    HANDSHAKE_POLL_S = 10.0

    async def _poll_handshakes(self) -> None:
        """handshake.up/down events: one status read per mesh, only while someone listens."""
        if not self.events.subscribers:
            return
        if time.monotonic() - self._handshakes_polled < self.HANDSHAKE_POLL_S:
            return
        self._handshakes_polled = time.monotonic()
        loop = asyncio.get_running_loop()
        for rt in list(self.meshes.values()):
            if not rt.up or self.meshes.get(rt.mesh_id) is not rt:
                continue
            try:
                status = await loop.run_in_executor(self._wg_pool, self.backend.read, rt.ifname)
            except Exception as e:
                log.debug("mesh %s: cannot read WireGuard status: %s", rt.mesh_id, e)
                continue
            self.wg_status[rt.mesh_id] = status
            self.handshakes.status(rt.mesh_id, status, time.time(), self.member_events)

    def _wg_peer_events(self, rt: MeshRuntime, wg_ops: list[Any]) -> None:
        """wg.peer_added / wg.peer_removed for what the reconciler applied."""
        added, removed = wg_peer_events(wg_ops)
        for kind, keys in (("wg.peer_added", added), ("wg.peer_removed", removed)):
            if len(keys) > WG_PEER_EVENTS_MAX:
                self.events.publish(kind, mesh=rt.mesh_id, detail={"count": len(keys)})
                continue
            for key in keys:
                self.events.publish(
                    kind,
                    mesh=rt.mesh_id,
                    node=key,
                    alias=self.member_events.alias_of(rt.mesh_id, key),
                    detail={"address": self.member_events.address_of(rt.mesh_id, key)},
                )

    #: At most this many new peers are nudged per apply (a join adds one).
    NUDGE_MAX = 8

    def _nudge_new_peers(self, rt: MeshRuntime, wg_ops: list[Any]) -> None:
        """Start the WireGuard handshake with peers just added, from this side.

        A joiner configures every member at once and its first packets make its
        WireGuard send handshake initiations; a member that has not heard of the
        joiner yet drops them, and WireGuard retries only after 5 s (REKEY_TIMEOUT).
        One empty datagram to the new peer's overlay address (discard port) when
        the member adds it makes the member initiate at once, so the joiner is
        reachable within the gossip delay. Peers with an endpoint only (a NATed
        client is unreachable until it calls in); never with the memory backend
        (no interface: the datagram would leave by the host's default route).
        """
        if getattr(self.backend, "kind", "memory") == "memory":
            return
        added = [
            op.peer.public_key for op in wg_ops if isinstance(op, AddPeer) and op.peer.endpoint
        ]
        if not added or len(added) > self.NUDGE_MAX:
            return
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            for key in added:
                rec = rt.node.mesh.record(key)
                if rec is not None:
                    with contextlib.suppress(OSError):
                        s.sendto(b"", (rec.address, 9))

    def _report_alias_clashes(self) -> None:
        """Log when this node's alias is lost to another claimant (docs/QUERY.md)."""
        for rt in self.meshes.values():
            version = rt.node.mesh.version
            if version == rt.alias_checked:
                continue
            rt.alias_checked = version
            msg = views.alias_conflict(
                rt.node.live_records(),
                self.identity.wg_public_key,
                rt.node.mesh.authority if rt.node.mesh.admission else None,
            )
            if msg != rt.alias_clash:
                if msg:
                    log.warning("mesh %s: %s", rt.mesh_id, msg)
                elif rt.alias_clash:
                    log.info("mesh %s: alias clash resolved", rt.mesh_id)
                rt.alias_clash = msg

    def _bridge_nat_interfaces(self) -> frozenset[str]:
        """The overlay interfaces between which this node masquerades forwarded traffic.

        A bridge (``advertiseRoute`` on any mesh, peer in at least two meshes)
        masquerades what it forwards from one mesh into another, so replies
        come back through it even when the destination's own gateway back is
        another bridge (WireGuard's AllowedIPs would drop them; docs/ROUTING.md).
        """
        if not self.config.bridge_masquerade:
            return frozenset()
        if not any(rt.advertise_routes for rt in self.meshes.values()):
            return frozenset()
        names = frozenset(
            rt.ifname
            for rt in self.meshes.values()
            if rt.up
            and (rt.node.record.role if rt.node.record else rt.node.settings.role) == Role.PEER
        )
        return names if len(names) >= 2 else frozenset()

    async def _apply_bridge_nat(self) -> None:
        want = self._bridge_nat_interfaces()
        if want == self._bridge_nat or self.reconciler is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._wg_pool, self.reconciler.host.set_bridge_nat, want)
        except Exception as e:
            if self._bridge_nat_error != want:
                log.error("cannot set up bridge masquerading: %s (will retry)", e)
            self._bridge_nat_error = want
            return
        self._bridge_nat, self._bridge_nat_error = want, None
        if want:
            log.info("bridge: masquerading traffic forwarded between %s", ", ".join(sorted(want)))
        else:
            log.debug("bridge masquerading off")

    async def _run_hooks(self, rt: MeshRuntime, stage: str) -> None:
        """preUp/postUp/preDown/postDown of a mesh, in the WireGuard worker thread."""
        commands = rt.hooks.get(stage, [])
        if commands:
            await asyncio.get_running_loop().run_in_executor(
                self._wg_pool, run_hooks, stage, commands, rt.ifname, rt.mesh_id
            )

    def _recompute_routes(self) -> None:
        """Path-vector routing over all our meshes (core.multimesh); publish our adverts."""
        result, outs = route_meshes(
            {m: rt.node for m, rt in self.meshes.items()},
            {
                m: MeshRouting(rt.advertise_routes, rt.advertise_defaults)
                for m, rt in self.meshes.items()
            },
            accept_defaults=self.config.accept_defaults,
            now_ms=now_ms(),
        )
        old = self.routing
        self.routing = result
        if old is not result:
            for kind, mesh, gw, detail in route_events(old, result, self.member_events.alias_of):
                self.events.publish(kind, mesh=mesh, node=gw, detail=detail)
        for mesh_id, o in outs.items():
            self._emit(self.meshes[mesh_id], o)
        for rt in self.meshes.values():
            before = old.gateway_routes.get(rt.mesh_id) if old else None
            after = result.gateway_routes.get(rt.mesh_id) if result else None
            if before != after:
                rt.dirty_wg = True

    def _desired(self, rt: MeshRuntime) -> Any:
        rec = rt.node.record
        gw = self.routing.gateway_routes.get(rt.mesh_id, ()) if self.routing else ()
        return desired_config(
            gateway_routes=gw,
            mesh_id=rt.mesh_id,
            self_key=self.identity.wg_public_key,
            private_key=self.identity.wg_private_key,
            role=rec.role if rec else rt.node.settings.role,
            listen_port=rt.listen_port,
            records=rt.node.live_records(),
            ifname=rt.ifname,
            keepalive=rt.keepalive,
            devices=[(d.wg_key, d.address, d.sponsor) for d in self._devices(rt)],
            direct=self.direct.plan(rt.mesh_id),
        )

    def _update_dns(self) -> None:
        if self.dns is None:
            return
        # Rebuild (and bump the SOA serial, dropping the answer cache) only when
        # a mesh changed, joined or left: not on every pass of the apply loop.
        key = tuple(sorted((m, rt.node.mesh.version) for m, rt in self.meshes.items()))
        if key == self._dns_key:
            return
        self._dns_key = key
        from smegmesh.dns.names import NameView, NodeName

        names = []
        for rt in self.meshes.values():
            records = rt.node.live_records()
            # a contested alias resolves to one node (reserved, else first admitted)
            owners = views.alias_owners(
                records, rt.node.mesh.authority if rt.node.mesh.admission else None
            )
            for r in records:
                alias = r.alias if owners.get(r.alias) == r.wg_key else ""
                names.append(
                    NodeName(rt.mesh_id, alias, r.wg_key, ipaddress.IPv6Address(r.address))
                )
            for d in self._devices(rt):  # sponsored devices (issue 18)
                alias = d.alias if d.alias not in owners else ""
                names.append(
                    NodeName(rt.mesh_id, alias, d.wg_key, ipaddress.IPv6Address(d.address))
                )
        self._dns_serial += 1
        self.dns.update(NameView(names, serial=self._dns_serial))

    async def _persist_loop(self) -> None:
        horizon = int(self.config.gc_horizon * 1000)
        while True:
            await asyncio.sleep(1.0)
            if len(self.dropped_items):  # its summary, once per interval
                self.dropped_items.note_tick()
            for rt in list(self.meshes.values()):
                if rt.node.mesh.gc(now_ms(), horizon):
                    rt.dirty_disk = True
                    self.member_events.sweep(rt.mesh_id, rt.node.mesh)
                if rt.dirty_disk and not rt.joining:  # a refused join is never saved
                    await self._save_mesh_off_loop(rt)

    async def _save_mesh_off_loop(self, rt: MeshRuntime) -> None:
        """:meth:`_save_mesh`, encoding and writing in a thread (the state may be megabytes).

        The records are immutable: the list taken here is a consistent snapshot.
        """
        meta = {"mesh_id": rt.mesh_id, "opts": rt.opts, "listen_port": rt.listen_port}
        items = list(rt.node.mesh.all_items())
        rt.dirty_disk = False
        d = self._mesh_dir()

        def write() -> None:
            encoded = [encode_item(i) for i in items]
            atomic_write(d / f"{rt.mesh_id}.json", json.dumps(meta).encode())
            atomic_write(d / f"{rt.mesh_id}.state", msgpack.packb(encoded, use_bin_type=True))

        try:
            await asyncio.to_thread(write)
        except PersistError as e:
            rt.dirty_disk = True
            log.error("%s (state kept in memory; will retry)", e)
        if rt.mesh_id not in self.meshes:  # left while we wrote: leave nothing behind
            for suffix in (".json", ".state"):
                with contextlib.suppress(FileNotFoundError):
                    (d / f"{rt.mesh_id}{suffix}").unlink()

    # ------------------------------------------------------------------ NodeService
    async def new_mesh(self, opts: MeshOptions) -> str:
        founding = Founding.create(
            self.identity,
            generate_mesh_id().rpartition("-")[0],
            now_ms=now_ms(),
            policy=Policy(opts.invite_policy or Policy.PEERS),
        )
        mesh_id = founding.mesh_id
        state = self._new_state(mesh_id)
        state.apply(founding, now_ms())
        rt = self._add_runtime(mesh_id, opts, state, None)
        if rt.node.settings.role != Role.PEER:
            del self.meshes[mesh_id]
            if rt.task:
                rt.task.cancel()
            raise svc.invalid_argument(
                "a mesh is created by a peer (role client cannot create one)"
            )
        self._emit(rt, rt.node.start(now_ms()))
        self.member_events.track(mesh_id, rt.node.mesh, "created")
        self._save_mesh(rt)
        log.info("created mesh %s (invite policy %s)", mesh_id, founding.policy)
        return mesh_id

    async def invite(self, mesh_id: str, ttl_s: int, uses: int, strict: bool = False) -> str:
        rt = self._get(mesh_id)
        boots: list[Bootstrap] = []
        me = rt.node.record
        if me is not None and me.control_endpoint and me.tls_fp:
            boots.append(Bootstrap(me.control_endpoint, me.tls_fp, me.wg_key))
        for r in rt.node.live_records():
            if len(boots) >= 3:
                break
            if r.wg_key != self.identity.wg_public_key and r.control_endpoint and r.tls_fp:
                boots.append(Bootstrap(r.control_endpoint, r.tls_fp, r.wg_key))
        if not boots:
            raise svc.unavailable("no reachable member to name in the token")
        if strict:  # only this node admits with a strict token: name only it
            boots = boots[:1]
        try:
            token, outs = rt.node.invite(
                now_ms(), ttl_ms=ttl_s * 1000, uses=uses, bootstrap=boots, strict=strict
            )
        except NotAllowed as e:
            raise svc.ServiceError("forbidden", str(e), 403) from None
        except (ValueError, RecordError) as e:
            raise svc.invalid_argument(str(e)) from None
        self._emit(rt, outs)
        return token.encode()

    async def _discover_public(self, tok: Any, opts: MeshOptions) -> MeshOptions:
        """``ipDiscovery: public``: ask a bootstrap member which address we come from.

        The answer is kept in the mesh's options, so a restart reuses it.
        """
        s = resolve_mesh_settings(self.config.base_configuration, opts)
        if s.endpoint or s.ip_discovery != "public" or s.role != "peer":
            return opts
        for b in tok.bootstrap:
            try:
                reply = decode(
                    await self.rpc.call(
                        b.control_endpoint, b.tls_fp, encode(WhoAmI(tok.mesh_id)), to=b.wg_key
                    )
                )
            except (RpcError, WireError, ValueError, OSError) as e:
                log.info("public address discovery via %s failed: %s", b.control_endpoint, e)
                continue
            if isinstance(reply, YouAre):
                log.info(
                    "public address discovery: %s sees us as %s", b.control_endpoint, reply.address
                )
                return opts.model_copy(update={"endpoint": reply.address})
        log.warning("public address discovery failed; using the outgoing interface's address")
        return opts

    async def join_mesh(self, token: str, opts: MeshOptions) -> str:
        """Join with ``token``; a failed join, whatever failed, leaves nothing behind."""
        before = self.meshes.copy()
        try:
            return await self._join_mesh(token, opts)
        except BaseException:
            for mesh_id, rt in list(self.meshes.items()):
                if rt.joining and before.get(mesh_id) is not rt:
                    del self.meshes[mesh_id]
                    if rt.task:
                        rt.task.cancel()
            raise

    async def _join_mesh(self, token: str, opts: MeshOptions) -> str:
        try:
            tok = parse_token(token)
        except TokenError as e:
            raise svc.invalid_argument(str(e)) from None
        if tok.mesh_id in self.meshes:
            raise svc.conflict(f"already a member of mesh {tok.mesh_id}")
        if tok.expiry_ms <= now_ms():
            raise svc.refused("the invitation has expired")
        opts = await self._discover_public(tok, opts)
        rt = self._add_runtime(tok.mesh_id, opts, self._new_state(tok.mesh_id), None)
        rt.joining = True
        node = rt.node
        req = encode(node.join_request(tok.secret, now_ms()))
        errors: list[str] = []
        refused = False
        # Round after round over the bootstrap members, paced, until a deadline:
        # a busy member may time out (a retry with the same token is admitted
        # again: admissions are per joiner). See daemon/joinretry.py.
        async for b in join_attempts(
            tok.bootstrap,
            lambda b: self.rpc.backoff.wait((b.control_endpoint, b.tls_fp)),
            deadline_s=JOIN_DEADLINE_TIMEOUTS * float(self.config.timeout),
        ):
            try:
                reply = decode(
                    await self.rpc.call(
                        b.control_endpoint,
                        b.tls_fp,
                        req,
                        timeout=2 * float(self.config.timeout),
                        to=b.wg_key,
                    )
                )
            except (RpcError, WireError, ValueError, OSError) as e:
                errors.append(f"{b.control_endpoint}: {e}")
                log.info("join through %s failed: %s (will retry)", b.control_endpoint, e)
                continue
            if isinstance(reply, JoinReply):
                outs = node.absorb(reply.items, now_ms(), reply.chain)
                if node.mesh.admission and node.record is None:
                    # The member's reply did not prove the mesh's authority (its
                    # founding record) or our admission: do not join on its word.
                    errors.append(f"{b.control_endpoint}: reply without a valid admission")
                    continue
                rt.joining = False
                rt.dirty_wg = True
                self._emit(rt, outs)
                self.member_events.track(tok.mesh_id, node.mesh, "joined")
                # The reply holds one page of the state; the rest by anti-entropy, now.
                self._emit(rt, node.pull_from(b.wg_key, now_ms()))
                self._save_mesh(rt)
                log.info(
                    "joined mesh %s through %s (%d nodes)",
                    tok.mesh_id,
                    b.control_endpoint,
                    len(node.live_records()),
                )
                return tok.mesh_id
            refused = True
            errors.append(f"{b.control_endpoint}: refused")
            break
        del self.meshes[tok.mesh_id]
        if rt.task:
            rt.task.cancel()
        if refused:
            raise svc.refused(
                "the invitation was refused (expired, used up, or not valid for this mesh)"
            )
        raise svc.unavailable(
            "no member named in the token could be reached: " + "; ".join(errors[-6:])
        )

    async def leave_mesh(self, mesh_id: str) -> None:
        rt = self._get(mesh_id)
        self._emit(rt, rt.node.leave(now_ms()))
        if rt.calls:
            await asyncio.wait(list(rt.calls), timeout=3)
        if rt.task:
            rt.task.cancel()
        del self.meshes[mesh_id]
        self.member_events.forget(mesh_id)
        self.handshakes.forget(mesh_id)
        loop = asyncio.get_running_loop()
        await self._run_hooks(rt, "preDown")
        try:
            await loop.run_in_executor(self._wg_pool, self.reconciler.remove, rt.ifname)
        except Exception as e:
            log.warning("mesh %s: removing %s: %s", mesh_id, rt.ifname, e)
        await self._run_hooks(rt, "postDown")
        for suffix in (".json", ".state"):
            with contextlib.suppress(FileNotFoundError):
                (self._mesh_dir() / f"{mesh_id}{suffix}").unlink()
        self._update_dns()
        log.info("left mesh %s", mesh_id)

    async def list_meshes(self) -> list[MeshSummary]:
        out = []
        for rt in self.meshes.values():
            rec = rt.node.record
            out.append(
                MeshSummary(
                    mesh_id=rt.mesh_id,
                    interface=rt.ifname,
                    prefix=str(mesh_prefix(rt.mesh_id)),
                    role=(rec.role if rec else rt.node.settings.role).value,
                    overlay_address=str(overlay_address(rt.mesh_id, self.identity.wg_public_key)),
                    node_count=len(rt.node.live_records()),
                )
            )
        return out

    def _route_uses(self, mesh_id: str) -> list[tuple[str, str, bytes, int]]:
        if self.routing is None:
            return []
        return [
            (e.destination, e.mesh_id, e.gateway, e.length)
            for e in self.routing.table
            if e.mesh_id == mesh_id
        ]

    async def get_mesh(self, mesh_id: str) -> MeshDetail:
        rt = self._get(mesh_id)
        try:  # fresh handshake ages and counters (one UAPI/netlink read)
            status = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(
                    self._wg_pool, self.backend.read, rt.ifname
                ),
                timeout=2.0,
            )
            self.wg_status[mesh_id] = status
            self.handshakes.status(mesh_id, status, time.time(), self.member_events)
        except Exception:
            status = self.wg_status.get(mesh_id)
        records = rt.node.live_records()
        heard = {r.wg_key: t for r in records if (t := rt.node.last_heard(r.wg_key)) is not None}
        authority = copy_authority(rt.node.mesh.authority) if rt.node.mesh.admission else None
        # built in a thread from this snapshot (immutable records, copied maps):
        # at the largest state it takes long enough to stall DNS and gossip
        detail = await asyncio.to_thread(
            functools.partial(
                views.mesh_detail,
                rt.mesh_id,
                rt.ifname,
                list(records),
                self_key=self.identity.wg_public_key,
                wg_peers=dict(status.peers) if status is not None else {},
                last_heard=heard,
                suspects=set(rt.node.suspects),
                routes=self._route_uses(mesh_id),
                now_ms=now_ms(),
                authority=authority,
            )
        )
        # each member's path and round trip (NAT traversal, daemon/direct.py)
        detail = await asyncio.to_thread(annotate_paths, detail, self.direct.rtts(mesh_id))
        return detail.model_copy(update={"devices": self.device_infos(rt)})

    async def _update(self, mesh_id: str, **changes: Any) -> None:
        rt = self._get(mesh_id)
        try:
            outs = rt.node.update_self(now_ms(), **changes)
        except RecordError as e:
            raise svc.invalid_argument(f"{e.field}: {e}") from None
        self._emit(rt, outs)

    async def put_alias(self, mesh_id: str, alias: str) -> str:
        rt = self._get(mesh_id)
        alias = views.validate_alias(alias)
        views.check_alias_free(
            rt.node.live_records(),
            self.identity.wg_public_key,
            alias,
            rt.node.mesh.authority if rt.node.mesh.admission else None,
        )
        await self._update(mesh_id, alias=alias)
        return alias

    async def put_description(self, mesh_id: str, description: str) -> None:
        self._get(mesh_id)
        await self._update(mesh_id, description=views.validate_description(description))

    async def set_service(self, mesh_id: str, key: str, value: str) -> None:
        rt = self._get(mesh_id)
        rec = rt.node.record
        services = dict(rec.services) if rec else {}
        views.validate_service(key, value, services)
        services[key] = value
        await self._update(mesh_id, services=services)

    async def delete_service(self, mesh_id: str, key: str) -> None:
        rt = self._get(mesh_id)
        rec = rt.node.record
        services = dict(rec.services) if rec else {}
        if key not in services:
            raise svc.ServiceError("unknown_service", f"no service {key!r} on this node", 404)
        del services[key]
        await self._update(mesh_id, services=services)

    async def query_mesh(self, mesh_id: str, expr: str) -> Any:
        detail = await self.get_mesh(mesh_id)
        # bounded in work and time (views.run_query), and off the event loop
        return await asyncio.to_thread(views.run_query, detail, expr)

    async def _details(self) -> list[MeshDetail]:
        out = []
        for mid in sorted(self.meshes):
            with contextlib.suppress(svc.ServiceError):  # left meanwhile
                out.append(await self.get_mesh(mid))
        return out

    async def get_status(self) -> StatusResponse:
        from smegmesh.daemon.status import build_status

        key = key_to_text(self.identity.wg_public_key)
        return build_status(VERSION, key, await self._details())

    async def ping(
        self, node: str, mesh_id: str | None, count: int, timeout_s: int
    ) -> PingResponse:
        from smegmesh.daemon.status import ping_node

        if mesh_id is not None:
            self._get(mesh_id)
        refuse = None
        if getattr(self.backend, "kind", None) == "memory":
            refuse = "this node runs without WireGuard (wgBackend: memory): no overlay to ping"
        return await ping_node(node, mesh_id, await self._details(), count, timeout_s, refuse)

    async def get_graph(self, mesh_id: str | None, fmt: Any) -> bytes:
        ids = [mesh_id] if mesh_id else sorted(self.meshes)
        graphs = []
        for mid in ids:
            rt = self._get(mid)
            graphs.append(
                views.GraphMesh(
                    mesh_id=mid,
                    records=tuple(rt.node.live_records()),
                    suspects=frozenset(rt.node.suspects),
                    routes=tuple(self._route_uses(mid)),
                )
            )
        dot = await asyncio.to_thread(
            functools.partial(views.graph_dot, graphs, self_key=self.identity.wg_public_key)
        )
        return await views.render_graph_async(dot, fmt)


async def _amain(
    config: Config, config_path: str | None = None, log_format: str | None = None
) -> int:
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if config_path is not None:
        from smegmesh.daemon.reload import reload_config

        def _hup() -> None:
            ok = reload_config(daemon, config_path, log_format)
            daemon.metrics.reloads.labels("ok" if ok else "failed").inc()

        loop.add_signal_handler(signal.SIGHUP, _hup)
    else:  # nothing to reload: SIGHUP must not kill the daemon either
        loop.add_signal_handler(
            signal.SIGHUP, lambda: log.warning("SIGHUP ignored: no configuration file")
        )
    try:
        await daemon.start()
    except StateDirLocked as e:
        log.error("%s", e)
        return 1
    except svc.ServiceError as e:
        log.error("%s", e.message)
        return 1
    except OSError as e:
        log.error("cannot start: %s", e)
        await daemon.stop()
        return 1
    systemd = Notifier()  # no-op unless run by systemd (NOTIFY_SOCKET)
    systemd.ready(f"serving {len(daemon.meshes)} mesh(es)")
    await stop.wait()
    log.info("shutting down")
    systemd.stopping()
    await daemon.stop()
    return 0


def run(config: Config, config_path: str | None = None, log_format: str | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; SIGHUP reloads ``config_path``."""
    limit_malloc_arenas()
    configure_logging(config.log_level, config.log_format)
    return asyncio.run(_amain(config, config_path, log_format))
