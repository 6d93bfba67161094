"""``smegd``: the daemon. A thin asyncio adapter around the pure engine.

Per mesh a ``MeshNode`` (core) decides; the daemon only moves bytes (gRPC
transport), keeps time, persists state, and hands the engine's desired
configuration to the reconciler (WireGuard + host networking) in a worker
thread. It implements the local API's ``NodeService``.

This module composes the :class:`Daemon` from its parts (one module each, see
``daemon/base.py``) and holds its life cycle: construction, ``start`` (the
listeners, the WireGuard backend, the saved meshes, the loops) and ``stop``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from smegmesh.core.desired import ForwardGuard
from smegmesh.core.identity import key_to_text
from smegmesh.core.routing import RoutingResult
from smegmesh.daemon import service as svc
from smegmesh.daemon.api_models import NotRestored
from smegmesh.daemon.apply import ApplyOps
from smegmesh.daemon.authority_ops import AuthorityOps
from smegmesh.daemon.bridge_nat import BridgeNatOps
from smegmesh.daemon.config import Config, ConfigError
from smegmesh.daemon.devices_ops import DeviceOps
from smegmesh.daemon.direct import DirectManager
from smegmesh.daemon.dns_wiring import DnsOps
from smegmesh.daemon.engine_io import EngineIO
from smegmesh.daemon.events import EventBus, HandshakeEvents, MemberEvents
from smegmesh.daemon.hooks import HookOps
from smegmesh.daemon.localapi import LocalApiOps
from smegmesh.daemon.malloc import HeapTrimmer, release_free_memory
from smegmesh.daemon.membership import MembershipOps
from smegmesh.daemon.metrics import MeteredRpcClient, Metrics, serve_metrics
from smegmesh.daemon.persist import PersistError, remove_stale_temps
from smegmesh.daemon.ratelog import RateLog
from smegmesh.daemon.reload import gossip_params, liveness_params
from smegmesh.daemon.restore import RestoreOps
from smegmesh.daemon.rpc_dgram import DatagramStats, KeyIds
from smegmesh.daemon.rpc_dgram_client import DatagramClient
from smegmesh.daemon.runtime import CLOCK, MeshRuntime, RuntimeOps, now_ms
from smegmesh.daemon.statelock import StateLock
from smegmesh.daemon.store import StoreOps
from smegmesh.daemon.transport import RpcServer, TlsIdentity
from smegmesh.wg.resolver import EndpointResolver

log = logging.getLogger("smegd")

__all__ = ["Daemon", "MeshRuntime"]


class Daemon(
    LocalApiOps,
    MembershipOps,
    AuthorityOps,
    DeviceOps,
    StoreOps,
    RestoreOps,
    EngineIO,
    ApplyOps,
    DnsOps,
    BridgeNatOps,
    HookOps,
    RuntimeOps,
):
    """One node: its identity, its meshes, the transport, and the local API."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.meshes: dict[str, MeshRuntime] = {}
        self.unrestored: dict[str, NotRestored] = {}
        self._stop = asyncio.Event()
        self._wg_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wg")
        self._reconcile_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.rng = random.Random()
        self.gossip = gossip_params(config)  # as a reload makes them (daemon/reload.py)
        self.liveness = liveness_params(config)
        self.dns: Any = None
        self._dns_serial = int(time.time())
        self._dns_key: tuple[tuple[str, int], ...] | None = None  # meshes+versions served
        self._dns_table: Any = None  # dns.nametable.NameTable, once DNS serves
        #: (mesh, key) -> (record or device, alias shown, its NodeName): reused while unchanged
        self._dns_names: dict[tuple[str, bytes], tuple[object, str, Any]] = {}
        self.api_servers: list[Any] = []
        #: the TCP API's app and server, once it serves (a reload hands them a new
        #: token or certificate: daemon/reload.py)
        self.tcp_app: Any = None
        self.tcp_server: Any = None
        self.rpc_server: RpcServer | None = None
        self.backend: Any = None
        self.reconciler: Any = None
        self.wg_status: dict[str, Any] = {}
        self.routing: RoutingResult | None = None
        #: bridge NAT interfaces and forwarding guard applied (None: not yet)
        self._bridge_nat: tuple[frozenset[str], ForwardGuard] | None = None
        self._bridge_nat_error: tuple[frozenset[str], ForwardGuard] | None = None  # last failed
        #: items members sent that the mesh's rules refused (no admission proof,
        #: forged or non-member prunes...): one summary per sender per minute
        self.dropped_items = RateLog(log, "dropped", unit="items", prep="from member")
        #: prunes of live members their target refuted (core.refuted): who prunes
        #: live members, for an admin to evict if it goes on
        self.refuted_prunes = RateLog(
            log, "refuted", unit="prunes", prep="by member", level=logging.WARNING
        )
        #: joins this node refused, and why (the joiner hears only "refused"):
        #: one line per joiner at once, then a summary per minute
        self.refused_joins = RateLog(log, "refused", unit="joins", prep="of")
        #: writes of a mesh's state that failed (a full or read-only disk): one
        #: line at once, then one summary per mesh per minute
        self.save_failures = RateLog(
            log, "failed", unit="writes", prep="of mesh", level=logging.ERROR
        )
        self.state_lock = StateLock(self.state_dir)
        self.metrics = Metrics(self)
        self.metrics_server: Any = None
        #: lifecycle events (GET /v1/events, smegctl watch, the INFO log lines);
        #: others publish through ``self.events.publish(...)``
        self.events = EventBus(first_seq=now_ms())
        self.member_events = MemberEvents(self.events)
        self.handshakes = HandshakeEvents(self.events)
        self._handshakes_polled = 0.0
        #: what bursts free inside glibc's heap, given back every 30 s (persist pass)
        self.heap = HeapTrimmer()
        #: NAT traversal (docs/NAT.md): direct client-to-client sessions
        self.direct = DirectManager(self, config.direct_peers)
        #: steps of the wall clock reach our engines (runtime.WallClock) until stop()
        self._clock_unsubscribe: Callable[[], None] | None = None

    async def start(self) -> None:
        cfg = self.config
        for w in cfg.warnings:
            log.warning("%s", w)
        with _naming("stateDir", self.state_dir):
            if self.state_dir.exists() and not self.state_dir.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.state_dir, 0o700)
        self.state_lock.acquire()  # one daemon per state directory (StateDirLocked)
        remove_stale_temps(self.state_dir)  # of writes a crash interrupted
        self.identity = self._load_identity()
        self.tls = TlsIdentity.load_or_create(self.state_dir)
        dgram = DatagramStats() if cfg.datagrams else None  # UDP beside gRPC (rpc_dgram.py)
        # members' control endpoint names, looked up in threads of their own; a
        # name that failed is tried again after 5 s (a call to it fails at once
        # meanwhile), so a name that starts to resolve is used within seconds
        self.control_names = EndpointResolver(retry_s=5.0, report=_name_failed)
        self.rpc = MeteredRpcClient(
            self.metrics,
            self.identity,
            timeout=float(cfg.timeout),
            max_channels=cfg.max_channels,
            datagrams=DatagramClient(dgram) if dgram is not None else None,
            resolve=self.control_names.resolve_async,
        )
        self.rpc_server = RpcServer(
            self.tls,
            self.metrics.handler(self._on_rpc),
            is_member=self._is_member_anywhere,
            is_ours=lambda key: key == self.identity.wg_public_key,
            datagram_keys=self._datagram_keys() if dgram is not None else None,
            datagram_stats=dgram,
        )
        port = await self.rpc_server.start(cfg.bind_address, cfg.grpc_port)
        self._rpc_port = port
        log.info(
            "node %s listening for mesh traffic on port %d",
            key_to_text(self.identity.wg_public_key),
            port,
        )
        self._start_wireguard()

        from smegmesh.daemon.api import create_app, serve_tcp, serve_unix

        if cfg.api_listen:
            await self._serve_tcp_api(create_app, serve_tcp)
        if cfg.dns_listen:
            await self._start_dns()
        if cfg.metrics_listen:
            mh, mp = cfg.metrics_listen_addr  # type: ignore[misc]
            self.metrics_server = await serve_metrics(self.metrics, mh, mp)
            log.info("Prometheus metrics on http://%s/metrics", cfg.metrics_listen)

        self._clock_unsubscribe = CLOCK.subscribe(self._clock_stepped)
        self._restore_meshes()
        self._tasks.append(asyncio.create_task(self._reconcile_loop()))
        self._tasks.append(asyncio.create_task(self._persist_loop()))
        if cfg.direct_peers > 0:
            self._tasks.append(asyncio.create_task(self.direct.run()))
        # The control socket comes last: once `/v1/health` answers on it, every
        # other listener is bound and the saved meshes are restored.
        with _naming("controlSocket", cfg.control_socket):
            api = await serve_unix(
                create_app(self), cfg.control_socket, group=cfg.control_socket_group
            )
        self.api_servers.append(api)
        log.info("local API on %s", cfg.control_socket)
        release_free_memory()

    def _datagram_keys(self) -> KeyIds:
        """Who datagram headers' key ids name: our one key, the members of our meshes."""
        me = self.identity
        return KeyIds([(me.wg_public_key, me.wg_private_key)], self._members_anywhere_by_id)

    async def stop(self) -> None:
        if self._clock_unsubscribe is not None:
            self._clock_unsubscribe()
            self._clock_unsubscribe = None
        for rt in list(self.meshes.values()):
            if rt.task:
                rt.task.cancel()
            async with rt.save_lock:  # a write in a thread finishes first, not after ours
                if rt.dirty_disk and not rt.joining:
                    try:
                        self._save_mesh(rt)
                    except PersistError as e:
                        log.error(
                            "mesh %s: changes since its last write lost: %s", rt.mesh_id, e.strerror
                        )
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
            self.control_names.close()
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
            app,
            h,
            p,
            tls_certificate=cfg.api_tls_certificate,
            tls_key=cfg.api_tls_key,
            key="apiListen",
        )
        self.api_servers.append(server)
        self.tcp_app, self.tcp_server = app, server
        tls = cfg.api_tls_certificate is not None
        log.info(
            "TCP API on %s (%s, bearer token required)", cfg.api_listen, "HTTPS" if tls else "HTTP"
        )


def _name_failed(endpoint: str, why: str) -> None:
    """A member's control endpoint name that did not resolve (the call's failure says more)."""
    log.debug("control endpoint %s: %s", endpoint, why)


@contextlib.contextmanager
def _naming(key: str, path: Path) -> Iterator[None]:
    """An OSError on the path of config ``key`` as one line naming both, no errno:
    "[Errno 17] File exists: '/x'" told no one which key to fix."""
    try:
        yield
    except OSError as e:
        why = e.strerror[:1].lower() + e.strerror[1:] if e.strerror else str(e)
        raise OSError(f"{key} {path}: {why}") from None
