"""``smegd_wireguard_bytes_total``: a counter that never goes down while smegd runs.

WireGuard counts bytes per peer entry. A mesh's total summed over the entries
there at the scrape went down whenever a peer left (pruned, a client moved) or
its entry was made again (its counters start at 0): Prometheus takes any
decrease for a counter reset and counts the whole new value as an increase,
so ``rate()`` showed a burst of the mesh's other traffic at each such change.
"""

from __future__ import annotations

from types import SimpleNamespace as NS
from typing import Any

from prometheus_client import CollectorRegistry

from smegmesh.core.wgconfig import InterfaceStatus, PeerStatus
from smegmesh.daemon.metrics import _StateCollector

MESH = "m-1"


def _daemon() -> Any:
    state = NS(node_keys=lambda: [], is_live=lambda k: True, get=lambda k: None)
    node = NS(mesh=state, suspects=set(), refuted=NS(total=0), by_reference={})
    return NS(meshes={MESH: NS(mesh_id=MESH, node=node)}, wg_status={}, dns=None)


def _status(**peers: tuple[int, int]) -> InterfaceStatus:
    return InterfaceStatus(
        name="smeg0",
        public_key=None,
        listen_port=51820,
        peers={
            k.encode(): PeerStatus(k.encode(), None, frozenset(), 0, None, rx, tx)
            for k, (rx, tx) in peers.items()
        },
    )


def _bytes(reg: CollectorRegistry, direction: str) -> float | None:
    return reg.get_sample_value(
        "smegd_wireguard_bytes_total", {"mesh": MESH, "direction": direction}
    )


def test_wireguard_bytes_never_go_down_when_peers_leave_or_are_made_again() -> None:
    d = _daemon()
    reg = CollectorRegistry()
    reg.register(_StateCollector(d))
    seen: list[tuple[float | None, float | None]] = []
    for status in [
        _status(a=(1000, 100), b=(500, 50)),
        _status(a=(1010, 110)),  # b left: its 500/50 stay counted
        _status(a=(1020, 120), b=(5, 1)),  # b back, a new entry counting from 0
        _status(a=(3, 2), b=(6, 2)),  # a's entry made again: counts from 0
    ]:
        d.wg_status[MESH] = status
        seen.append((_bytes(reg, "in"), _bytes(reg, "out")))
    assert seen == [(1500, 150), (1510, 160), (1525, 171), (1529, 174)]


def test_a_mesh_left_and_joined_again_counts_from_zero() -> None:
    d = _daemon()
    reg = CollectorRegistry()
    reg.register(_StateCollector(d))
    d.wg_status[MESH] = _status(a=(1000, 100))
    assert _bytes(reg, "in") == 1000
    rt = d.meshes.pop(MESH)
    assert _bytes(reg, "in") is None
    d.meshes[MESH] = rt
    d.wg_status[MESH] = _status(a=(7, 1))
    assert _bytes(reg, "in") == 7
