"""Scenarios: steady, change, crash, join, churn, partition, evict. Each returns a flat result dict.

All times in the results are milliseconds of virtual time, relative to the
event (change, crash, join); ``None`` means "not reached before the end".
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from smegmesh.core.gossip import GossipParams
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.state import MeshState
from smegmesh.sim.metrics import (
    FalsePrunes,
    Spread,
    holds_version,
    percentiles,
    traffic_rates,
    window_by_type,
)
from smegmesh.sim.silent import silence, tree_top
from smegmesh.sim.simulator import T0, NetParams, Simulator

__all__ = ["SCENARIOS", "ScenarioConfig", "run_scenario"]

SCENARIOS = ("steady", "change", "crash", "join", "churn", "partition", "evict")


@dataclass(frozen=True)
class ScenarioConfig:
    nodes: int = 100
    seconds: float = 30.0  # virtual seconds after warm-up (upper bound for event scenarios)
    warmup: float = 3.0
    seed: int = 1
    net: NetParams = field(default_factory=NetParams)
    gossip: GossipParams = field(default_factory=GossipParams)
    liveness: LivenessParams = field(default_factory=LivenessParams)
    byte_sample: int = 1
    churn_per_min: float = 0.05  # churn: fraction of nodes crashing per minute
    churn_downtime: float = 10.0  # churn: seconds a crashed node stays down
    #: churn: seconds of churn before the measured window. 0: the window starts
    #: with the churn, and its first ``churn_downtime`` seconds hold crashes but
    #: no restarts (fewer changes than steady churn brings); ``churn_downtime``
    #: or more: the window sees steady churn. Traffic, changes, crashes and
    #: restarts count in the window, and so do kinds (``--kinds``) and
    #: the traffic by type (``window_by_type``); false prunes, messages and
    #: events count from the start (warm-up and lead included)
    churn_lead: float = 0.0
    partition_seconds: float = 10.0
    share_state: bool = True  # copy-on-write states (False: a full copy per node)
    authority: bool = False  # founding record + admission chains (always on for evict)
    #: share of delivered messages decoded from their bytes (and the full
    #: state's signatures verified at build), as in a daemon; same metrics
    verify_sample: float = 0.0
    #: the mesh id messages and records carry ("sim": 3 characters; a generated
    #: one is ~23, and with ``authority`` the founding record's is used)
    mesh_id: str = "sim"
    #: count gossip messages by kind (``sim.kinds``): result key "kinds"
    kinds: bool = False
    #: members that forward nothing they receive, the top of the tree (``sim.silent``)
    silent_forwarders: int = 0
    #: share of members that run the other dissemination (``sim.simulator.other_dissemination``)
    mixed_share: float = 0.0


def _attach(sim: Simulator, spreads: list[Spread], fp: FalsePrunes | None) -> None:
    nodes = sim.nodes
    by_key = sim.by_key

    def obs(i: int, keys: frozenset[bytes], now: int) -> None:
        st = nodes[i].node.mesh
        for s in spreads:
            s.observe(i, keys, now, st)
        if fp is not None:
            for k in keys:
                j = by_key.get(k)
                if j is None or j == i or not nodes[j].alive:
                    continue
                if st.live_record(k) is None:
                    rec = st.record(k)
                    if rec is not None and not rec.left:
                        fp.events.append((now, i, j))

    sim.observers.append(obs)


def _max_rss_mb() -> int:
    """Peak resident memory of this process so far (MB; 0 where unknown)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    except (ImportError, OSError):  # pragma: no cover - non-POSIX
        return 0


def _stop_when(sim: Simulator, t_end: int, done: Any, step: int = 250) -> None:
    while sim.now < t_end:
        sim.run_until(min(t_end, sim.now + step))
        if done():
            return


