"""The base of every config model: unknown keys refused, values frozen, strings stripped."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from smegmesh.core.endpoint import split_host_port

__all__: list[str] = []


def _host_port(value: str | None) -> str | None:
    if value is None:
        return None
    split_host_port(value)
    return value.strip()


def _str_list(value: Any) -> Any:
    """Accept a single command string where a list of commands is expected."""
    if isinstance(value, str):
        return [value]
    return value


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        str_strip_whitespace=True,
    )
