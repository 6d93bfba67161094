"""Network faults on a namespace test bed: partitions cut with nftables inside the nodes.

:func:`cut` makes every node of one group drop all IPv6 traffic to and from the
other groups' underlay addresses (one ``inet`` table per node, input and
output hooks): established TCP connections stall and new ones time out, as
across a real network split. :func:`heal` deletes the tables. Each node's
rules live in its own namespace, so nothing outside the test bed is touched.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from smegmesh.testbed.netns import Node, TestbedError

__all__ = ["TABLE", "cut", "heal"]

#: The nftables table (family ``inet``) a cut adds to each node.
TABLE = "smegcut"


def _nft(node: Node, script: str) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", node.ns, "nft", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        raise TestbedError(f"nft in {node.ns}: {proc.stderr.strip()}")


def cut(groups: Sequence[Sequence[Node]]) -> None:
    """Partition: nodes in different groups exchange nothing until :func:`heal`."""
    for i, group in enumerate(groups):
        others = [n.address for j, g in enumerate(groups) if j != i for n in g]
        if not others:
            continue
        addrs = ", ".join(others)
        script = (
            f"table inet {TABLE} {{\n"
            "  chain in { type filter hook input priority -10; "
            f"ip6 saddr {{ {addrs} }} drop; }}\n"
            "  chain out { type filter hook output priority -10; "
            f"ip6 daddr {{ {addrs} }} drop; }}\n"
            "}\n"
        )
        for node in group:
            _nft(node, script)


def heal(nodes: Sequence[Node]) -> None:
    """Remove every cut from ``nodes`` (no error where there is none)."""
    for node in nodes:
        subprocess.run(
            ["ip", "netns", "exec", node.ns, "nft", "delete", "table", "inet", TABLE],
            capture_output=True,
            timeout=30,
            check=False,
        )
