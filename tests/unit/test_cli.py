"""smegctl against a real unix-socket API server over the in-memory NodeService."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from api_fake import PNG_MAGIC, FakeNodeService, served_unix, short_tmpdir
from smegmesh.cli.main import app, parse_duration

runner = CliRunner()


@pytest.fixture
def daemon() -> Iterator[tuple[Path, FakeNodeService]]:
    with served_unix() as (path, svc):
        yield path, svc


def ctl(sock: Path, *args: str, code: int = 0) -> Any:
    """Run smegctl in-process; assert the exit code; return the result."""
    r = runner.invoke(app, ["--socket", str(sock), *args])
    assert r.exit_code == code, (args, r.exit_code, r.stdout, r.stderr, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r


def ctl_json(sock: Path, *args: str) -> Any:
    r = ctl(sock, *args, "--json")
    assert r.stderr == ""
    return json.loads(r.stdout)


def test_every_command_human_output(daemon: tuple[Path, FakeNodeService], tmp_path: Path) -> None:
    sock, svc = daemon
    mesh_id = ctl(sock, "new-mesh", "--wgport", "51830", "--role", "peer").stdout.strip()
    assert mesh_id in svc.meshes
    assert svc.calls[-1][1][0].wgport == 51830

    token = ctl(sock, "invite", "--meshid", mesh_id, "--ttl", "2h", "--uses", "3").stdout.strip()
    assert token in svc.invites and "\n" not in token
    assert svc.calls[-1] == ("invite", (mesh_id, 7200, 3))

    ls = ctl(sock, "list-meshes").stdout
    assert mesh_id in ls and "peer" in ls

    ctl(sock, "put-alias", "--meshid", mesh_id, "--alias", "web1")
    ctl(sock, "put-description", "--meshid", mesh_id, "--description", "rack 3")
    ctl(sock, "set-service", "--meshid", mesh_id, "--service", "http", "--value", "80")
    me = svc.meshes[mesh_id].nodes
    node = next(iter(me.values()))
    assert (node.alias, node.description, node.services) == ("web1", "rack 3", {"http": "80"})
    ctl(sock, "delete-service", "--meshid", mesh_id, "--service", "http")
    assert next(iter(svc.meshes[mesh_id].nodes.values())).services == {}

    out = ctl(sock, "query-mesh", "--meshid", mesh_id, "--query", "nodes[].alias").stdout
    assert json.loads(out) == ["web1"]

    dot = ctl(sock, "get-graph", "--meshid", mesh_id).stdout
    assert dot.startswith("graph smegmesh")
    png = tmp_path / "g.png"
    ctl(sock, "get-graph", "--format", "png", "-o", str(png))
    assert png.read_bytes().startswith(PNG_MAGIC)

    remote_tok = svc.add_remote_mesh("quiet-fox-hill-0003")
    joined = ctl(sock, "join-mesh", "--token", remote_tok, "--role", "client", "--keepalive", "20")
    assert joined.stdout.strip() == "quiet-fox-hill-0003"
    opts = svc.calls[-1][1][1]
    assert (opts.role, opts.keepalive) == ("client", 20)

    table = ctl(sock, "get-mesh", "--meshid", "quiet-fox-hill-0003").stdout
    for word in ("ALIAS", "ROLE", "ADDRESS", "ENDPOINT", "LAST SEEN", "HANDSHAKE", "RX / TX"):
        assert word in table
    assert "peer0" in table and "198.51.100.1:51820" in table
    assert "2.4 MiB" in table  # tx of peer0, human-readable
    # the exit peer0 offers: listed under the routes this node uses
    assert "routes from this node" in table
    assert any("::/0" in line and "peer0" in line for line in table.splitlines())

    ctl(sock, "leave-mesh", "--meshid", mesh_id)
    assert mesh_id not in svc.meshes


def test_every_command_json(daemon: tuple[Path, FakeNodeService], tmp_path: Path) -> None:
    sock, svc = daemon
    mesh_id = ctl_json(sock, "new-mesh", "--advertise-routes", "--no-advertise-defaults")["mesh_id"]
    opts = svc.calls[-1][1][0]
    assert (opts.advertise_routes, opts.advertise_defaults) == (True, False)
    inv = ctl_json(sock, "invite", "--meshid", mesh_id)
    assert inv["ttl_s"] == 86400 and inv["uses"] == 1 and inv["token"]
    assert [m["mesh_id"] for m in ctl_json(sock, "list-meshes")] == [mesh_id]
    assert ctl_json(sock, "put-alias", "--meshid", mesh_id, "--alias", "a1") == {
        "ok": True,
        "alias": "a1",
        "mesh_id": mesh_id,
    }
    assert ctl_json(sock, "put-description", "--meshid", mesh_id, "--description", "d")["ok"]
    assert ctl_json(sock, "set-service", "--meshid", mesh_id, "--service", "s", "--value", "v")[
        "ok"
    ]
    detail = ctl_json(sock, "get-mesh", "--meshid", mesh_id)
    assert detail["nodes"][0]["services"] == {"s": "v"}
    assert ctl_json(sock, "delete-service", "--meshid", mesh_id, "--service", "s")["ok"]
    assert ctl_json(sock, "query-mesh", "--meshid", mesh_id, "--query", "nodes[0].alias") == "a1"
    g = ctl_json(sock, "get-graph", "--format", "svg")
    assert g["format"] == "svg" and "<svg" in g["data"]
    g = ctl_json(sock, "get-graph", "--format", "png")
    assert g["encoding"] == "base64"
    g = ctl_json(sock, "get-graph", "-o", str(tmp_path / "g.dot"))
    assert g["bytes"] == (tmp_path / "g.dot").stat().st_size > 0
    tok = svc.add_remote_mesh("mesh-json-0004")
    assert ctl_json(sock, "join-mesh", "--token", tok) == {"mesh_id": "mesh-json-0004"}
    assert ctl_json(sock, "leave-mesh", "--meshid", mesh_id)["ok"] is True
    assert ctl_json(sock, "list-meshes")[0]["mesh_id"] == "mesh-json-0004"


def test_empty_list(daemon: tuple[Path, FakeNodeService]) -> None:
    sock, _ = daemon
    assert "not in any mesh" in ctl(sock, "list-meshes").stdout
    assert ctl_json(sock, "list-meshes") == []


def test_unknown_mesh_one_liner(daemon: tuple[Path, FakeNodeService]) -> None:
    sock, _ = daemon
    r = ctl(sock, "get-mesh", "--meshid", "nope", code=1)
    assert r.stdout == ""
    assert r.stderr == "smegctl: not a member of mesh 'nope'\n"
    r = ctl(sock, "get-mesh", "--meshid", "nope", "--json", code=1)
    assert json.loads(r.stdout)["error"]["code"] == "unknown_mesh"
    assert r.stderr.count("\n") == 1


def test_api_refusals_are_one_liners(daemon: tuple[Path, FakeNodeService]) -> None:
    sock, _ = daemon
    r = ctl(sock, "join-mesh", "--token", "forged", code=1)
    assert r.stderr == "smegctl: invitation token is not valid\n"
    mesh_id = ctl(sock, "new-mesh").stdout.strip()
    r = ctl(sock, "put-alias", "--meshid", mesh_id, "--alias", "bad alias!", code=1)
    assert r.stderr.startswith("smegctl: invalid request: alias: ")
    assert r.stderr.count("\n") == 1
    r = ctl(sock, "query-mesh", "--meshid", mesh_id, "--query", "nodes[?", code=1)
    assert r.stderr.startswith("smegctl: bad JMESPath query")


def test_usage_errors(daemon: tuple[Path, FakeNodeService]) -> None:
    sock, _ = daemon
    r = ctl(sock, "invite", "--meshid", "m", "--ttl", "soon", code=2)
    assert "not a duration" in r.stderr
    # Past the daemon's bounds: a usage error in the flags' own terms, before the
    # call (it was "invalid request: ttl_s: Input should be less than or equal to
    # 31536000" from the daemon; walkthrough, eighteenth session).
    r = ctl(sock, "invite", "--meshid", "m", "--ttl", "400d", code=2)
    assert "longer than the most allowed, 365d" in r.stderr and "ttl_s" not in r.stderr
    r = ctl(sock, "invite", "--meshid", "m", "--uses", "1000001", code=2)
    assert "--uses" in r.stderr
    r = ctl(sock, "new-mesh", "--role", "server", code=2)
    r = ctl(sock, "new-mesh", "--wgport", "0", code=2)
    # --meshid left out with no mesh at all: a message, not a usage error
    r = ctl(sock, "invite", code=1)
    assert r.stderr == "smegctl: this node is in no mesh (create one with: smegctl new-mesh)\n"


def test_parse_duration() -> None:
    assert parse_duration("30m") == 1800
    assert parse_duration("2h") == 7200
    assert parse_duration("1d") == 86400
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45") == 45
    for bad in ("", "0", "0s", "h", "1x", "1h 30", "-5m"):
        with pytest.raises(Exception, match=r"duration|longer"):
            parse_duration(bad)


def test_daemon_down_one_liner() -> None:
    missing = short_tmpdir() / "nothing.sock"
    r = runner.invoke(app, ["--socket", str(missing), "list-meshes"])
    assert r.exit_code == 1
    assert r.stdout == ""
    assert r.stderr == (
        f"smegctl: cannot reach smegd at {missing} (is it running? start it with: "
        "smegd /etc/smegmesh/smegd.yaml)\n"
    )


def test_socket_from_env(daemon: tuple[Path, FakeNodeService]) -> None:
    sock, _ = daemon
    r = runner.invoke(app, ["list-meshes", "--json"], env={"SMEG_SOCKET": str(sock)})
    assert r.exit_code == 0 and json.loads(r.stdout) == []
    # --socket wins over the environment
    r = runner.invoke(
        app, ["--socket", str(sock), "list-meshes"], env={"SMEG_SOCKET": "/nonexistent.sock"}
    )
    assert r.exit_code == 0


def test_dns_help_uses_the_running_daemons_dns_listen(daemon: tuple[Path, FakeNodeService]) -> None:
    """``dns-help`` printed 127.0.0.1:5353 whatever the daemon's dnsListen was,
    or when it served no DNS at all (walkthrough, eighteenth session)."""
    sock, svc = daemon
    r = ctl(sock, "dns-help", code=1)  # no DNS: say how to turn it on
    assert r.stderr.startswith("smegctl: smegd serves no DNS: set dnsListen")
    svc.dns_listen = "127.0.0.1:47053"
    assert "dig @127.0.0.1 -p 47053 " in ctl(sock, "dns-help").stdout
    assert "DNS on 127.0.0.1:47053" in ctl(sock, "status").stdout
    assert ctl_json(sock, "status")["dns_listen"] == "127.0.0.1:47053"
    svc.dns_listen = "localhost:47053"  # a name: no resolver set-up takes it
    r = ctl(sock, "dns-help", code=1)
    assert r.stderr.startswith("smegctl: smegd's dnsListen 'localhost:47053': 'localhost' is not")
    assert r.stderr.rstrip().endswith("give --listen ADDRESS:PORT"), r.stderr
    # --listen wins; a daemon out of reach gives the default, with a note
    assert "-p 5300 " in ctl(sock, "dns-help", "--listen", "127.0.0.1:5300").stdout
    r = runner.invoke(app, ["--socket", str(short_tmpdir() / "none.sock"), "dns-help"])
    assert r.exit_code == 0 and "-p 5353 " in r.stdout
    assert "cannot reach smegd" in r.stderr and "assuming dnsListen 127.0.0.1:5353" in r.stderr


def test_join_mesh_takes_the_token_from_stdin_or_a_file(
    daemon: tuple[Path, FakeNodeService], tmp_path: Path
) -> None:
    """A token in argv is in the process list for the whole join (up to 2 minutes)."""
    sock, svc = daemon
    tok = svc.add_remote_mesh("quiet-fox-hill-0005")
    r = runner.invoke(app, ["--socket", str(sock), "join-mesh", "--token", "-"], input=tok + "\n")
    assert r.exit_code == 0 and r.stdout.strip() == "quiet-fox-hill-0005", r.stdout
    assert svc.calls[-1][1][0] == tok
    tok = svc.add_remote_mesh("quiet-fox-hill-0006")
    f = tmp_path / "token"
    f.write_text(tok + "\n")
    joined = ctl(sock, "join-mesh", "--token-file", str(f))
    assert joined.stdout.strip() == "quiet-fox-hill-0006"
    r = ctl(sock, "join-mesh", code=2)  # a usage error
    assert r.stderr.startswith("smegctl: give the invitation as --token TOKEN")
    r = ctl(sock, "join-mesh", "--token-file", str(tmp_path / "none"), code=1)
    assert r.stderr.startswith("smegctl: --token-file: cannot read")


def test_get_graph_output_file_extension_chooses_the_format(
    daemon: tuple[Path, FakeNodeService], tmp_path: Path
) -> None:
    """`get-graph -o mesh.png` wrote DOT text into mesh.png (the format stayed dot)."""
    sock, _ = daemon
    ctl(sock, "new-mesh")
    for name, start in (("m.png", PNG_MAGIC), ("m.SVG", b"<svg"), ("m.dot", b"graph")):
        out = ctl_json(sock, "get-graph", "-o", str(tmp_path / name))
        assert (tmp_path / name).read_bytes().startswith(start), name
        assert out["format"] == name.rsplit(".", 1)[1].lower()
    # an explicit --format is what is written, whatever the name says
    ctl(sock, "get-graph", "--format", "dot", "-o", str(tmp_path / "g.svg"))
    assert (tmp_path / "g.svg").read_bytes().startswith(b"graph")
    ctl(sock, "get-graph", "-o", str(tmp_path / "g.txt"))  # no known extension: dot
    assert (tmp_path / "g.txt").read_bytes().startswith(b"graph")
