"""What the parts of the daemon share: :class:`DaemonBase`.

The :class:`~smegmesh.daemon.node.Daemon` is composed of mixins, one module each
(``runtime``, ``engine_io``, ``apply``, ``store``, ``membership``, ``localapi``,
``dns_wiring``, ``bridge_nat``, ``hooks``, ``authority_ops``, ``devices_ops`` with
``devices_remote``).
Each mixin derives from this class, which declares (for the type checker only)
the daemon's attributes, set in ``Daemon.__init__``/``Daemon.start``, and the
methods one part calls on another.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smegmesh.core.desired import ForwardGuard
    from smegmesh.core.devices import LiveDevice
    from smegmesh.core.gossip import GossipParams
    from smegmesh.core.identity import NodeIdentity
    from smegmesh.core.liveness import LivenessParams
    from smegmesh.core.meshnode import Call, Out
    from smegmesh.core.routing import RoutingResult
    from smegmesh.core.state import MeshState
    from smegmesh.daemon import service as svc
    from smegmesh.daemon.api_models import NotRestored
    from smegmesh.daemon.config import Config, MeshOptions
    from smegmesh.daemon.direct import DirectManager
    from smegmesh.daemon.events import EventBus, HandshakeEvents, MemberEvents
    from smegmesh.daemon.malloc import HeapTrimmer
    from smegmesh.daemon.metrics import MeteredRpcClient, Metrics
    from smegmesh.daemon.ratelog import RateLog
    from smegmesh.daemon.runtime import MeshRuntime
    from smegmesh.daemon.statelock import StateLock
    from smegmesh.daemon.transport import RpcServer, TlsIdentity
    from smegmesh.wg.resolver import EndpointResolver

__all__ = ["DaemonBase"]


class DaemonBase:
    """The daemon's shared attributes and cross-part methods (declarations only)."""

    if TYPE_CHECKING:
        config: Config
        state_dir: Path
        meshes: dict[str, MeshRuntime]
        #: saved meshes that did not start (daemon/restore.py), by mesh id
        unrestored: dict[str, NotRestored]
        identity: NodeIdentity
        tls: TlsIdentity
        rpc: MeteredRpcClient
        #: members' control endpoint names to addresses (threads of its own)
        control_names: EndpointResolver
        rpc_server: RpcServer | None
        _rpc_port: int
        _stop: asyncio.Event
        _wg_pool: concurrent.futures.ThreadPoolExecutor
        _reconcile_wake: asyncio.Event
        _tasks: list[asyncio.Task[None]]
        rng: random.Random
        gossip: GossipParams
        liveness: LivenessParams
        dns: Any
        _dns_serial: int
        _dns_key: tuple[tuple[str, int], ...] | None
        _dns_table: Any
        _dns_names: dict[tuple[str, bytes], tuple[object, str, Any]]
        api_servers: list[Any]
        tcp_app: Any
        tcp_server: Any
        backend: Any
        reconciler: Any
        wg_status: dict[str, Any]
        routing: RoutingResult | None
        _bridge_nat: tuple[frozenset[str], ForwardGuard] | None
        _bridge_nat_error: tuple[frozenset[str], ForwardGuard] | None
        dropped_items: RateLog
        refuted_prunes: RateLog
        refused_joins: RateLog
        save_failures: RateLog
        state_lock: StateLock
        metrics: Metrics
        metrics_server: Any
        events: EventBus
        member_events: MemberEvents
        heap: HeapTrimmer
        handshakes: HandshakeEvents
        _handshakes_polled: float
        direct: DirectManager

        # runtime.py
        def _new_state(self, mesh_id: str) -> MeshState: ...
        def _add_runtime(
            self, mesh_id: str, opts: MeshOptions, state: MeshState, listen_port: int | None
        ) -> MeshRuntime: ...
        def _discard_runtime(self, rt: MeshRuntime) -> None: ...
        def _get(self, mesh_id: str) -> MeshRuntime: ...
        def _unrestored_error(self, mesh_id: str) -> svc.ServiceError | None: ...

        # engine_io.py
        async def _mesh_loop(self, rt: MeshRuntime) -> None: ...
        def _emit(self, rt: MeshRuntime, outs: list[Out]) -> None: ...
        async def _commit(self, rt: MeshRuntime, outs: list[Out]) -> None: ...
        def _start_call(self, rt: MeshRuntime, call: Call) -> None: ...
        def _on_changed(self, rt: MeshRuntime, keys: frozenset[bytes]) -> None: ...

        # store.py
        def _mesh_dir(self) -> Path: ...
        def _save_mesh(self, rt: MeshRuntime) -> None: ...
        async def _save_mesh_off_loop(self, rt: MeshRuntime) -> None: ...
        async def _save_for_command(self, rt: MeshRuntime) -> None: ...
        def _restore_meshes(self) -> None: ...

        # apply.py
        def _start_wireguard(self) -> None: ...

        # hooks.py
        async def _run_hooks(self, rt: MeshRuntime, stage: str) -> None: ...

        # dns_wiring.py
        async def _start_dns(self) -> None: ...
        def _update_dns(self) -> None: ...
        def _report_alias_clashes(self) -> None: ...

        # bridge_nat.py
        async def _apply_bridge_nat(self) -> None: ...

        # localapi.py
        async def get_mesh(self, mesh_id: str) -> Any: ...

        # devices_ops.py
        def _devices(self, rt: MeshRuntime) -> list[LiveDevice]: ...
        def device_infos(self, rt: MeshRuntime) -> list[Any]: ...
        async def device_rpc(self, src: bytes, msg: Any) -> Any: ...
