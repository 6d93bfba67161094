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


def test_a_backgrounded_hook_command_does_not_hold_the_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """wg-quick users write `PostUp = agent &`: sh exits at once, the agent goes on
    with sh's output. Hooks run in the one WireGuard worker thread: waiting for
    the agent's end held every mesh's apply, and after 30 s logged it as failed."""
    import os
    import signal
    import time

    pid_file = tmp_path / "pid"
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO):
        run_hooks("postUp", [f"sleep 60 & echo $! > {pid_file}"], "smeg0", "m")
    took = time.monotonic() - t0
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert took < 20, f"the hook held the worker {took:.0f} s (sh exited at once)"
    assert any("ran postUp hook" in r.getMessage() for r in caplog.records)


def test_a_failing_hook_s_output_is_logged_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        run_hooks("postUp", [r"printf 'first\n\033[2Jsecond' >&2; exit 1"], "smeg0", "m")
    (msg,) = [r.getMessage() for r in caplog.records]
    assert msg.endswith(r"exited 1: first \x1b[2Jsecond"), msg
