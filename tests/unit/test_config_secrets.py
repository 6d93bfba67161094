"""Secrets in files every user of the host can read are a warning (as ``wg-quick``'s
"is world accessible"): the TCP API's token in the configuration file or in
``apiTokenFile``, and the key of ``apiTlsKey``. Nothing said so before."""

from __future__ import annotations

from pathlib import Path

import pytest

from smegmesh.daemon.config import load_config
from tls_helpers import self_signed

TOKEN = "0123456789abcdef-token"


def _config(d: Path, mode: int, **keys: str) -> Path:
    lines = [f"stateDir: {d / 'state'}", "apiListen: 127.0.0.1:9999"]
    lines += [f"{k}: {v}" for k, v in keys.items()]
    p = d / "smegd.yaml"
    p.write_text("\n".join(lines) + "\n")
    p.chmod(mode)
    return p


def _readable(warnings: list[str]) -> list[str]:
    return [w for w in warnings if "readable by every user" in w]


@pytest.mark.parametrize("mode", [0o644, 0o604])
def test_a_token_in_a_config_every_user_reads_is_a_warning(tmp_path: Path, mode: int) -> None:
    p = _config(tmp_path, mode, apiToken=TOKEN)
    (w,) = _readable(load_config(p).warnings)
    assert w.startswith("apiToken: ") and str(p) in w and f"chmod 600 {p}" in w
    assert TOKEN not in w


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_a_token_in_a_config_others_cannot_read_is_fine(tmp_path: Path, mode: int) -> None:
    p = _config(tmp_path, mode, apiToken=TOKEN)
    assert _readable(load_config(p).warnings) == []


def test_a_config_every_user_reads_without_a_secret_is_fine(tmp_path: Path) -> None:
    p = tmp_path / "smegd.yaml"
    p.write_text(f"stateDir: {tmp_path / 'state'}\n")
    p.chmod(0o644)
    assert _readable(load_config(p).warnings) == []


def test_a_token_file_every_user_reads_is_a_warning(tmp_path: Path) -> None:
    tok = tmp_path / "api.token"
    tok.write_text(TOKEN + "\n")
    tok.chmod(0o644)
    p = _config(tmp_path, 0o644, apiTokenFile=str(tok))  # no secret of its own
    (w,) = _readable(load_config(p).warnings)
    assert w.startswith("apiTokenFile: ") and str(tok) in w
    tok.chmod(0o600)
    assert _readable(load_config(p).warnings) == []


def test_a_tls_key_every_user_reads_is_a_warning(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    key.chmod(0o644)
    p = _config(tmp_path, 0o600, apiToken=TOKEN, apiTlsCertificate=str(cert), apiTlsKey=str(key))
    (w,) = _readable(load_config(p).warnings)
    assert w.startswith("apiTlsKey: ") and str(key) in w
    key.chmod(0o600)
    assert _readable(load_config(p).warnings) == []
