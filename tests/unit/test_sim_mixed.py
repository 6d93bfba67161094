"""A mesh mixing the two disseminations in the simulator (``--mixed-share``)."""

from __future__ import annotations

from typing import Any

import pytest

from smegmesh.core.gossip import GossipParams
from smegmesh.daemon.config import parse_config
from smegmesh.daemon.reload import gossip_params
from smegmesh.sim.__main__ import config_from_args, parse_args
from smegmesh.sim.scenarios import ScenarioConfig, run_scenario
from smegmesh.sim.simulator import NetParams, other_dissemination


@pytest.mark.parametrize(("mine", "other"), [("gossip", "tree"), ("tree", "gossip")])
def test_the_other_members_run_what_smegds_other_setting_gives(mine: str, other: str) -> None:
    ours = gossip_params(parse_config({"dissemination": mine}))
    theirs = gossip_params(parse_config({"dissemination": other}))
    assert other_dissemination(ours) == theirs


def _tree_churn(**kw: Any) -> dict[str, Any]:
    """60 tree members under churn (30 % a minute), 10 s after a 10 s lead."""
    cfg = ScenarioConfig(
        nodes=60,
        seconds=10.0,
        churn_per_min=0.3,
        churn_lead=10.0,
        gossip=GossipParams().lazy_tree(),
        net=NetParams(wire_overhead="datagram", loss=0.0),
        **kw,
    )
    return run_scenario("churn", cfg)


def test_a_mixed_mesh_spreads_every_restart_to_every_member() -> None:
    res = _tree_churn(mixed_share=0.5)
    sim = res.pop("_sim")
    assert 15 <= res["mixed_members"] <= 45
    kinds = {sn.node.gossip.dissemination for sn in sim.nodes}
    assert kinds == {"gossip", "tree"}
    assert res["restarts_followed"] > 0
    assert res["restart_spread_missed"] == 0
    assert res["false_prunes_never_crashed"] == 0


@pytest.mark.parametrize("share", ["-0.1", "1.5"])
def test_a_share_outside_0_1_is_refused_clearly(share: str) -> None:
    with pytest.raises(SystemExit) as ei:
        config_from_args(parse_args(["--mixed-share", share]))
    assert str(ei.value) == "--mixed-share must be within [0, 1]"


def test_members_that_forward_nothing_along_the_tree_delay_changes_but_lose_none() -> None:
    """A member that says it forwards along the tree and does not (docs/SECURITY.md):
    the root and its children silent, every restart still reaches every member."""
    res = _tree_churn(silent_forwarders=5)
    sim = res.pop("_sim")
    assert len(sim.silent) == 5
    assert res["restarts_followed"] > 0
    assert res["restart_spread_missed"] == 0
