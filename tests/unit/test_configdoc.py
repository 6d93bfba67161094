"""docs/CONFIG.md is generated from the config models and must match them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from smegmesh.daemon.config import ConfigError, load_config
from smegmesh.daemon.configdoc import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"


def test_committed_reference_matches_the_models() -> None:
    assert DOC.read_text() == render(), (
        "docs/CONFIG.md is stale: uv run python -m smegmesh.daemon.configdoc > docs/CONFIG.md"
    )


def _documented(section: str) -> dict[str, str]:
    """The rows of one section of the committed docs/CONFIG.md: key -> description."""
    text = DOC.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \|.*\| (.*) \|$", text, flags=re.MULTILINE)
    return dict(rows)


def _accepted(tmp_path: Path, yaml_text: str) -> set[str]:
    """The keys the loader accepts, as its unknown-key error lists them."""
    f = tmp_path / "smegd.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match="unknown key") as ei:
        load_config(f)
    return set(str(ei.value).split("allowed keys: ", 1)[1].split(", "))


@pytest.mark.parametrize(
    ("section", "yaml_text"),
    [
        ("Top level", "notAKey: 1\n"),
        ("`baseConfiguration`", "baseConfiguration:\n  notAKey: 1\n"),
    ],
)
def test_documented_keys_are_the_keys_the_loader_accepts(
    tmp_path: Path, section: str, yaml_text: str
) -> None:
    """What a user reads in docs/CONFIG.md is what `smegd` accepts, every key described."""
    documented = _documented(section)
    assert set(documented) == _accepted(tmp_path, yaml_text)
    assert all(desc.strip() for desc in documented.values()), documented
