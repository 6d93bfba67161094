"""The swarm's plan and members: who is where, and every member's settled start.

Part of :mod:`smegmesh.testbed.swarm` (see there): the :class:`Plan` every
worker process derives its members from, the :class:`Member` and :class:`Stats`
records, and :func:`build_members` (every member holding every record).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from smegmesh.core.cert import Cert, Founding
from smegmesh.core.driver import EngineDriver
from smegmesh.core.gossip import GossipParams
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.meshnode import MeshNode, MeshSettings
from smegmesh.core.record import NodeRecord, Role
from smegmesh.daemon import rpc_dgram_client, rpc_server
from smegmesh.daemon.engineport import DaemonPort
from smegmesh.daemon.transport import RpcClient, TlsIdentity
from smegmesh.sim.simulator import _prime_views
from smegmesh.sim.state import (
    FOUNDED_AGO_MS,
    admission_chains,
    clone_state,
    node_seed,
    steady_state,
)

__all__ = [
    "CALL_TIMEOUT_S",
    "COALESCE_S",
    "MESH_ID",
    "STARTUP_RATE",
    "SWEEP_S",
    "TOKEN_TTL_MS",
    "TOKEN_USES",
    "Member",
    "Plan",
    "Stats",
    "build_members",
    "member_address",
]

MESH_ID = "swarm"
#: seconds a call may take (smegd's default ``timeout``)
CALL_TIMEOUT_S = 5.0
#: how often member clients with open channels are swept for idle ones
SWEEP_S = 5.0
#: due ticks closer than this are run in one batch (timer coalescing)
COALESCE_S = 0.005
TOKEN_TTL_MS = 86_400_000
#: members whose first tick is started per second (see ``run_timers``)
STARTUP_RATE = 100.0
TOKEN_USES = 1000


def member_address(proc: int, j: int) -> str:
    """The loopback address of member ``j`` of process ``proc``: ``127.(16+proc).x.y``."""
    return f"127.{16 + proc}.{j // 250}.{j % 250 + 1}"


@dataclass(frozen=True)
class Plan:
    members: int
    procs: int
    base_port: int
    seed: int
    t0: int
    directory: Path
    #: members' idle close of their channels to outside nodes (smegd's: 60 s)
    channel_idle_s: float = 60.0
    #: members crashed a minute, as a share of them, once ``DIR/churn`` exists
    #: (``swarm_churn``); 0: none. And how long a crashed member stays down.
    churn_per_min: float = 0.0
    churn_downtime_s: float = 10.0
    #: a founded mesh, as ``smegctl create`` makes: member 0 founded it (its
    #: founding dated FOUNDED_AGO_MS before ``t0``), every other member was
    #: admitted by a random earlier one (the simulator's ``--authority``
    #: admission tree), and every record carries its admission chain
    authority: bool = False
    #: the members' ``GossipParams.dissemination`` (smegd's ``dissemination`` key)
    dissemination: str = "gossip"

    @cached_property
    def founding(self) -> Founding | None:
        if not self.authority:
            return None
        return Founding.create(
            NodeIdentity.from_seed(node_seed(self.seed, 0)),
            MESH_ID,
            now_ms=self.t0 - FOUNDED_AGO_MS,
        )

    @property
    def mesh_id(self) -> str:
        """``swarm``, or the founded mesh's self-certifying id (``swarm-SUFFIX``)."""
        return self.founding.mesh_id if self.founding is not None else MESH_ID

    def proc_of(self, i: int) -> int:
        return i % self.procs

    def endpoint(self, i: int) -> str:
        p = i % self.procs
        return f"{member_address(p, i // self.procs)}:{self.base_port + p}"

    def tls(self, proc: int) -> TlsIdentity:
        return TlsIdentity.load_or_create(self.directory / f"tls-{proc}")


