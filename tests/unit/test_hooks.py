"""preUp/postUp/preDown/postDown commands: wg-quick style substitution, failures logged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from smegmesh.daemon.hooks import run_hooks


def test_hooks_see_the_interface_and_mesh(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_hooks(
        "postUp",
        [f"echo %i $IFNAME $SMEG_MESH_ID >> {out}", f"echo second >> {out}"],
        "smeg0123",
        "amber-falcon-river-k7q2",
    )
    assert out.read_text().splitlines() == [
        "smeg0123 smeg0123 amber-falcon-river-k7q2",
        "second",
    ]


def test_a_failing_hook_is_logged_and_the_next_one_still_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        run_hooks("preDown", ["exit 3", f"touch {out}"], "smeg0", "m")
    assert out.exists()
    assert any("exited 3" in r.getMessage() for r in caplog.records)


def test_the_hook_variable_the_dns_help_names_is_set(tmp_path: Path) -> None:
    """`smegctl dns-help` (and docs/DNS.md, the same text) suggest a postUp hook
    line: the variable it uses must be one hooks get (it said $IFACE, unset)."""
    import re

    from smegmesh.dns.help import resolver_help

    m = re.search(r'resolvectl dns "(\$\w+)"', resolver_help("127.0.0.1:5353"))
    assert m, "the help no longer suggests a hook line"
    out = tmp_path / "out"
    run_hooks("postUp", [f'echo "{m.group(1)}" > {out}'], "smeg0", "m")
    assert out.read_text().strip() == "smeg0"