def run_scenario(name: str, cfg: ScenarioConfig) -> dict[str, Any]:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}")
    wall0 = time.perf_counter()
    authority = cfg.authority or name == "evict"
    sim = _build(name, cfg, authority)
    if cfg.silent_forwarders:
        _silence(sim, cfg)
    if cfg.kinds:  # from the start of the measured window, as window_by_type
        sim.traffic.kinds = Counter()
    pop = sim.population
    assert pop is not None
    wall_build = time.perf_counter() - wall0
    fp = FalsePrunes()
    spreads: list[Spread] = []
    _attach(sim, spreads, fp)
    warm = T0 + int(cfg.warmup * 1000)
    lead = int(cfg.churn_lead * 1000) if name == "churn" else 0
    window = warm + lead  # the measured window: traffic, changes, restarts followed
    end = window + int(cfg.seconds * 1000)
    sim.run_until(warm)
    base = _Counters.take(sim)
    if lead:
        sim.at(window, lambda: base.retake(sim))
    res: dict[str, Any] = {
        "scenario": name,
        "nodes": cfg.nodes,
        "loss": cfg.net.loss,
        "seed": cfg.seed,
    }
    _describe(res, sim, cfg, authority)
    subject = sim.rng.randrange(cfg.nodes)
    _EVENTS[name](_Run(sim, cfg, subject, end, spreads, res, window))
    if lead:
        res["churn_lead_s"] = cfg.churn_lead
    _add_traffic(res, sim, cfg, window, base.tx, base.rx)
    _add_model_traffic(res, sim, cfg, window, base.models)
    res["window_by_type"] = window_by_type(sim.traffic, cfg.nodes, sim.now - window, base)
    if res.get("changes"):
        # churn: what one change costs a node, a figure that does not grow with
        # N (the change rate does: 20 %/min of N nodes); bytes sent (tx) per node
        res["tx_per_change_b"] = round(res["bps_tx_mean"] * res["virtual_s"] / res["changes"], 1)
    res["false_prunes"] = len(fp.targets)
    res["false_prune_obs"] = len(fp.events)
    crashed = res.pop("_crashed", None)
    if crashed is not None:
        # churn: a crashed node's prune may reach a replica after its restart
        # (a stale prune, refuted at once); a never-crashed victim is a real error
        res["false_prunes_never_crashed"] = len(fp.targets - crashed)
    res["events"] = sim.events
    res["msgs"] = sim.traffic.msgs
    res["wall_build_s"] = round(wall_build, 2)
    res["wall_s"] = round(time.perf_counter() - wall0, 2)
    res["max_rss_mb"] = _max_rss_mb()
    res["build_ids_s"] = round(pop.t_identities, 2)
    res["build_records_s"] = round(pop.t_records, 2)
    res["build_state_s"] = round(pop.t_state, 2)
    if authority:
        res["build_chains_s"] = round(pop.t_chains, 2)
    res["converged"] = res.get("converged", sim.converged())
    if cfg.verify_sample > 0:
        res["decoded_msgs"] = sim.decoded
    if sim.traffic.kinds is not None:
        res["kinds"] = dict(sorted(sim.traffic.kinds.items()))
    res["_sim"] = sim
    return res


def _silence(sim: Simulator, cfg: ScenarioConfig) -> None:
    """Make the top ``cfg.silent_forwarders`` members of the tree hostile (``sim.silent``)."""
    top = set(tree_top([sn.key for sn in sim.nodes], cfg.gossip.tree_fanout, cfg.silent_forwarders))
    sim.silent = frozenset(sn.pop_index for sn in sim.nodes if sn.key in top)
    for sn in sim.nodes:
        if sn.pop_index in sim.silent:
            silence(sn.node)


def _describe(res: dict[str, Any], sim: Simulator, cfg: ScenarioConfig, authority: bool) -> None:
    """What the run's mesh is: members of the other dissemination, admission chains."""
    if cfg.mixed_share:
        res["mixed_members"] = sum(sim.mixed(sn.pop_index) for sn in sim.nodes)
    if authority:
        pop = sim.population
        assert pop is not None
        res["authority"] = True
        res.update(depth_summary(pop.depths[: cfg.nodes] if pop.depths else []))


