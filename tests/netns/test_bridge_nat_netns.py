"""Bridge masquerading in a real namespace: the nftables table smegd owns, and only that."""

from __future__ import annotations

import subprocess

import pytest

from smegmesh.core.desired import ForwardGuard, forward_guard
from smegmesh.core.record import Role
from smegmesh.net.host import HostNetwork
from smegmesh.testbed.netns import Testbed


@pytest.mark.netns
def test_host_network_owns_only_its_table(testbed: Testbed) -> None:
    node = testbed.add_node()

    def ruleset() -> str:
        return node.run(["nft", "list", "ruleset"]).stdout

    # Somebody else's table in the same namespace.
    subprocess.run(
        ["ip", "netns", "exec", node.ns, "nft", "-f", "-"],
        input="table ip6 other {\n chain c {\n  type nat hook postrouting priority 100;\n }\n}\n",
        check=True,
        text=True,
    )
    host = HostNetwork(netns=node.ns)
    host.set_rules(frozenset(), ForwardGuard())  # nothing to remove: fine
    host.set_rules(frozenset({"smega", "smegb", "smegc"}), ForwardGuard())
    text = ruleset()
    assert "table ip6 smegmesh" in text and text.count("masquerade") == 3
    host.set_rules(frozenset({"smega", "smegb"}), ForwardGuard())  # replaced, not appended
    text = ruleset()
    assert text.count("masquerade") == 2 and "smegc" not in text
    host.set_rules(frozenset(), ForwardGuard())
    text = ruleset()
    assert "smegmesh" not in text and "table ip6 other" in text


@pytest.mark.netns
def test_the_forwarding_guard_loads_and_goes(testbed: Testbed) -> None:
    """The guard's chains are valid nftables, in the same table as the NAT (docs/ROUTING.md)."""
    node = testbed.add_node()
    host = HostNetwork(netns=node.ns)
    guard = forward_guard(
        [("smega", "m1-aaaa", Role.PEER, False), ("smegb", "m2-bbbb", Role.PEER, True)]
    )
    host.set_rules(frozenset({"smega", "smegb"}), guard)
    text = node.run(["nft", "list", "table", "ip6", "smegmesh"]).stdout
    for chain in ("bridge-nat", "mesh-sources", "mesh-forward"):
        assert f"chain {chain} " in text, text
    assert 'iifname "smega" oifname != { "smega", "smegb" }' in text, text
    host.set_rules(frozenset(), forward_guard([]))
    assert "smegmesh" not in node.run(["nft", "list", "ruleset"]).stdout
