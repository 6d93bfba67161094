"""The per-mesh flags of ``new-mesh`` and ``join-mesh``, built from :mod:`smegmesh.daemon.meshopts`.

:func:`with_mesh_flags` adds one ``typer.Option`` per option of the table to
a command, just before its ``--json``; the command receives the flags given
as ``opts`` (the JSON body of the API's ``MeshOptions``, unset flags left
out). A new per-mesh option in the table is a new flag here, with nothing to
write.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer

from smegmesh.cli.app import choices
from smegmesh.daemon.meshopts import MESH_OPTIONS, MeshOpt, flags_of

__all__ = ["with_mesh_flags"]

F = TypeVar("F", bound=Callable[..., Any])


def _cli_type(opt: MeshOpt) -> Any:
    """The type Typer parses the flag as: choices for a ``Literal``, else the option's type."""
    if typing.get_origin(opt.type) is typing.Literal:
        return choices(opt.name.title().replace("_", ""), opt.type)
    return opt.type


def _parameter(opt: MeshOpt) -> inspect.Parameter:
    assert opt.flag is not None
    option = typer.Option(opt.flag, help=opt.flag_help, **opt.flag_kw)
    return inspect.Parameter(
        opt.name,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=None,
        annotation=Annotated[_cli_type(opt) | None, option],
    )


def _json_value(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def with_mesh_flags(command: str, table: tuple[MeshOpt, ...] = MESH_OPTIONS) -> Callable[[F], F]:
    """Give the decorated command the per-mesh flags of ``command``, as ``opts``."""
    flags = flags_of(command, table)

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        params = [p for p in sig.parameters.values() if p.name != "opts"]
        at = next(i for i, p in enumerate(params) if p.name == "as_json")
        params[at:at] = [_parameter(o) for o in flags]
        names = {o.name for o in flags}

        @functools.wraps(fn)
        def command_fn(*args: Any, **kwargs: Any) -> Any:
            opts = {
                name: _json_value(kwargs.pop(name))
                for name in list(kwargs)
                if name in names and kwargs[name] is not None
            }
            for name in names:
                kwargs.pop(name, None)
            return fn(*args, opts=opts, **kwargs)

        command_fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command_fn.__annotations__ = {p.name: p.annotation for p in params}
        return typing.cast(F, command_fn)

    return decorate
