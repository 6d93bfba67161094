"""A mesh's runtime (:class:`MeshRuntime`) and how the daemon creates and finds one."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from smegmesh.core.authority import Authority
from smegmesh.core.cert import founding_name
from smegmesh.core.desired import interface_name
from smegmesh.core.driver import EngineDriver
from smegmesh.core.endpoint import join_host_port, split_host_port
from smegmesh.core.meshnode import MeshNode, MeshSettings
from smegmesh.core.record import Role, check_endpoint
from smegmesh.core.state import MeshState
from smegmesh.daemon import service as svc
from smegmesh.daemon.base import DaemonBase
from smegmesh.daemon.config import MeshOptions, resolve_mesh_settings
from smegmesh.daemon.engineport import DaemonPort
from smegmesh.daemon.ports import choose_wg_port
from smegmesh.net.discovery import outgoing_address

log = logging.getLogger("smegd")


class NoAddress(svc.ServiceError):
    """A peer's address to publish is not known (no ``publicEndpoint``, no route yet)."""


#: Between two readings, the wall clock moving this much (ms) more or less than
#: the monotonic clock is a step of it (ntpd steps from 128 ms, timesyncd from
#: 400 ms, chrony's makestep from 1 s; a slew is at most 83 ms a second and
#: the meshes' loops read the clock every second at least).
STEP_MS = 100


class WallClock:
    """The wall clock in ms, as the engines take it, and its steps.

    The engines' inputs carry the wall clock: records, prunes and statements
    are signed with it and compared with other nodes' times. Their own timers
    must not jump with it (``engine.ClockStepped``): a step (chrony makestep,
    ``date -s``, a VM resumed, fake-hwclock corrected at boot, a suspend,
    which the monotonic clock does not count) is found where, between two
    readings, the wall clock moved :data:`STEP_MS` or more away from the
    monotonic clock, and each subscriber is told before the reading that found
    it is returned: an engine given that reading has moved its timers already.
    Read on the event loop's thread only.
    """

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None  # wall, monotonic (s)
        self._subscribers: list[Callable[[int], None]] = []

    def now_ms(self) -> int:
        wall, mono = time.time(), time.monotonic()
        last, self._last = self._last, (wall, mono)
        if last is not None:
            step = round((wall - last[0] - (mono - last[1])) * 1000)
            if abs(step) >= STEP_MS:
                for on_step in list(self._subscribers):
                    on_step(step)
        return int(wall * 1000)

    def subscribe(self, on_step: Callable[[int], None]) -> Callable[[], None]:
        """Call ``on_step(delta_ms)`` at each step from now on; returns the unsubscribe."""
        self._subscribers.append(on_step)
        return lambda: self._subscribers.remove(on_step) if on_step in self._subscribers else None


#: The process's one clock: every reading may find a step (see :class:`WallClock`).
CLOCK = WallClock()


def now_ms() -> int:
    """The wall clock in ms; a step found is told to the engines first (:class:`WallClock`)."""
    return CLOCK.now_ms()


@dataclass
class MeshRuntime:
    """One mesh of this node: its engine, its options and its apply/persist flags."""

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
    #: a local command changed the state: save at the next persist tick
    #: (learned state waits up to ``store.LEARNED_SAVE_INTERVAL_S``)
    save_soon: bool = False
    #: when the state was last written (``time.monotonic``; None: not yet)
    saved_at: float | None = None
    #: held while the state is encoded and written: writes land in the order
    #: they were taken (an older snapshot never overwrites a newer one)
    save_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: why the last write failed (None: it did not); retried by the persist loop
    save_error: str | None = None
    calls: set[asyncio.Task[None]] = field(default_factory=set)
    hooks: dict[str, list[str]] = field(default_factory=dict)
    #: the interface was applied by this process (``daemon/apply.py``)
    up: bool = False
    #: preUp ran for an interface not yet configured: postUp follows the first apply
    #: that succeeds (a failing apply is retried without preUp again)
    creating: bool = False
    #: ``join-mesh`` in progress: no WireGuard interface until a member admits us
    #: (a refused join must leave nothing behind).
    joining: bool = False
    #: the alias-clash message last reported, and the state version it was computed at
    alias_clash: str | None = None
    alias_checked: int = -1
    #: the clash last logged and then resolved: its coming back (and going again)
    #: is logged at DEBUG only, until another clash (daemon/dns_wiring.py)
    alias_clash_told: str | None = None
    #: the event ``mesh.evicted`` was published (a member showed us our eviction)
    evicted_told: bool = False
    #: the engine's driver (core/driver.py) and its port (set by ``_add_runtime``)
    driver: EngineDriver = field(init=False)
    port: DaemonPort = field(init=False)

    @property
    def role(self) -> Role:
        """This node's role in the mesh: its record's, else its settings' (before one)."""
        rec = self.node.record
        return rec.role if rec else self.node.settings.role

    @property
    def alias_authority(self) -> Authority | None:
        """The mesh's authority for the alias rule (reserved aliases), if it has one."""
        mesh = self.node.mesh
        return mesh.authority if mesh.admission else None


class RuntimeOps(DaemonBase):
    """Mixin of the daemon: creates, registers and finds mesh runtimes."""

    def _new_state(self, mesh_id: str) -> MeshState:
        # Meshes with a self-certifying id have an authority: records need
        # admission proofs. (Older meshes keep working without one.)
        return MeshState(
            mesh_id,
            gc_horizon_ms=int(self.config.gc_horizon * 1000),
            admission=founding_name(mesh_id) is not None,
            max_members=self.config.max_members,
        )

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
            raise NoAddress(
                "unavailable",
                "cannot find this node's address: "
                "set baseConfiguration.publicEndpoint or --endpoint",
                503,
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
        rt.port = DaemonPort(
            lambda call: self._start_call(rt, call), lambda keys: self._on_changed(rt, keys)
        )
        rt.driver = EngineDriver(node, rt.port)
        self.meshes[mesh_id] = rt
        rt.task = asyncio.create_task(self._mesh_loop(rt))
        return rt

    def _discard_runtime(self, rt: MeshRuntime) -> None:
        """Unregister ``rt`` and stop its loop: a mesh not created, joined or restored, or left."""
        if self.meshes.get(rt.mesh_id) is rt:
            del self.meshes[rt.mesh_id]
        if rt.task:
            rt.task.cancel()

    def _clock_stepped(self, delta_ms: int) -> None:
        """The wall clock was stepped (:class:`WallClock`): every engine's timers move with it."""
        level = logging.WARNING if abs(delta_ms) >= 1000 else logging.DEBUG
        log.log(level, "wall clock stepped by %+.3f s: mesh timers moved with it", delta_ms / 1000)
        for rt in self.meshes.values():
            rt.driver.clock_stepped(delta_ms)
            rt.wake.set()

    def _get(self, mesh_id: str) -> MeshRuntime:
        rt = self.meshes.get(mesh_id)
        if rt is None:
            raise self._unrestored_error(mesh_id) or svc.unknown_mesh(mesh_id)
        return rt

    def _unrestored_error(self, mesh_id: str) -> svc.ServiceError | None:
        """The error for a command on a saved mesh that did not start (None: none)."""
        u = self.unrestored.get(mesh_id)
        if u is None:
            return None
        return svc.ServiceError(
            "not_restored", f"mesh {mesh_id} is saved here but not running: {u.reason}", 503
        )
