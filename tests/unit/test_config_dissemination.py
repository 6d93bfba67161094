"""smegd's ``dissemination`` and ``treeFanout`` keys: parsed, checked, and passed to the core."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from smegmesh.core.gossip import GossipParams
from smegmesh.daemon.config import Config, ConfigError, parse_config
from smegmesh.daemon.reload import LIVE_KEYS, gossip_params


def _err(text: str) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_config(yaml.safe_load(text))
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_defaults_are_the_cores() -> None:
    c = parse_config({})
    assert (c.dissemination, c.tree_fanout) == ("gossip", GossipParams().tree_fanout)
    g = gossip_params(c)
    assert (g.dissemination, g.tree_fanout) == ("gossip", GossipParams().tree_fanout)


def test_tree_reaches_gossip_params() -> None:
    c = parse_config(yaml.safe_load("dissemination: Tree\ntreeFanout: 6\nbranch: 2"))
    g = gossip_params(c)
    assert (g.dissemination, g.tree_fanout, g.branch) == ("tree", 6, 2)
    # the measured tree: lazy rounds to one member, one round (docs/SCALE.md, 15)
    assert (g.round_fanout, g.infection_count) == (1, 1)


def test_tree_keeps_an_explicit_infection_count() -> None:
    g = gossip_params(parse_config({"dissemination": "tree", "infectionCount": 3}))
    assert (g.round_fanout, g.infection_count) == (1, 3)
    g = gossip_params(parse_config({"infectionCount": 2}))
    assert (g.dissemination, g.round_fanout, g.infection_count) == ("gossip", None, 2)


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ("dissemination: flood", "dissemination", "'gossip' or 'tree'"),
        ("dissemination: 3", "dissemination", "'gossip' or 'tree'"),
        ("treeFanout: 1", "treeFanout", "greater than or equal to 2"),
        ("treeFanout: 65", "treeFanout", "less than or equal to 64"),
        ("treeFanout: true", "treeFanout", "true or false"),
    ],
)
def test_bad_values_name_the_key(text: str, key: str, says: str) -> None:
    msg = _err(text)
    assert msg.startswith(f"config: {key}: "), msg
    assert says in msg, msg


def test_a_restart_key() -> None:
    """The tree's cached neighbours assume one setting for the process's life."""
    assert not {"dissemination", "tree_fanout"} & LIVE_KEYS
    assert Config.model_fields["tree_fanout"].alias == "treeFanout"


@pytest.mark.parametrize("how", ["gossip", "tree"])
def test_swarm_members_use_the_same_parameters_as_smegd(tmp_path: Path, how: str) -> None:
    """The test-bed's members get what smegd's key gives (bench/member_scale_bench.py)."""
    from smegmesh.testbed.swarm_plan import Plan, build_members

    plan = Plan(4, 1, 47000, 1, 1_800_000_000_000, tmp_path, dissemination=how)
    members, _ = build_members(plan, 0)
    want = gossip_params(parse_config({"dissemination": how}))
    assert {m.node.gossip for m in members} == {want}
