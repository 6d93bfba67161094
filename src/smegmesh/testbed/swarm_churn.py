"""Churn in a swarm process: members crash and restart, as the simulator's churn does.

A crashed member stops: no ticks, no calls, and calls to it fail at once (a
daemon's port with nothing listening refuses). After ``downtime_s`` it
restarts as a daemon does: a new engine (:class:`~smegmesh.core.meshnode.MeshNode`)
with the same identity and the state it had (smegd persists it), which
re-publishes its record with a higher version (``MeshNode.start``), refuting
the prune the others made meanwhile. Crashes come as a Poisson process at
``per_min`` of this process's members a minute (0.2: 20 %/min, the churn of
issue 14), never the member that hands out invitations (index 0), never one
already down. Crashes begin when ``DIR/churn`` exists and end when it is
removed (``swarm --churn-per-min``). Replies to calls a member made before it crashed are dropped
(``Member.epoch``), as a process that exited never reads them.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from smegmesh.core.driver import EngineDriver
from smegmesh.core.meshnode import Call, MeshNode, Out
from smegmesh.daemon.engineport import DaemonPort
from smegmesh.daemon.runtime import now_ms
from smegmesh.testbed.swarm_plan import Member, Plan

__all__ = ["Churn"]


@dataclass
class Churn:
    """Crashes and restarts of ``members`` (one swarm process's)."""

    members: list[Member]
    per_min: float
    downtime_s: float
    #: the port's ``send`` for a member (the worker's), and how to queue its timer
    send: Callable[[Member, Call], None]
    schedule: Callable[[Member], None]
    rng: random.Random = field(default_factory=random.Random)
    #: crashes stop when this file is gone (restarts of those down still come)
    flag: Path | None = None
    crashes: int = 0
    restarts: int = 0

    @classmethod
    def if_asked(
        cls,
        plan: Plan,
        members: list[Member],
        send: Callable[[Member, Call], None],
        schedule: Callable[[Member], None],
    ) -> Churn | None:
        """The churn the plan asks for, once ``DIR/churn`` exists (else None)."""
        if plan.churn_per_min <= 0 or not (plan.directory / "churn").exists():
            return None
        flag = plan.directory / "churn"
        return cls(members, plan.churn_per_min, plan.churn_downtime_s, send, schedule, flag=flag)

    async def run(self) -> None:
        rate = len(self.members) * self.per_min / 60.0
        if rate <= 0:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.rng.expovariate(rate))
            if self.flag is not None and not self.flag.exists():
                return
            up = [m for m in self.members if not m.down and m.index != 0]
            if up:
                m = self.rng.choice(up)
                self.crash(m)
                loop.call_later(self.downtime_s, self.restart, m)

    def crash(self, m: Member) -> None:
        m.down = True
        m.epoch += 1
        m.wake_at = 0.0
        self.crashes += 1

    def restart(self, m: Member) -> None:
        old = m.node
        m.node = MeshNode(
            m.identity,
            old.mesh_id,
            old.settings,
            old.gossip,
            old.liveness,
            random.Random(f"{m.index}/{m.epoch}/{time.time_ns()}"),
            old.mesh,  # the state it had (persisted)
        )
        m.epoch += 1
        m.down = False
        m.port = DaemonPort(functools.partial(self.send, m), lambda _keys: None)
        m.driver = EngineDriver(m.node, m.port)
        outs: list[Out] = m.node.start(now_ms())
        m.driver.dispatch(outs)
        self.schedule(m)
        self.restarts += 1
