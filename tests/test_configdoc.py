"""docs/CONFIG.md is generated from the config models and must match them."""

from __future__ import annotations

from pathlib import Path

from smegmesh.daemon.config import BaseConfiguration, Config
from smegmesh.daemon.configdoc import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "CONFIG.md"


def test_committed_reference_matches_the_models() -> None:
    assert DOC.read_text() == render(), (
        "docs/CONFIG.md is stale: uv run python -m smegmesh.daemon.configdoc > docs/CONFIG.md"
    )


def test_every_key_is_documented_with_a_description() -> None:
    text = render()
    for model in (Config, BaseConfiguration):
        for name, info in model.model_fields.items():
            key = info.alias or name
            assert f"| `{key}` |" in text, key
            assert info.description, f"{key} has no description"
