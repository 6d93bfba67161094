"""Deterministic discrete-event simulator running the real ``MeshNode`` engine.

See :mod:`smegmesh.sim.simulator` (event loop, network, faults),
:mod:`smegmesh.sim.scenarios` (steady, change, crash, join, churn, partition)
and docs/SCALE.md. Run ``python -m smegmesh.sim --help``.
"""

from smegmesh.sim.scenarios import SCENARIOS, ScenarioConfig, run_scenario
from smegmesh.sim.simulator import NetParams, Simulator

__all__ = ["SCENARIOS", "NetParams", "ScenarioConfig", "Simulator", "run_scenario"]
