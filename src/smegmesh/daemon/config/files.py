"""What the config names outside itself: the API token, the API's TLS pair, a group."""

from __future__ import annotations

import grp
import ssl
import stat
from pathlib import Path

from smegmesh.daemon.config.errors import ConfigError

__all__ = [
    "MAX_TOKEN_FILE_BYTES",
    "check_api_tls",
    "group_id",
    "read_api_token",
    "secrets_readable_by_all",
]


#: Largest token file read (a token is a line, not a document).
MAX_TOKEN_FILE_BYTES = 4096


def read_api_token(path: Path, source: str = "config") -> str:
    """The bearer token held in ``path`` (``apiTokenFile``); :class:`ConfigError` if unusable.

    The messages name the file and the problem, never the token.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{source}: apiTokenFile: file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"{source}: apiTokenFile: cannot read {path}: {e.strerror}") from None
    if len(raw) > MAX_TOKEN_FILE_BYTES:
        raise ConfigError(
            f"{source}: apiTokenFile: {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes "
            "(it must hold the token alone)"
        )
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(
            f"{source}: apiTokenFile: {path} must hold a printable ASCII token"
        ) from None
    if not token.isprintable() or any(c.isspace() for c in token):
        raise ConfigError(
            f"{source}: apiTokenFile: {path} must hold one token: printable ASCII, no spaces"
        )
    if len(token) < 16:
        raise ConfigError(
            f"{source}: apiTokenFile: the token in {path} is too short "
            f"({len(token)} characters, at least 16)"
        )
    return token


def check_api_tls(cert: Path, key: Path, source: str = "config") -> None:
    """Load the TCP API's certificate and key once, so a bad pair fails at start, named."""
    for name, p in (("apiTlsCertificate", cert), ("apiTlsKey", key)):
        if not p.is_file():
            raise ConfigError(f"{source}: {name}: file not found: {p}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except OSError as e:  # ssl.SSLError is an OSError
        reason = getattr(e, "reason", None) or e.strerror or str(e)
        raise ConfigError(
            f"{source}: apiTlsCertificate/apiTlsKey: cannot load {cert} with key {key}: {reason}"
        ) from None


def group_id(name: str) -> int:
    """The id of the group ``name`` (``controlSocketGroup``); ValueError if there is none."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"no group {name!r} on this host (getent group lists them)") from None


def secrets_readable_by_all(
    config_path: Path, has_token: bool, token_file: Path | None, tls_key: Path | None
) -> list[str]:
    """Warnings for files holding a secret that every user of the host may read
    (as ``wg-quick``'s "is world accessible"): the configuration when it holds
    ``apiToken``, ``apiTokenFile``, ``apiTlsKey``."""
    out = []
    token = "who can then use the TCP API as root does"
    for key, path, risk in (
        ("apiToken", config_path if has_token else None, token),
        ("apiTokenFile", token_file, token),
        ("apiTlsKey", tls_key, "who can then pose as this TCP API"),
    ):
        if path is None:
            continue
        try:
            mode = path.stat().st_mode
        except OSError:
            continue  # a file that cannot be read is reported where it is read
        if mode & stat.S_IROTH:
            out.append(
                f"{key}: {path} is readable by every user of this host, {risk}; chmod 600 {path}"
            )
    return out