def _build(name: str, cfg: ScenarioConfig, authority: bool) -> Simulator:
    """The warmed-up-to-be steady mesh of ``cfg`` (one spare node for ``join``)."""
    return Simulator.steady(
        cfg.nodes,
        spare=1 if name == "join" else 0,
        seed=cfg.seed,
        net=cfg.net,
        gossip=cfg.gossip,
        liveness=cfg.liveness,
        byte_sample=cfg.byte_sample,
        share_state=cfg.share_state,
        authority=authority,
        verify_sample=cfg.verify_sample,
        mesh_id=cfg.mesh_id,
        mixed_share=cfg.mixed_share,
    )


def _add_traffic(
    res: dict[str, Any],
    sim: Simulator,
    cfg: ScenarioConfig,
    warm: int,
    tx0: list[int],
    rx0: list[int],
) -> None:
    """Traffic rates since the warm-up (counters ``tx0``/``rx0`` then) and virtual time."""
    secs = (sim.now - warm) / 1000
    tx = [
        a - b
        for a, b in zip(sim.traffic.tx, tx0 + [0] * (len(sim.traffic.tx) - len(tx0)), strict=True)
    ]
    rx = [
        a - b
        for a, b in zip(sim.traffic.rx, rx0 + [0] * (len(sim.traffic.rx) - len(rx0)), strict=True)
    ]
    res.update(_prefix("bps_", traffic_rates(tx, rx, range(cfg.nodes), secs)))
    res["virtual_s"] = round(secs, 3)


@dataclass
class _Counters:
    """The traffic counters at the start of the measured window."""

    tx: list[int]
    rx: list[int]
    models: dict[str, list[int]]
    by_type: dict[str, list[int]]
    type_models: dict[tuple[str, str], int]

    @classmethod
    def take(cls, sim: Simulator) -> _Counters:
        c = cls([], [], {}, {}, {})
        c.retake(sim)
        return c

    def retake(self, sim: Simulator) -> None:
        if sim.traffic.kinds is not None:  # --kinds: counted in the window too
            sim.traffic.kinds = Counter()
        self.tx, self.rx = list(sim.traffic.tx), list(sim.traffic.rx)
        self.models = {m: list(v) for m, v in sim.traffic.models.items()}
        self.by_type = {t: list(v) for t, v in sim.traffic.by_type.items()}
        self.type_models = dict(sim.traffic.type_models)


@dataclass
class _Run:
    """One scenario run after the warm-up: what its event and measurement use."""

    sim: Simulator
    cfg: ScenarioConfig
    subject: int  # a random member (the event's subject, where it has one)
    end: int  # virtual time the run stops at the latest
    spreads: list[Spread]  # observed on every state change (see _attach)
    res: dict[str, Any]  # the results, added to by the event
    #: start of the measured window (after the warm-up, and for churn its lead)
    window: int

    def follow(self, prefix: str, sp: Spread, among: list[int]) -> None:
        """Run until ``sp`` reached every node of ``among`` (or the end); its summary."""
        self.spreads.append(sp)
        times = sp.times
        _stop_when(self.sim, self.end, lambda: sum(1 for i in among if i in times) >= len(among))
        self.res.update(_prefix(prefix, sp.summary(among)))


def _add_model_traffic(
    res: dict[str, Any],
    sim: Simulator,
    cfg: ScenarioConfig,
    warm: int,
    models0: dict[str, list[int]],
) -> None:
    """With a wire overhead model: every model's mean tx+rx per node since the warm-up."""
    secs = (sim.now - warm) / 1000
    if secs <= 0 or not cfg.nodes:
        return
    for model, (tx, rx) in sorted(sim.traffic.models.items()):
        tx0, rx0 = models0.get(model, [0, 0])
        res[f"bps_total_mean_{model}"] = (tx - tx0 + rx - rx0) / secs / cfg.nodes


