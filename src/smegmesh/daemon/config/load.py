"""Loading the ``smegd`` YAML file: strict YAML, the schema, files the keys name.

Entry point: :func:`load_config`; :func:`parse_config` validates YAML
already parsed. Every problem is reported at once (:class:`ConfigError`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from smegmesh.daemon.config.errors import ConfigError, describe
from smegmesh.daemon.config.files import (
    check_api_tls,
    read_api_token,
    secrets_readable_by_all,
)
from smegmesh.daemon.config.schema import Config

__all__ = ["load_config", "parse_config"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _cert_paths(
    data: dict[str, Any], base_dir: Path | None, problems: list[str]
) -> dict[str, Path]:
    """The prototype's certificate keys as paths (relative to ``base_dir``), checked to exist."""
    updates: dict[str, Path] = {}
    for attr, key in (
        ("certificate_path", "certificatePath"),
        ("private_key_path", "privateKeyPath"),
        ("ca_certificate_path", "caCertificatePath"),
    ):
        raw = data.get(key)
        if not isinstance(raw, str | Path) or not str(raw).strip():
            continue
        p = Path(str(raw).strip()).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if not p.is_file():
            problems.append(f"{key}: file not found: {p}")
        updates[attr] = p
    return updates


def _api_files(
    cfg: Config,
    base_dir: Path | None,
    source: str,
    updates: dict[str, Path],
    problems: list[str],
) -> tuple[str | None, bytes | None]:
    """Resolve the API's files into ``updates``; read the token file, load the TLS pair.

    Returns the token and the SHA-256 of the TLS pair's files (a reload that finds
    the same paths compares the contents).
    """
    for attr in ("api_token_file", "api_tls_certificate", "api_tls_key"):
        p = getattr(cfg, attr)
        if p is not None:
            p = p.expanduser()
            updates[attr] = p if p.is_absolute() or base_dir is None else base_dir / p
    file_token = digest = None
    try:
        if "api_token_file" in updates:
            file_token = read_api_token(updates["api_token_file"], source)
        if "api_tls_certificate" in updates:
            pair = (updates["api_tls_certificate"], updates["api_tls_key"])
            check_api_tls(*pair, source)
            digest = hashlib.sha256(b"".join(p.read_bytes() for p in pair)).digest()
    except ConfigError as e:
        problems.extend(m.removeprefix(f"{source}: ") for m in e.problems)
    except OSError as e:  # gone since check_api_tls loaded it
        problems.append(f"apiTlsCertificate/apiTlsKey: cannot read {e.filename}: {e.strerror}")
    return file_token, digest


def parse_config(data: Any, base_dir: Path | None = None, source: str = "config") -> Config:
    """Validate already-parsed YAML ``data``; relative cert paths resolve against ``base_dir``.

    Certificate files must exist. Raises :class:`ConfigError`.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    problems: list[str] = []
    cfg: Config | None = None
    try:
        # YAML keys are the camelCase names only (by_name=False): snake_case is an error
        cfg = Config.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as e:
        for err in e.errors():
            problems.extend(describe(err, Config).splitlines())

    # Certificate files are checked even when other keys are bad: every problem at once.
    updates = _cert_paths(data, base_dir, problems)
    file_token = digest = None
    if cfg is not None:
        file_token, digest = _api_files(cfg, base_dir, source, updates, problems)
    if problems:
        lines = [f"{source}: {m}" for m in problems]
        extra = f" (and {len(lines) - 1} more problem(s))" if len(lines) > 1 else ""
        raise ConfigError(lines[0] + extra, lines)
    assert cfg is not None
    if updates:
        warnings = cfg.warnings
        cfg = cfg.model_copy(update=updates)
        cfg._warnings = warnings
    cfg._file_token = file_token
    cfg._tls_digest = digest
    return cfg


def load_config(path: str | Path) -> Config:
    """Read and validate the YAML file at ``path``. Raises :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = e.problem or e.context or "invalid YAML"
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML syntax error: {' '.join(str(e).split())}") from None
    cfg = parse_config(data, base_dir=path.resolve().parent, source=str(path))
    cfg._warnings.extend(
        secrets_readable_by_all(
            path, cfg.api_token is not None, cfg.api_token_file, cfg.api_tls_key
        )
    )
    return cfg
