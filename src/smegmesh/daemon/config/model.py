"""The base of every config model: unknown keys refused, values frozen, strings stripped."""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from smegmesh.core.endpoint import split_host_port

__all__: list[str] = []


def _host_port(value: str | None) -> str | None:
    if value is None:
        return None
    split_host_port(value)
    return value.strip()


#: The longest path a unix socket can be bound to (sun_path: 108 bytes with its NUL).
MAX_SOCKET_PATH = 107


def _socket_path(value: Path) -> Path:
    """A unix socket path that fits, or the error saying how long it is."""
    n = len(os.fsencode(value))
    if n > MAX_SOCKET_PATH:
        raise ValueError(f"{n} bytes long; a unix socket path can have at most {MAX_SOCKET_PATH}")
    return value


def _str_list(value: Any) -> Any:
    """Accept a single command string where a list of commands is expected."""
    if isinstance(value, str):
        return [value]
    return value


def _kinds(annotation: Any) -> set[Any]:
    """The types an annotation allows (``int | None`` -> {int, NoneType})."""
    if get_origin(annotation) in (Union, types.UnionType):
        return set(get_args(annotation))
    return {annotation}


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        str_strip_whitespace=True,
        allow_inf_nan=False,  # YAML's .nan and .inf: "a finite number", not "<= 86400"
    )

    @field_validator("*", mode="before")
    @classmethod
    def _plain_values(cls, v: Any, info: ValidationInfo) -> Any:
        """What pydantic would quietly convert, refused: ``true``/``false`` (YAML's
        ``yes``/``no`` too) where a number is meant, which became 1 or 0 (``gRPCPort: yes``
        was port 1); an empty path, which became ``.``, smegd's working directory."""
        field = cls.model_fields.get(info.field_name or "")
        kinds = _kinds(field.annotation) if field is not None else set()
        if isinstance(v, bool) and kinds & {int, float} and bool not in kinds:
            raise ValueError("must be a number, not true or false")
        if isinstance(v, str) and not v.strip() and Path in kinds:
            raise ValueError("must be a non-empty path")
        return v
