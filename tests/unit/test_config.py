"""smegd configuration: prototype compatibility, defaults, and one-line errors naming the key."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from envcheck import IN_CI
from smegmesh.daemon.config import (
    CA_TLS_WARNING,
    SKIP_CERT_WARNING,
    BaseConfiguration,
    Config,
    ConfigError,
    MeshOptions,
    load_config,
    parse_config,
    resolve_mesh_settings,
    split_host_port,
)

# The prototype's example files: the shared originals next to the checkout
# (../shared/compat) when present, else the copies committed in tests/compat.
COMPAT = Path(__file__).resolve().parents[2].parent / "shared" / "compat"
if not COMPAT.is_dir():
    COMPAT = Path(__file__).parent.parent / "compat"
COMPAT_FILES = ["prototype-configuration.yaml", "prototype-client.yaml"]


def _with_certs(d: Path) -> None:
    (d / "cert").mkdir()
    for n in ("cert.pem", "priv.pem", "cacert.pem"):
        (d / "cert" / n).write_text("-----BEGIN DUMMY-----\n")


def _err(data: object) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_config(data)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


@pytest.mark.skipif(not COMPAT.is_dir() and not IN_CI, reason="no prototype compat files")
@pytest.mark.parametrize("name", COMPAT_FILES)
def test_prototype_files_load_unchanged(tmp_path: Path, name: str) -> None:
    shutil.copy(COMPAT / name, tmp_path / name)
    _with_certs(tmp_path)
    cfg = load_config(tmp_path / name)
    assert cfg.grpc_port == 4000
    assert cfg.timeout == 5
    assert cfg.heartbeat_interval == 60
    assert (cfg.branch, cfg.pull_interval, cfg.infection_count) == (3, 20, 3)
    assert cfg.inter_cluster_chance == 0.15
    assert cfg.cluster_size == 64
    assert cfg.log_level == "info"
    assert cfg.stub_wg is False
    assert cfg.base_configuration.ip_discovery == "outgoing"
    assert cfg.base_configuration.advertise_route is True
    assert cfg.base_configuration.advertise_defaults is True
    expected_role = "client" if "client" in name else "peer"
    assert cfg.base_configuration.role == expected_role
    # relative cert paths resolve against the config file's directory
    assert cfg.certificate_path == tmp_path / "cert" / "cert.pem"
    assert cfg.private_key_path == tmp_path / "cert" / "priv.pem"
    assert cfg.ca_certificate_path == tmp_path / "cert" / "cacert.pem"
    # both said out loud: verification stays on, and the CA keys are not used yet
    assert cfg.warnings == [SKIP_CERT_WARNING, CA_TLS_WARNING]
    assert "always verified" in cfg.warnings[0]
    assert "not used" in cfg.warnings[1]


@pytest.mark.skipif(not COMPAT.is_dir() and not IN_CI, reason="no prototype compat files")
@pytest.mark.parametrize("name", COMPAT_FILES)
def test_prototype_files_without_certs_name_key_and_path(tmp_path: Path, name: str) -> None:
    shutil.copy(COMPAT / name, tmp_path / name)
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / name)
    msg = str(ei.value)
    assert "certificatePath" in msg
    assert str(tmp_path / "cert" / "cert.pem") in msg
    assert "\n" not in msg


def test_missing_ca_only(tmp_path: Path) -> None:
    _with_certs(tmp_path)
    (tmp_path / "cert" / "cacert.pem").unlink()
    f = tmp_path / "c.yaml"
    f.write_text(
        "certificatePath: cert/cert.pem\nprivateKeyPath: cert/priv.pem\n"
        "caCertificatePath: cert/cacert.pem\n"
    )
    with pytest.raises(ConfigError, match=r"caCertificatePath: file not found: .*cacert\.pem"):
        load_config(f)


def test_defaults() -> None:
    cfg = parse_config({})
    assert cfg.grpc_port == 4000
    assert cfg.timeout == 5
    assert cfg.sync_interval == 1
    assert cfg.pull_interval == 3
    assert cfg.cluster_size == 64
    assert cfg.inter_cluster_chance == 0.15
    assert cfg.branch == 3 and cfg.infection_count == 3
    assert cfg.heartbeat_interval == 2
    assert str(cfg.state_dir) == "/var/lib/smegmesh"
    assert str(cfg.control_socket) == "/run/smegmesh/smegd.sock"
    assert cfg.wg_backend == "auto" and cfg.effective_wg_backend == "auto"
    assert cfg.api_listen is None and cfg.dns_listen is None
    assert cfg.bridge_masquerade is True
    assert cfg.base_configuration.role == "peer"
    assert cfg.base_configuration.pre_up == []
    assert cfg.warnings == []
    # an empty file is the defaults too
    assert parse_config(None) == cfg


def test_new_keys(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "stateDir": str(tmp_path / "state"),
            "controlSocket": str(tmp_path / "s.sock"),
            "wgBackend": "userspace",
            "apiListen": "[::1]:8080",
            "apiToken": "x" * 16,
            "dnsListen": "127.0.0.1:5353",
            "logLevel": "DEBUG",
            "baseConfiguration": {
                "preUp": ["echo up $IFNAME"],
                "postDown": "echo single string",
                "keepAliveWg": 0,
                "publicEndpoint": "node1.example.org",
            },
        }
    )
    assert cfg.api_listen_addr == ("::1", 8080)
    assert cfg.dns_listen_addr == ("127.0.0.1", 5353)
    assert cfg.log_level == "debug"
    assert cfg.effective_wg_socket_dir == tmp_path / "state" / "wireguard"
    assert cfg.base_configuration.post_down == ["echo single string"]


def test_stub_wg_means_memory() -> None:
    assert parse_config({"stubWg": True}).effective_wg_backend == "memory"
    assert parse_config({"stubWg": True, "wgBackend": "memory"}).effective_wg_backend == "memory"
    msg = _err({"stubWg": True, "wgBackend": "kernel"})
    assert "wgBackend" in msg and "stubWg" in msg


@pytest.mark.parametrize(
    ("data", "key", "hint"),
    [
        ({"bogus": 1}, "bogus", "unknown key"),
        ({"grpcPort": 1}, "grpcPort", "did you mean 'gRPCPort'"),
        ({"grpc_port": 1}, "grpc_port", "unknown key"),  # YAML keys are camelCase only
        ({"baseConfiguration": {"roles": "peer"}}, "baseConfiguration.roles", "unknown key"),
        ({"baseConfiguration": {"role": "server"}}, "baseConfiguration.role", "'peer' or 'client'"),
        ({"baseConfiguration": {"ipDiscovery": "dns"}}, "baseConfiguration.ipDiscovery", "public"),
        ({"wgBackend": "ebpf"}, "wgBackend", "'userspace'"),
        ({"logLevel": "verbose"}, "logLevel", "'debug'"),
        ({"gRPCPort": "abc"}, "gRPCPort", "integer"),
        ({"gRPCPort": 70000}, "gRPCPort", "65535"),
        ({"timeout": "soon"}, "timeout", "number"),
        ({"stubWg": "maybe"}, "stubWg", "true or false"),
        ({"syncInterval": -1}, "syncInterval", "greater than 0"),
        ({"pullInterval": 0}, "pullInterval", "greater than 0"),
        ({"heartbeatInterval": -60}, "heartbeatInterval", "greater than 0"),
        ({"clusterSize": 0}, "clusterSize", "greater than or equal to 1"),
        ({"interClusterChance": 1.5}, "interClusterChance", "less than or equal to 1"),
        ({"baseConfiguration": {"keepAliveWg": -1}}, "baseConfiguration.keepAliveWg", "0"),
        ({"baseConfiguration": {"preUp": [1]}}, "baseConfiguration.preUp[0]", "string"),
        ({"baseConfiguration": 3}, "baseConfiguration", "mapping"),
        ({"apiListen": "127.0.0.1:8080"}, "apiToken", "required when apiListen"),
        ({"apiListen": "127.0.0.1:8080", "apiToken": "short"}, "apiToken", "16"),
        ({"apiListen": "localhost", "apiToken": "x" * 16}, "apiListen", "host:port"),
        ({"dnsListen": "::1:53"}, "dnsListen", "brackets"),
        ({"bindAddress": "not-an-ip"}, "bindAddress", "IP address"),
        ({"gcHorizon": 100, "heartbeatInterval": 60}, "gcHorizon", "3 x heartbeatInterval"),
        ({"certificatePath": "/x.pem"}, "privateKeyPath", "go together"),
    ],
)
def test_errors_name_the_key(data: dict[str, object], key: str, hint: str) -> None:
    msg = _err(data)
    assert f"{key}:" in msg, msg
    assert hint in msg, msg


def test_top_level_not_a_mapping() -> None:
    assert "mapping" in _err(["a", "b"])


def test_yaml_syntax_error_gives_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("timeout: 5\ngRPCPort: 4000\nbaseConfiguration:\n  role: [peer\n")
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    msg = str(ei.value)
    assert msg.startswith(f"{f}:")
    assert "YAML syntax error" in msg
    line = int(msg[len(str(f)) + 1 :].split(":")[0])
    assert 4 <= line <= 5
    assert "\n" not in msg


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text("timeout: 5\ntimeout: 6\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:2:1: .*duplicate key 'timeout'"):
        load_config(f)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_a_file_not_in_utf8_says_so(tmp_path: Path) -> None:
    """It said "cannot read: 'utf-8' codec can't decode byte 0xff in position 0:
    invalid start byte" (walkthrough, eighteenth session)."""
    f = tmp_path / "latin1.yaml"
    f.write_bytes("gRPCPort: 4000\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == (f"{f}: not UTF-8 text (byte 0xe9 at offset 20); save it as UTF-8")


def test_error_names_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("syncInterval: -2\n")
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    assert str(ei.value).startswith(f"{f}: syncInterval:")


def test_mesh_options_merge() -> None:
    base = BaseConfiguration.model_validate(
        {"role": "client", "advertiseRoute": True, "publicEndpoint": "a.example", "preUp": ["x"]}
    )
    s = resolve_mesh_settings(base)
    assert (s.role, s.keepalive, s.advertise_routes, s.endpoint) == (
        "client",
        25,
        True,
        "a.example",
    )
    assert s.wg_port is None and s.pre_up == ["x"]
    s = resolve_mesh_settings(
        base,
        MeshOptions(
            wgport=51821, role="peer", endpoint="b.example", advertise_routes=False, keepalive=5
        ),
    )
    assert (s.role, s.keepalive, s.advertise_routes, s.endpoint, s.wg_port) == (
        "peer",
        5,
        False,
        "b.example",
        51821,
    )
    # peer without keepalive anywhere: off
    assert resolve_mesh_settings(BaseConfiguration()).keepalive == 0
    base_ka = BaseConfiguration.model_validate({"keepAliveWg": 10})
    assert resolve_mesh_settings(base_ka, MeshOptions(role="client")).keepalive == 10


def test_split_host_port() -> None:
    assert split_host_port("[fd00::1]:53") == ("fd00::1", 53)
    assert split_host_port("0.0.0.0:8080") == ("0.0.0.0", 8080)
    for bad in ("8080", ":8080", "h:0", "h:x", "[zz]:1", "::1:53"):
        with pytest.raises(ValueError):
            split_host_port(bad)


def test_config_is_usable_from_python() -> None:
    cfg = Config(grpc_port=4100, state_dir=Path("/tmp/x"))
    assert cfg.grpc_port == 4100


def test_bridge_masquerade_switch() -> None:
    assert parse_config({"bridgeMasquerade": False}).bridge_masquerade is False
    with pytest.raises(ConfigError, match=r"bridgeMasquerade"):
        parse_config({"bridgeMasquerade": "sometimes"})


@pytest.mark.parametrize("bad", ["not a host!!", "[zz]:1", "a:99999"])
def test_bad_public_endpoint_named_at_load(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"baseConfiguration\.publicEndpoint"):
        parse_config({"baseConfiguration": {"publicEndpoint": bad}})


@pytest.mark.parametrize(
    "good", ["2001:db8::10", "198.51.100.1", "[2001:db8::1]:5000", "n.example"]
)
def test_public_endpoint_forms(good: str) -> None:
    assert parse_config({"baseConfiguration": {"publicEndpoint": good}}).base_configuration


@pytest.mark.parametrize(
    "data",
    [
        {"syncInterval": 0.0004},
        {"pullInterval": 0.0001},
        {"heartbeatInterval": 0.0009},
        {"gcHorizon": 0.0004, "heartbeatInterval": 0.001},
        {"directAttempt": 0.0002},
        {"directBackoff": 0.0005},
    ],
)
def test_durations_below_a_millisecond_are_refused(data: dict[str, float]) -> None:
    """smegd counts these in whole milliseconds: below 1 ms a value became 0, which
    `--check` accepted and the gossip engine refused at start with a traceback."""
    msg = _err(data)
    key = next(iter(data))
    assert f"{key}: " in msg and "0.001" in msg, msg


@pytest.mark.parametrize(
    "data",
    [
        {"syncInterval": 1e308},
        {"pullInterval": 1e306},
        {"heartbeatInterval": 86401, "gcHorizon": 1e6},
        {"gcHorizon": 1e308},
        {"timeout": 1e308},
    ],
)
def test_durations_too_long_are_refused(data: dict[str, float]) -> None:
    """`--check` passed syncInterval: 1e308 and smegd then died with a traceback
    (OverflowError: cannot convert float infinity to integer, counting it in ms)."""
    msg = _err(data)
    key = next(iter(data))
    assert f"{key}: " in msg and "less than or equal to" in msg, msg


def test_the_longest_durations_allowed_run(root: Path) -> None:
    """The bounds themselves: a daemon starts and creates a mesh with them."""
    from daemon_inproc import running_daemon

    longest = {
        "syncInterval": 86400,
        "pullInterval": 86400,
        "heartbeatInterval": 86400,
        "gcHorizon": 315_360_000,
        "timeout": 3600,
    }

    async def run() -> None:
        async with running_daemon(root, **longest) as d:
            assert await d.new_mesh(MeshOptions())

    asyncio.run(run())


def test_check_refuses_an_interval_the_daemon_cannot_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from smegmesh.daemon.main import EXIT_CONFIG, main

    f = tmp_path / "c.yaml"
    f.write_text("stubWg: true\nsyncInterval: 0.0004\n")
    assert main(["--check", str(f)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith(f"smegd: {f}: syncInterval: ") and err.count("\n") == 1, err


def test_an_unknown_control_socket_group_is_a_config_error() -> None:
    """It was a free string: --check said OK, and at start the control socket's
    grp.getgrnam raised KeyError, a traceback after every other listener was up."""
    msg = _err({"controlSocketGroup": "smeg-admins-typo"})
    assert msg.startswith("config: controlSocketGroup: ") and "no group" in msg, msg


def test_an_existing_control_socket_group_is_accepted(tmp_path: Path) -> None:
    import grp
    import os

    name = grp.getgrgid(os.getgid()).gr_name
    assert parse_config({"controlSocketGroup": name}).control_socket_group == name


def test_a_group_gone_since_the_check_is_a_one_line_error(tmp_path: Path) -> None:
    import asyncio

    from smegmesh.daemon.api_serve import serve_unix

    with pytest.raises(OSError, match="controlSocketGroup: no group 'smeg-admins-typo'"):
        asyncio.run(serve_unix(None, tmp_path / "s.sock", group="smeg-admins-typo"))  # type: ignore[arg-type]
    assert not (tmp_path / "s.sock").exists()