# Each scenario's event and its measurement, after the warm-up, adding its
# results to ``run.res``.


def _run_steady(run: _Run) -> None:
    run.sim.run_until(run.end)


def _run_change(run: _Run) -> None:
    sim, subject = run.sim, run.subject
    sn = sim.nodes[subject]
    sim.command(subject, sn.node.update_self(sim.now, description="changed"))
    rec = sn.node.mesh.record(sn.key)
    assert rec is not None
    sp = Spread(sn.key, sim.now, holds_version(sn.key, rec.version))
    sp.times[subject] = sim.now
    run.follow("change_", sp, [x.index for x in sim.live()])


def _run_crash(run: _Run) -> None:
    sim, liveness = run.sim, run.cfg.liveness
    sn = sim.nodes[run.subject]
    sim.crash(run.subject)

    def gone(st: MeshState, k: bytes = sn.key) -> bool:
        return st.live_record(k) is None

    run.follow("prune_", Spread(sn.key, sim.now, gone), [x.index for x in sim.live()])
    run.res["detect_bound_ms"] = liveness.probe_interval_ms + liveness.suspicion_ms


def _run_join(run: _Run) -> None:
    sim = run.sim
    j = sim.join(run.cfg.nodes)
    jk = sim.nodes[j].key

    def known(st: MeshState, k: bytes = jk) -> bool:
        return st.live_record(k) is not None

    run.follow("join_", Spread(jk, sim.now, known), [x.index for x in sim.live() if x.index != j])


#: Churn: a restart is followed if the run has this long left after it.
RESTART_SPREAD_MS = 5_000


def _run_churn(run: _Run) -> None:
    sim, cfg, end = run.sim, run.cfg, run.end
    down_ms = int(cfg.churn_downtime * 1000)
    rate = cfg.churn_per_min * cfg.nodes / 60_000.0  # crashes per ms
    t = sim.now
    crashes = 0
    crashed: set[int] = set()
    # A restart's new record, from its publication to every node that never
    # crashed: how fast changes spread while the mesh is busy (restarts early
    # enough to have RESTART_SPREAD_MS left). By key, not in run.spreads: those
    # are all checked on every change, and a churn run follows hundreds.
    restarts: dict[bytes, Spread] = {}
    changes = [0]  # crashes and restarts that happened (each one change to spread)

    def restart(v: int) -> None:
        sim.restart(v)
        if sim.now < run.window:  # during the lead: not measured
            return
        changes[0] += 1
        rec = sim.nodes[v].node.mesh.record(sim.nodes[v].key)
        if rec is not None and sim.now + RESTART_SPREAD_MS <= end:
            live = holds_version(rec.wg_key, rec.version, live=True)
            restarts[rec.wg_key] = Spread(rec.wg_key, sim.now, live)

    def observe(i: int, keys: frozenset[bytes], now: int) -> None:
        for k in keys:
            sp = restarts.get(k)
            if sp is not None:
                sp.observe(i, keys, now, sim.nodes[i].node.mesh)

    sim.observers.append(observe)
    while rate > 0:
        t += max(1, int(sim.rng.expovariate(rate)))
        if t >= end:
            break
        victim = sim.rng.randrange(cfg.nodes)

        def crash(v: int = victim) -> None:
            if sim.nodes[v].alive:
                crashed.add(v)
                changes[0] += int(sim.now >= run.window)
                restarts.pop(sim.nodes[v].key, None)  # down again: its record is moot
                sim.crash(v)
                sim.at(sim.now + down_ms, lambda: restart(v))

        sim.at(t, crash)
        crashes += int(t >= run.window)
    sim.run_until(end)
    sim.observers.remove(observe)
    run.res["crashes"] = crashes
    run.res["changes"] = changes[0]
    run.res["_crashed"] = crashed
    steady = [i for i in range(cfg.nodes) if i not in crashed]
    delays = [d for sp in restarts.values() for d in sp.delays(steady)]
    run.res["restarts_followed"] = len(restarts)
    run.res.update(_prefix("restart_spread_", percentiles(delays, (0.5, 0.99, 0.999))))
    run.res["restart_spread_missed"] = sum(1 for d in delays if d is None)


