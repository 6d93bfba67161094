"""The simulator's per-message wire overhead (issue 14): on requests and replies, off by default."""

from __future__ import annotations

from smegmesh.sim.driver import NetParams
from smegmesh.sim.overhead import REPLY_OVERHEAD_BYTES, REQUEST_OVERHEAD_BYTES
from smegmesh.sim.simulator import T0, Simulator


def _run(overhead: bool) -> Simulator:
    sim = Simulator.steady(12, seed=3, net=NetParams(loss=0.0, wire_overhead=overhead))
    sim.run_until(T0 + 6_000)
    return sim


def test_wire_overhead_adds_the_table_per_message_and_nothing_else() -> None:
    bare, charged = _run(False), _run(True)
    assert bare.traffic.msgs == charged.traffic.msgs  # same run, only the byte count differs
    msgs = bare.traffic.msgs
    extra = sum(charged.traffic.tx) - sum(bare.traffic.tx)
    # every message is a request or a reply: between all-replies and all-requests
    assert msgs * REPLY_OVERHEAD_BYTES <= extra <= msgs * REQUEST_OVERHEAD_BYTES
    assert extra > 0.3 * msgs * (REQUEST_OVERHEAD_BYTES + REPLY_OVERHEAD_BYTES)
