"""SIGHUP (``daemon/reload.py``): what applies live, what a refused reload leaves alone."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from smegmesh.daemon import reload
from smegmesh.daemon.config import load_config
from smegmesh.daemon.reload import reload_config


def _daemon(f: Path) -> Any:
    return SimpleNamespace(config=load_config(f), meshes={}, events=None)


def _refused(tmp_path: Path, before: str, after: str, caplog: pytest.LogCaptureFixture) -> str:
    """Reload ``after`` over a daemon started on ``before``: refused, the running
    configuration kept; the ERROR log it wrote."""
    f = tmp_path / "c.yaml"
    f.write_text(before)
    daemon = _daemon(f)
    old = daemon.config
    f.write_text(after)
    with caplog.at_level(logging.ERROR, logger="smegd"):
        assert reload_config(daemon, f) is False
    assert daemon.config is old
    return caplog.text


def test_a_reload_with_an_interval_below_a_millisecond_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It passed the loader, replaced the running configuration, and then the gossip
    engine refused the 0 ms interval: a half-applied reload, and an exception out
    of the signal handler."""
    text = _refused(tmp_path, "stubWg: true\n", "stubWg: true\npullInterval: 0.0001\n", caplog)
    assert "pullInterval" in text


def test_engine_parameters_are_built_before_the_configuration_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:

    def refused(config: Any) -> Any:
        raise ValueError("gossip intervals must be positive")

    monkeypatch.setattr(reload, "gossip_params", refused)
    text = _refused(tmp_path, "stubWg: true\n", "stubWg: true\nsyncInterval: 2\n", caplog)
    assert "gossip intervals must be positive" in text


def test_a_reload_that_would_break_a_rule_between_keys_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """heartbeatInterval applies live, gcHorizon at the next start: merging the new
    heartbeat over the running gcHorizon made a configuration the loader refuses
    (gcHorizon > 3 x heartbeatInterval: tombstones collected before a silent
    member is pruned), though the file is valid by itself."""
    before = "stubWg: true\nheartbeatInterval: 2\ngcHorizon: 60\n"
    _refused(tmp_path, before, "stubWg: true\nheartbeatInterval: 30\ngcHorizon: 120\n", caplog)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "not reloaded" in line and "gcHorizon: must be greater than 3 x" in line, line
    assert "restart" in line and "\n" not in line, line
