"""Per-mesh settings: the API/flag overrides, and their merge over ``baseConfiguration``.

The fields of :class:`MeshOptions` (what ``new-mesh``/``join-mesh`` take),
of :class:`ResolvedMesh` (the concrete settings of one mesh) and the
per-mesh keys of ``baseConfiguration`` are built from the table of
:mod:`smegmesh.daemon.meshopts`; :func:`resolve_mesh_settings` merges them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

from pydantic import ConfigDict, Field, create_model

from smegmesh.daemon.config.model import _Model
from smegmesh.daemon.meshopts import MESH_OPTIONS, MeshOpt

if TYPE_CHECKING:
    from smegmesh.daemon.config.schema import BaseConfiguration

__all__ = [
    "MeshOptions",
    "ResolvedMesh",
    "base_fields",
    "merge",
    "option_fields",
    "resolve_mesh_settings",
    "resolved_fields",
]


Table = tuple[MeshOpt, ...]


def base_fields(table: Table = MESH_OPTIONS) -> type[_Model]:
    """A model of the per-mesh keys of ``baseConfiguration`` (camelCase aliases, defaults)."""
    fields: dict[str, Any] = {
        o.base_attr: (o.base_type, Field(alias=o.base_key, **o.base))
        for o in table
        if o.base_key is not None and o.base_attr is not None
    }
    return create_model("_BaseConfigurationFields", __base__=_Model, **fields)


def option_fields(table: Table = MESH_OPTIONS) -> type[_Model]:
    """A model of the options as the API takes them (all optional: unset = the base)."""
    fields: dict[str, Any] = {
        o.name: (o.type | None, Field(default=None, **o.api)) for o in table if o.api is not None
    }
    return create_model("_MeshOptionsFields", __base__=_Model, **fields)


def resolved_fields(table: Table = MESH_OPTIONS) -> type[_Model]:
    """A model of the concrete settings of a mesh (the ``resolved`` attributes)."""
    fields: dict[str, Any] = {}
    for o in table:
        if o.resolved is None:
            continue
        optional = o.base_key is None or (o.finish is None and o.base.get("default", 0) is None)
        fields[o.resolved] = (o.type | None if optional else o.type, ...)
    return create_model("_ResolvedMeshFields", __base__=_Model, **fields)


class MeshOptions(option_fields()):  # type: ignore[misc]
    """Per-mesh overrides (``new-mesh``/``join-mesh`` flags); ``None`` = use the base."""

    # API input: JSON types as documented (no "1" for 1 or 0 for false).
    model_config = ConfigDict(strict=True)

    if TYPE_CHECKING:  # the fields' base is built at run time: keep the copy typed

        def model_copy(
            self, *, update: Mapping[str, Any] | None = None, deep: bool = False
        ) -> Self: ...


class ResolvedMesh(resolved_fields()):  # type: ignore[misc]
    """Concrete settings of one mesh: ``baseConfiguration`` with the flags applied.

    ``wg_port`` None: pick a free port; ``endpoint`` None: discover it with
    ``ip_discovery``; ``keepalive`` 0 = off.
    """


def merge(base: Any, opts: Any, table: Table = MESH_OPTIONS) -> dict[str, Any]:
    """The resolved settings as a dict: for each option, the flag if given, else the base key."""
    out: dict[str, Any] = {}
    for opt in table:
        if opt.resolved is None:
            continue
        value = getattr(opts, opt.name) if opt.api is not None else None
        if value is None and opt.base_attr is not None:
            value = getattr(base, opt.base_attr)
        out[opt.resolved] = opt.finish(value, out) if opt.finish is not None else value
    return out


def resolve_mesh_settings(base: BaseConfiguration, opts: MeshOptions | None = None) -> ResolvedMesh:
    """Merge per-mesh ``opts`` over ``base``: a flag given wins, else the base key."""
    return ResolvedMesh(**merge(base, opts or MeshOptions()))
