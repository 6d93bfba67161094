"""Defaults shared by ``smegd`` and ``smegctl``, importable without pydantic.

``smegctl`` needs only these constants: importing them from ``config`` would
build every pydantic model first and add about half a second to each command.
"""

from __future__ import annotations

import importlib.metadata

__all__ = ["DEFAULT_CONFIG_PATH", "DEFAULT_CONTROL_SOCKET", "DEFAULT_STATE_DIR", "VERSION"]


def _version() -> str:
    try:
        return importlib.metadata.version("smegmesh")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return "0+unknown"


#: Version of the installed smegmesh package.
VERSION = _version()

DEFAULT_CONFIG_PATH = "/etc/smegmesh/smegd.yaml"
DEFAULT_STATE_DIR = "/var/lib/smegmesh"
DEFAULT_CONTROL_SOCKET = "/run/smegmesh/smegd.sock"
