"""The configuration reference (docs/CONFIG.md), generated from the pydantic models.

    uv run python -m smegmesh.daemon.configdoc > docs/CONFIG.md

One source of truth: the keys, types, defaults, bounds and descriptions are
read from :class:`~smegmesh.daemon.config.Config` and
:class:`~smegmesh.daemon.config.BaseConfiguration` (whose keys come from the
table of :mod:`smegmesh.daemon.meshopts`); a test checks that the
committed file matches.
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from smegmesh.daemon.config import BaseConfiguration, Config

HEADER = """\
# smegd configuration reference

Generated from `src/smegmesh/daemon/config/schema.py` (per-mesh keys:
`src/smegmesh/daemon/meshopts.py`) by
`uv run python -m smegmesh.daemon.configdoc > docs/CONFIG.md`; do not edit by hand.

`smegd CONFIG.yaml` reads one YAML file; `smegd --check CONFIG.yaml` validates it
and exits. Unknown keys, wrong types and values out of bounds are errors that name
the key and what is allowed. Every key of the original prototype's configuration
is accepted. Relative paths are resolved against the config file's directory.
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner = " \\| ".join(_type_name(a) for a in args)
        return f"{inner} (optional)" if len(args) < len(typing.get_args(annotation)) else inner
    if origin is list:
        (arg,) = typing.get_args(annotation) or (Any,)
        return f"list of {_type_name(arg)}"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "mapping (below)"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, "path" if annotation.__name__.endswith("Path") else "string"
        )
    return str(annotation)


_BOUNDS = (
    (Ge, "≥ {0.ge}"),
    (Gt, "> {0.gt}"),
    (Le, "≤ {0.le}"),
    (Lt, "< {0.lt}"),
    (MinLen, "at least {0.min_length} characters"),
    (MaxLen, "at most {0.max_length} characters"),
)


def _bounds(info: FieldInfo) -> str:
    return ", ".join(
        fmt.format(m) for m in info.metadata for cls, fmt in _BOUNDS if isinstance(m, cls)
    )


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        return "`[]`" if value == [] else "(see below)"
    if info.default is PydanticUndefined or info.default is None:
        return "unset"
    if isinstance(info.default, bool):
        return f"`{str(info.default).lower()}`"
    return f"`{info.default}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(model: type[BaseModel]) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        key = info.alias or name
        desc = info.description or ""
        bounds = _bounds(info)
        if bounds and bounds not in desc:
            desc = f"{desc} ({bounds})" if desc else bounds
        lines.append(
            f"| `{key}` | {_type_name(info.annotation)} | {_default(info)} | {_cell(desc)} |"
        )
    return lines


def render() -> str:
    out = [HEADER, "## Top level", ""]
    out += _table(Config)
    out += [
        "",
        "## `baseConfiguration`",
        "",
        "Defaults for every mesh; `new-mesh` and `join-mesh` flags override them per mesh.",
        "",
    ]
    out += _table(BaseConfiguration)
    out.append("")
    return "\n".join(out)


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
