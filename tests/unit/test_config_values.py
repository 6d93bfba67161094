"""smegd configuration values a user can get wrong without noticing: each is an error
that names the key, never a silently different setting."""

from __future__ import annotations

import pytest
import yaml

from smegmesh.daemon.config import ConfigError, parse_config


def _err(text: str) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_config(yaml.safe_load(text))
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("gRPCPort: yes", "gRPCPort"),  # YAML 1.1 'yes' is true: was port 1
        ("clusterSize: true", "clusterSize"),
        ("syncInterval: true", "syncInterval"),
        ("dnsTtl: false", "dnsTtl"),  # was TTL 0
        ("timeout: true", "timeout"),
        ("baseConfiguration: {keepAliveWg: true}", "baseConfiguration.keepAliveWg"),
    ],
)
def test_true_or_false_is_not_a_number(text: str, key: str) -> None:
    msg = _err(text)
    assert msg.startswith(f"config: {key}: "), msg
    assert "number" in msg and "true or false" in msg, msg


def test_numbers_as_numbers_and_strings_still_load() -> None:
    c = parse_config(yaml.safe_load('gRPCPort: "4001"\nsyncInterval: 2\ndnsTtl: 0'))
    assert (c.grpc_port, c.sync_interval, c.dns_ttl) == (4001, 2, 0)
    assert parse_config({"stubWg": True}).stub_wg is True


@pytest.mark.parametrize(
    "key", ["stateDir", "controlSocket", "wgSocketDir", "apiTokenFile", "certificatePath"]
)
def test_an_empty_path_is_an_error_not_the_current_directory(key: str) -> None:
    # stateDir: "" put the node's identity in smegd's working directory;
    # controlSocket: "" failed at start with "[Errno 17] . exists and is not a socket".
    for value in ('""', '"  "'):
        msg = _err(f"{key}: {value}")
        assert msg.startswith(f"config: {key}: must be a non-empty path"), msg


def test_a_problem_says_what_it_got_once() -> None:
    msg = _err('bindAddress: "nonsense"')
    assert msg.count("(got ") == 1, msg
    msg = _err('apiListen: "[::1]:0"\napiToken: "0123456789abcdef"')
    assert msg.count("(got ") == 1, msg


def test_a_control_socket_path_too_long_for_a_unix_socket() -> None:
    """It passed smegd --check, then smegd said "cannot start: AF_UNIX path too long"."""
    path = "/run/" + "d" * 100 + "/smegd.sock"
    msg = _err(f"controlSocket: {path}")
    assert msg.startswith("config: controlSocket: 116 bytes long"), msg
    assert msg.count(path) == 1, msg
    assert "at most 107" in msg, msg
    ok = "/run/" + "d" * 91 + "/smegd.sock"  # 107 bytes: the longest that binds
    assert str(parse_config({"controlSocket": ok}).control_socket) == ok


@pytest.mark.parametrize("text", ["syncInterval: .nan", "timeout: .inf", "pullInterval: -.inf"])
def test_nan_and_infinity_are_not_numbers_here(text: str) -> None:
    """YAML's .nan and .inf: 'must be a finite number', not 'must be <= 86400' (got nan)."""
    msg = _err(text)
    assert "finite number" in msg, msg