def _run_partition(run: _Run) -> None:
    sim, cfg, res = run.sim, run.cfg, run.res
    half = cfg.nodes // 2
    sim.partition([0 if i < half else 1 for i in range(cfg.nodes)])
    sn = sim.nodes[0]
    sim.command(0, sn.node.update_self(sim.now, description="during-partition"))
    sim.run_until(sim.now + int(cfg.partition_seconds * 1000))
    sim.partition(None)
    healed = sim.now
    res["partition_ms"] = int(cfg.partition_seconds * 1000)
    n_live = len(sim.live())
    live_at: list[int] = []

    def done() -> bool:
        # heal time: every live node holds every live node as live (the engine's
        # own incremental views); then on to full convergence (equal digests)
        if not live_at and all(len(x.node.live_records()) == n_live for x in sim.live()):
            live_at.append(sim.now)
        return bool(live_at) and sim.converged()

    _stop_when(sim, run.end, done, step=500)
    res["converged"] = sim.converged()
    res["converge_ms_after_heal"] = (sim.now - healed) if res["converged"] else None
    res["live_everywhere_ms_after_heal"] = (live_at[0] - healed) if live_at else None
    res["live_everywhere"] = (
        all(x.node.mesh.live_record(y.key) is not None for x in sim.live() for y in sim.live())
        if cfg.nodes <= 200
        else None
    )


def _run_evict(run: _Run) -> None:
    # The founder (node 0, an admin) evicts one member (not cascading:
    # the nodes it admitted stay).
    sim = run.sim
    victim = run.subject if run.subject != 0 else 1
    vk = sim.nodes[victim].key
    admin = sim.nodes[0]
    t_evict = sim.now
    sim.command(0, admin.node.evict(sim.now, vk))
    rev = [r for rs in admin.node.mesh.authority.revoked.values() for r in rs]
    run.res["evict_kept"] = len(rev[0].keep) if rev else 0

    def gone(st: MeshState, k: bytes = vk) -> bool:
        return st.record(k) is None

    sp = Spread(vk, t_evict, gone)
    if gone(admin.node.mesh):
        sp.times[0] = t_evict
    among = [x.index for x in sim.live() if x.index != victim]
    run.follow("evict_", sp, among)
    # Nothing else was lost: every other live node is still live everywhere
    # (checked on a sample of replicas at large sizes).
    step = max(1, len(among) // 50)
    run.res["evict_collateral"] = sum(
        1
        for i in among[::step]
        for j in among
        if sim.nodes[i].node.mesh.live_record(sim.nodes[j].key) is None
    )


_Event = Callable[[_Run], None]

_EVENTS: dict[str, _Event] = {
    "steady": _run_steady,
    "change": _run_change,
    "crash": _run_crash,
    "join": _run_join,
    "churn": _run_churn,
    "partition": _run_partition,
    "evict": _run_evict,
}
assert set(_EVENTS) == set(SCENARIOS)


def depth_summary(depths: list[int]) -> dict[str, Any]:
    """Admission chain depths: mean, p50/p99/max and the histogram ``depth:count``."""
    if not depths:
        return {}
    d = sorted(depths)
    n = len(d)
    hist: dict[int, int] = {}
    for x in d:
        hist[x] = hist.get(x, 0) + 1
    return {
        "depth_mean": round(sum(d) / n, 2),
        "depth_p50": d[(n - 1) // 2],
        "depth_p99": d[min(n - 1, math.ceil(0.99 * n) - 1)],
        "depth_max": d[-1],
        "depth_hist": " ".join(f"{k}:{v}" for k, v in sorted(hist.items())),
    }


def _prefix(p: str, d: dict[str, Any]) -> dict[str, Any]:
    return {p + k: v for k, v in d.items()}
