"""The README's main command, as a user runs it: the demo brings up a real mesh and cleans up."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from smegmesh.testbed.netns import list_netns

pytestmark = pytest.mark.netns


def test_demo_runs_and_leaves_nothing(netns_env: None) -> None:
    before = set(list_netns())
    proc = subprocess.run(
        [sys.executable, "-m", "smegmesh.testbed.demo", "--no-wait"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    # 3 peers + 1 NATed client: every ordered pair answered over the overlay
    assert re.search(r"\b12/12 pairs answered\b", out), out[-3000:]
    assert "get-mesh" in out and "client (via" in out
    # the client's status screen: its assigned peer directly, the other peers through it
    screen = out[out.index("smegctl status") :]
    assert "4/4 online" in screen and "direct" in screen and screen.count("via ") >= 2
    m = re.search(r"removed test bed (\S+)", out)
    assert m, out[-2000:]
    left = [ns for ns in set(list_netns()) - before if ns.startswith(m.group(1))]
    assert left == [], f"namespaces left behind: {left}"
