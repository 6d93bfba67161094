"""Configuration of the ``smegd`` daemon (SPEC §6).

The YAML file uses the prototype's camelCase keys; the Python models expose
snake_case attributes with the YAML key as alias (``Config.grpc_port`` is
``gRPCPort``).  Every prototype key is accepted; unknown keys and bad values
are errors (:class:`ConfigError`) whose one-line message names the key path and
what is allowed.

Entry point: :func:`load_config`.  Per-mesh overrides coming from the
``new-mesh``/``join-mesh`` flags are :class:`MeshOptions`, merged over
``baseConfiguration`` by :func:`resolve_mesh_settings`. One module per concern:

* :mod:`.schema`: the models (:class:`Config`, :class:`BaseConfiguration`);
* :mod:`.mesh`: per-mesh options and their merge (built from the table of
  :mod:`smegmesh.daemon.meshopts`);
* :mod:`.load`: the YAML loader and the files keys name (token, TLS);
* :mod:`.errors`: :class:`ConfigError` and the error humanizer (also used by
  the API for the requests it refuses).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use (PEP 562): smegctl needs MeshOptions and the token-file
# limit, not the whole schema, the YAML loader and their models, which would
# add half a second to every smegctl command.
_WHERE = {
    "split_host_port": "smegmesh.core.endpoint",
    "SECRET_KEYS": "smegmesh.daemon.config.errors",
    "ConfigError": "smegmesh.daemon.config.errors",
    "MAX_TOKEN_FILE_BYTES": "smegmesh.daemon.config.files",
    "check_api_tls": "smegmesh.daemon.config.files",
    "read_api_token": "smegmesh.daemon.config.files",
    "load_config": "smegmesh.daemon.config.load",
    "parse_config": "smegmesh.daemon.config.load",
    "MeshOptions": "smegmesh.daemon.config.mesh",
    "ResolvedMesh": "smegmesh.daemon.config.mesh",
    "resolve_mesh_settings": "smegmesh.daemon.config.mesh",
    "CA_TLS_WARNING": "smegmesh.daemon.config.schema",
    "SKIP_CERT_WARNING": "smegmesh.daemon.config.schema",
    "BaseConfiguration": "smegmesh.daemon.config.schema",
    "Config": "smegmesh.daemon.config.schema",
    "LogFormat": "smegmesh.daemon.config.schema",
    "LogLevel": "smegmesh.daemon.config.schema",
    "WgBackend": "smegmesh.daemon.config.schema",
    "DEFAULT_CLIENT_KEEPALIVE": "smegmesh.daemon.meshopts",
    "IpDiscovery": "smegmesh.daemon.meshopts",
    "Role": "smegmesh.daemon.meshopts",
    "DEFAULT_CONFIG_PATH": "smegmesh.daemon.defaults",
    "DEFAULT_CONTROL_SOCKET": "smegmesh.daemon.defaults",
    "DEFAULT_STATE_DIR": "smegmesh.daemon.defaults",
    "VERSION": "smegmesh.daemon.defaults",
}

if TYPE_CHECKING:
    from smegmesh.core.endpoint import split_host_port
    from smegmesh.daemon.config.errors import SECRET_KEYS, ConfigError
    from smegmesh.daemon.config.files import MAX_TOKEN_FILE_BYTES, check_api_tls, read_api_token
    from smegmesh.daemon.config.load import load_config, parse_config
    from smegmesh.daemon.config.mesh import MeshOptions, ResolvedMesh, resolve_mesh_settings
    from smegmesh.daemon.config.schema import (
        CA_TLS_WARNING,
        DEFAULT_CLIENT_KEEPALIVE,
        SKIP_CERT_WARNING,
        BaseConfiguration,
        Config,
        IpDiscovery,
        LogFormat,
        LogLevel,
        Role,
        WgBackend,
    )
    from smegmesh.daemon.defaults import (
        DEFAULT_CONFIG_PATH,
        DEFAULT_CONTROL_SOCKET,
        DEFAULT_STATE_DIR,
        VERSION,
    )


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


__all__ = [
    "CA_TLS_WARNING",
    "DEFAULT_CLIENT_KEEPALIVE",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_CONTROL_SOCKET",
    "DEFAULT_STATE_DIR",
    "MAX_TOKEN_FILE_BYTES",
    "SECRET_KEYS",
    "SKIP_CERT_WARNING",
    "VERSION",
    "BaseConfiguration",
    "Config",
    "ConfigError",
    "IpDiscovery",
    "LogFormat",
    "LogLevel",
    "MeshOptions",
    "ResolvedMesh",
    "Role",
    "WgBackend",
    "check_api_tls",
    "load_config",
    "parse_config",
    "read_api_token",
    "resolve_mesh_settings",
    "split_host_port",
]
