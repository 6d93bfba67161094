"""Measurements taken from the ``Changed`` outputs of the simulated nodes."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from smegmesh.core.state import MeshState

__all__ = [
    "FalsePrunes",
    "Spread",
    "holds_version",
    "percentiles",
    "traffic_rates",
    "window_by_type",
]


@dataclass
class Spread:
    """First time, per node, that ``cond(state)`` holds after a change of ``key`` at ``t0``.

    Checked whenever a node reports ``Changed`` for ``key`` (conditions are
    about that key only).
    """

    key: bytes
    t0: int
    cond: Callable[[MeshState], bool]
    times: dict[int, int] = field(default_factory=dict)

    def observe(self, node: int, keys: frozenset[bytes], now: int, state: MeshState) -> None:
        if self.key in keys and node not in self.times and self.cond(state):
            self.times[node] = now

    def delays(self, among: Iterable[int]) -> list[int | None]:
        return [(self.times[i] - self.t0) if i in self.times else None for i in among]

    def summary(
        self, among: Iterable[int], qs: tuple[float, ...] = (0.5, 0.99, 1.0)
    ) -> dict[str, float | None]:
        return percentiles(self.delays(among), qs)


def holds_version(key: bytes, version: int, live: bool = False) -> Callable[[MeshState], bool]:
    """A :class:`Spread` condition: the state holds ``key``'s record at ``version`` or later
    (``live``: and does not hold it pruned)."""

    def cond(st: MeshState) -> bool:
        r = st.live_record(key) if live else st.record(key)
        return r is not None and r.version >= version

    return cond


def percentiles(
    delays: list[int | None], qs: tuple[float, ...] = (0.5, 0.99, 1.0)
) -> dict[str, float | None]:
    """Time (ms) by which a fraction q of the population was reached (None: never)."""
    n = len(delays)
    got = sorted(d for d in delays if d is not None)
    out: dict[str, float | None] = {}
    for q in qs:
        need = max(1, math.ceil(q * n - 1e-9)) if n else 0
        name = f"p{round(q * 100, 3):g}"  # p50, p99, p99.9, p100
        out[name] = float(got[need - 1]) if n and need <= len(got) else None
    out["reached"] = len(got) / n if n else 1.0
    return out


@dataclass
class FalsePrunes:
    """Prunes of nodes that were alive when a replica applied them."""

    events: list[tuple[int, int, int]] = field(default_factory=list)  # (time, replica, target)

    @property
    def targets(self) -> set[int]:
        return {t for _, _, t in self.events}


def traffic_rates(
    tx: list[int], rx: list[int], nodes: Iterable[int], seconds: float
) -> dict[str, float]:
    """Control bytes per node per second over a window (tx = sent, tx+rx = total)."""
    idx = list(nodes)
    if not idx or seconds <= 0:
        return {"tx_mean": 0.0, "tx_max": 0.0, "total_mean": 0.0, "total_max": 0.0}
    txs = [tx[i] / seconds for i in idx]
    tot = [(tx[i] + rx[i]) / seconds for i in idx]
    return {
        "tx_mean": sum(txs) / len(txs),
        "tx_max": max(txs),
        "total_mean": sum(tot) / len(tot),
        "total_max": max(tot),
    }


class _TypeCounts(Protocol):
    by_type: dict[str, list[int]]  # message type -> [count, bytes as charged]
    type_models: dict[tuple[str, str], int]  # (type, model) -> bytes


def window_by_type(
    now: _TypeCounts, nodes: int, window_ms: int, base: _TypeCounts
) -> dict[str, dict[str, float]]:
    """Messages by type since ``base``, ``window_ms`` ago: count, bytes a node sends a second.

    ``bps``: as charged (payload, plus the chosen wire overhead model's bytes);
    with a model, ``bps_payload`` beside it. Each message counted once (sent).
    """
    secs = window_ms / 1000
    per = secs * nodes if secs > 0 and nodes else 1.0
    out: dict[str, dict[str, float]] = {}
    for name, (cnt, size) in sorted(now.by_type.items()):
        cnt0, size0 = base.by_type.get(name, [0, 0])
        row: dict[str, float] = {"msgs": cnt - cnt0, "bps": round((size - size0) / per, 1)}
        key = (name, "payload")
        if key in now.type_models:
            paid = now.type_models[key] - base.type_models.get(key, 0)
            row["bps_payload"] = round(paid / per, 1)
        if row["msgs"]:
            out[name] = row
    return out
