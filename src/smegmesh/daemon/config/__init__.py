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