@dataclass(slots=True)
class Member:
    index: int
    identity: NodeIdentity
    node: MeshNode
    wake_at: float = 0.0
    client: RpcClient | None = None  # calls to nodes outside the swarm (made on first use)
    #: the engine's driver and port, the daemon's (set by the worker)
    driver: EngineDriver | None = None
    port: DaemonPort | None = None
    #: crashed (``swarm_churn``): no ticks, calls to it fail; bumped at a crash
    #: and a restart, so replies to calls made before are dropped
    down: bool = False
    epoch: int = 0


@dataclass
class Stats:
    local_calls: int = 0
    cross_calls: int = 0
    external_calls: int = 0
    served: int = 0
    failures: int = 0
    ticks: int = 0
    batches: int = 0
    lag_max_ms: float = 0.0
    #: worst timer lag since the last stats file (about the last second)
    lag_recent_ms: float = 0.0
    #: the cyclic garbage collector: collections of the oldest generation,
    #: time in all collections, the longest one (ms)
    gc_full: int = 0
    gc_ms: float = 0.0
    gc_max_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def build_members(plan: Plan, proc: int) -> tuple[list[Member], dict[bytes, int]]:
    """This process's members (every one holding every record) and the key -> index map."""
    ids = [NodeIdentity.from_seed(node_seed(plan.seed, i)) for i in range(plan.members)]
    fps = [plan.tls(p).fingerprint for p in range(plan.procs)]
    founding, mesh_id = plan.founding, plan.mesh_id
    chains: list[tuple[Cert, ...]] = [()] * plan.members
    if founding is not None:
        chains, _ = admission_chains(ids, founding, plan.seed)
    recs = [
        NodeRecord.create(
            ident,
            mesh_id,
            version=plan.t0,
            now_ms=plan.t0,
            role=Role.PEER,
            wg_endpoint=f"{plan.endpoint(i).rpartition(':')[0]}:51820",
            control_endpoint=plan.endpoint(i),
            tls_fp=fps[plan.proc_of(i)],
            chain=chains[i],
        )
        for i, ident in enumerate(ids)
    ]
    base = steady_state(mesh_id, founding, recs, plan.t0)
    gossip = GossipParams().as_dissemination(plan.dissemination)  # as smegd's key
    liveness = LivenessParams.from_heartbeat(2000)
    members: list[Member] = []
    for i in range(proc, plan.members, plan.procs):
        node = MeshNode(
            ids[i],
            mesh_id,
            MeshSettings(
                role=Role.PEER,
                wg_endpoint=recs[i].wg_endpoint,
                control_endpoint=recs[i].control_endpoint,
                tls_fp=fps[proc],
            ),
            gossip,
            liveness,
            random.Random(f"swarm/{plan.seed}/{i}"),
            clone_state(base),
        )
        members.append(Member(i, ids[i], node))
    # Equal clones have equal O(N) views: computed once, shared until a member's state changes.
    _prime_views([m.node for m in members])
    keys = {ident.wg_public_key: i for i, ident in enumerate(ids)}
    return members, keys


def raise_server_limits(n: int) -> None:
    """One server stands for the ``n`` members of a swarm process: its limits scale with them.

    smegd's limits (calls in flight, streams per connection) are per node;
    here every member's share goes through one server and, between swarm
    processes, one connection. Per-caller limits stay as they are. Call it
    before the server is made (its pools are sized then).
    """
    rpc_server.MAX_CALLS = max(rpc_server.MAX_CALLS, 8 * n)
    rpc_server.MAX_AWAITING = max(rpc_server.MAX_AWAITING, 8 * n)
    rpc_server.MAX_DATAGRAM_CALLS = max(rpc_server.MAX_DATAGRAM_CALLS, 16 * n)
    # One datagram client carries every member's calls: its bound on calls in
    # flight (past it a call goes over the stream) is per node in smegd.
    rpc_dgram_client.MAX_PENDING = max(rpc_dgram_client.MAX_PENDING, 8 * n)
    streams = max(rpc_server.MAX_STREAMS_PER_CONNECTION, 8 * n)
    rpc_server._SERVER_OPTIONS = [
        (k, streams if k == "grpc.max_concurrent_streams" else v)
        for k, v in rpc_server._SERVER_OPTIONS
    ]
