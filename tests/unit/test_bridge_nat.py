"""Bridge masquerading (net/host.py): the nftables table smegd owns, and only that."""

from __future__ import annotations

import pytest

from smegmesh.core.desired import ForwardGuard
from smegmesh.net.host import MemoryHost, bridge_nat_ruleset


def test_ruleset_masquerades_between_every_pair() -> None:
    text = bridge_nat_ruleset(frozenset({"smegb", "smega", "smegc"}))
    lines = text.splitlines()
    # atomic replace: create (so delete cannot fail), delete, recreate
    assert lines[:3] == [
        "add table ip6 smegmesh",
        "delete table ip6 smegmesh",
        "table ip6 smegmesh {",
    ]
    assert "type nat hook postrouting priority srcnat; policy accept;" in text
    assert '    iifname { "smegb", "smegc" } oifname "smega" masquerade' in lines
    assert '    iifname { "smega", "smegc" } oifname "smegb" masquerade' in lines
    assert '    iifname { "smega", "smegb" } oifname "smegc" masquerade' in lines
    assert text.count("masquerade") == 3


def test_ruleset_fewer_than_two_interfaces_only_removes() -> None:
    for ifs in (frozenset(), frozenset({"smega"})):
        assert bridge_nat_ruleset(ifs) == "add table ip6 smegmesh\ndelete table ip6 smegmesh\n"


@pytest.mark.parametrize("bad", ["", "a" * 16, 'x" accept', "a b", "x;y", "x\ny"])
def test_ruleset_rejects_bad_interface_names(bad: str) -> None:
    with pytest.raises(ValueError):
        bridge_nat_ruleset(frozenset({bad, "smega"}))
    with pytest.raises(ValueError):
        MemoryHost().set_rules(frozenset({bad, "smega"}), ForwardGuard())


def test_memory_host_records_the_set() -> None:
    h = MemoryHost()
    h.set_rules(frozenset({"a", "b"}), ForwardGuard())
    assert h.bridge_nat == {"a", "b"}
    h.set_rules(frozenset({"a"}), ForwardGuard())
    assert h.bridge_nat == frozenset()
