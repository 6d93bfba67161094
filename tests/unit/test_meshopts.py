"""Per-mesh options are defined once (daemon/meshopts.py): config, API model and CLI flags."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from smegmesh.cli.main import app as smegctl
from smegmesh.cli.meshflags import with_mesh_flags
from smegmesh.daemon.api_models import JoinRequest
from smegmesh.daemon.config import (
    BaseConfiguration,
    MeshOptions,
    ResolvedMesh,
    parse_config,
    resolve_mesh_settings,
)
from smegmesh.daemon.config.mesh import base_fields, merge, option_fields
from smegmesh.daemon.meshopts import DEFAULT_CLIENT_KEEPALIVE, MESH_OPTIONS, MeshOpt

runner = CliRunner()


def _help(*args: str) -> str:
    r = runner.invoke(smegctl, [*args, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("opt", MESH_OPTIONS, ids=lambda o: o.name)
def test_each_option_reaches_config_api_and_cli(opt: MeshOpt) -> None:
    """What the table declares is what the config, the API and smegctl accept."""
    base_keys = {f.alias for f in BaseConfiguration.model_fields.values()}
    assert (opt.base_key in base_keys) == (opt.base_key is not None)
    assert (opt.name in MeshOptions.model_fields) == (opt.api is not None)
    assert (opt.name in JoinRequest.model_fields) == (opt.api is not None)
    assert (opt.resolved in ResolvedMesh.model_fields) == (opt.resolved is not None)
    for command in ("new-mesh", "join-mesh"):
        shown = opt.flag is not None and opt.flag.split("/")[0] in _help(command)
        assert shown == (opt.flag is not None and command in opt.commands), (command, opt.flag)


def test_a_new_option_is_one_table_entry() -> None:
    """An entry added to the table is a config key, an API field, a resolved setting, a flag."""
    mtu = MeshOpt(
        name="mtu",
        type=int,
        api={"ge": 1280, "le": 9000},
        flag="--mtu",
        flag_help="Interface MTU.",
        base_key="mtuWg",
        base_attr="mtu_wg",
        base_type=int,
        base={"default": 1420, "description": "Interface MTU."},
        resolved="mtu",
    )
    table = (*MESH_OPTIONS, mtu)
    base = base_fields(table).model_validate({"mtuWg": 1400, "role": "client"})
    opts = option_fields(table)
    assert merge(base, opts(), table)["mtu"] == 1400
    assert merge(base, opts(mtu=9000), table)["mtu"] == 9000
    with pytest.raises(ValidationError):
        opts(mtu=100)

    seen: dict[str, Any] = {}
    cli = typer.Typer()

    @cli.command("new-mesh")
    @with_mesh_flags("new-mesh", table)
    def new_mesh(
        opts: dict[str, Any],
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        seen.update(opts)

    assert "--mtu" in runner.invoke(cli, ["--help"], env={"COLUMNS": "200"}).output
    r = runner.invoke(cli, ["--mtu", "1500", "--role", "client", "--no-advertise-routes"])
    assert r.exit_code == 0, r.output
    assert seen == {"mtu": 1500, "role": "client", "advertise_routes": False}


@pytest.mark.parametrize(
    ("base", "flags", "keepalive"),
    [
        ({"role": "client"}, {}, DEFAULT_CLIENT_KEEPALIVE),
        ({"role": "peer"}, {}, 0),
        ({"role": "client", "keepAliveWg": 0}, {}, 0),  # documented: 0 = off
        ({"role": "client"}, {"keepalive": 0}, 0),
        ({"role": "peer"}, {"role": "client"}, DEFAULT_CLIENT_KEEPALIVE),
        ({"keepAliveWg": 10}, {"keepalive": 30}, 30),
    ],
)
def test_keepalive_resolution(base: dict[str, Any], flags: dict[str, Any], keepalive: int) -> None:
    cfg = parse_config({"baseConfiguration": base})
    s = resolve_mesh_settings(cfg.base_configuration, MeshOptions(**flags))
    assert s.keepalive == keepalive


def test_flags_win_over_base_keys() -> None:
    base = parse_config(
        {
            "baseConfiguration": {
                "advertiseRoute": True,
                "advertiseDefaults": True,
                "publicEndpoint": "192.0.2.1",
                "postUp": "echo up",
            }
        }
    ).base_configuration
    s = resolve_mesh_settings(base, MeshOptions(advertise_routes=False, wgport=51999))
    assert (s.advertise_routes, s.advertise_defaults) == (False, True)
    assert (s.endpoint, s.wg_port, s.post_up) == ("192.0.2.1", 51999, ["echo up"])
    assert resolve_mesh_settings(BaseConfiguration()).endpoint is None
