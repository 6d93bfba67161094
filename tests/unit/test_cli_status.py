"""Issue 15 items 6-8 (CLI side) over the in-memory NodeService, served for real.

``status``, ``ping``, ``--meshid`` left out, ``--api`` (remote TCP API with a
token), ``put-alias`` echoing what was stored, ids that are not ids, shell
completion; and the pure resolver and path functions behind them.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from api_fake import (
    SELF_KEY,
    FakeNodeService,
    StubHandler,
    _addr,
    free_port,
    served_tcp,
    served_unix,
    stub_http,
)
from envcheck import IN_CI
from smegmesh.cli.main import app
from smegmesh.daemon.api_models import MeshDetail, NodeInfo
from smegmesh.daemon.resolve import resolve_node
from smegmesh.daemon.service import ServiceError
from smegmesh.daemon.status import parse_ping, path_to
from tls_helpers import self_signed

runner = CliRunner()
TOKEN = "remote-token-0123456789abcdef"


@pytest.fixture
def daemon() -> Iterator[tuple[Path, FakeNodeService]]:
    with served_unix() as (path, svc):
        yield path, svc


def ctl(sock: Path, *args: str, code: int = 0, env: dict[str, str] | None = None) -> Any:
    r = runner.invoke(app, ["--socket", str(sock), *args], env=env)
    assert r.exit_code == code, (args, r.exit_code, r.stdout, r.stderr, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r


def joined(sock: Path, svc: FakeNodeService, mesh_id: str = "ocean-mesh-0001") -> str:
    """Join a fake remote mesh of two peers (peer0 offers ::/0) plus a client behind peer0."""
    tok = svc.add_remote_mesh(mesh_id)
    ctl(sock, "join-mesh", "--token", tok)
    m = svc.meshes[mesh_id]
    key = "client0-" + "c" * 36 + "="
    m.nodes[key] = NodeInfo(
        public_key=key,
        alias="laptop",
        role="client",
        overlay_address=_addr(mesh_id, key),
        assigned_peer="peer0-" + "k" * 38 + "=",
        status="suspect",
    )
    return mesh_id


# --------------------------------------------------------------------------- status


def test_status_text_and_json(daemon: tuple[Path, FakeNodeService]) -> None:
    sock, svc = daemon
    empty = ctl(sock, "status").stdout
    assert "not in any mesh" in empty and SELF_KEY[:8] in empty
    mesh_id = joined(sock, svc)
    ctl(sock, "put-alias", "--alias", "me")
    lap = next(k for k, n in svc.meshes[mesh_id].nodes.items() if n.alias == "laptop")
    nodes = svc.meshes[mesh_id].nodes
    nodes[lap] = nodes[lap].model_copy(update={"rtt_ms": 3.254})  # measured (NAT traversal)

    data = json.loads(ctl(sock, "status", "--json").stdout)
    assert data["public_key"] == SELF_KEY and data["version"]
    (m,) = data["meshes"]
    assert m["mesh_id"] == mesh_id and m["role"] == "peer"
    assert (m["members_online"], m["members_total"]) == (3, 4)
    by = {n["alias"]: n for n in m["members"]}
    assert by["me"]["path"]["kind"] == "self" and by["me"]["is_self"]
    assert by["peer0"]["path"] == {
        "kind": "direct",
        "via": by["peer0"]["public_key"],
        "via_alias": "peer0",
        "mesh_id": mesh_id,
    }
    assert by["peer0"]["rx_bytes"] == 1500 and by["peer0"]["handshake_age_s"] == 12.0
    # the client is no WireGuard peer here: its traffic goes to peer0 (AllowedIPs ::/0)
    assert by["laptop"]["path"]["kind"] == "peer" and by["laptop"]["path"]["via_alias"] == "peer0"
    assert by["laptop"]["status"] == "suspect" and by["laptop"]["rx_bytes"] == 0
    assert [r["destination"] for r in m["routes"]] == ["::/0"]

    text = ctl(sock, "status").stdout
    assert f"{mesh_id}  peer" in text and "3/4 online" in text
    lines = {ln.split()[0].lstrip("*"): ln for ln in text.splitlines() if ln.strip()}
    assert "direct" in lines["peer0"] and "12s ago" in lines["peer0"]
    assert "1.5 KiB / 2.4 MiB" in lines["peer0"]
    assert "via peer0" in lines["laptop"] and "(suspect)" in lines["laptop"]
    assert "3.25 ms" in lines["laptop"] and by["laptop"]["rtt_ms"] == 3.254
    assert "exit ::/0 via peer0" in text


# --------------------------------------------------------------------------- ping


def test_ping_resolves_and_says_the_path(daemon: tuple[Path, FakeNodeService]) -> None:
    sock, svc = daemon
    mesh_id = joined(sock, svc)
    out = ctl(sock, "ping", "peer1", "-c", "2").stdout
    assert out.startswith(f"peer1 ({_addr(mesh_id, 'peer1-' + 'k' * 38 + '=')} in {mesh_id})")
    assert "2/2 replies, direct, rtt avg 0.50 ms" in out
    assert svc.calls[-1] == ("ping", ("peer1", None, 2, 2))

    res = json.loads(ctl(sock, "ping", "lap", "--json").stdout)  # unique prefix of an alias
    assert res["alias"] == "laptop" and res["path"]["kind"] == "peer"
    assert res["path"]["via_alias"] == "peer0" and res["received"] == 3
    assert "via peer0" in ctl(sock, "ping", "lap").stdout

    # an address outside every mesh goes to the exit: a bridge
    out = ctl(sock, "ping", "2001:db8::7").stdout
    assert out.startswith("2001:db8::7: 3/3 replies, via bridge peer0")

    r = ctl(sock, "ping", "peer", code=1)
    assert r.stderr.startswith("smegctl: 'peer' matches 2 nodes: peer0 (")
    assert "peer1 (" in r.stderr and r.stderr.count("\n") == 1
    r = ctl(sock, "ping", "nosuch", code=1)
    assert r.stderr.startswith("smegctl: no node in any mesh of this node matches 'nosuch'")
    r = ctl(sock, "ping", "-m", "../x", "peer0", code=1)
    assert r.stderr.startswith("smegctl: invalid mesh id '../x'")


# --------------------------------------------------------------------------- --meshid


def test_meshid_optional_with_one_mesh(daemon: tuple[Path, FakeNodeService]) -> None:
    sock, svc = daemon
    r = ctl(sock, "get-mesh", code=1)
    assert r.stderr == "smegctl: this node is in no mesh (create one with: smegctl new-mesh)\n"
    mesh_id = ctl(sock, "new-mesh").stdout.strip()
    assert ctl(sock, "invite").stdout.strip() in svc.invites
    assert mesh_id in ctl(sock, "get-mesh").stdout
    ctl(sock, "put-description", "--description", "rack 3")
    ctl(sock, "set-service", "--service", "http", "--value", "80")
    assert json.loads(ctl(sock, "query-mesh", "-q", "nodes[0].services").stdout) == {"http": "80"}
    ctl(sock, "delete-service", "--service", "http")
    other = ctl(sock, "new-mesh").stdout.strip()
    r = ctl(sock, "get-mesh", code=1)
    assert r.stderr == (
        f"smegctl: this node is in 2 meshes; choose one with --meshid: {mesh_id}, {other}\n"
    )
    r = ctl(sock, "invite", "--json", code=1)
    assert "choose one with --meshid" in json.loads(r.stdout)["error"]["message"]
    assert ctl(sock, "leave-mesh", "-m", other).stdout == f"left {other}\n"
    assert ctl(sock, "leave-mesh").stdout == f"left {mesh_id}\n"
    assert svc.meshes == {}


# --------------------------------------------------------------------------- small things


def test_put_alias_says_what_it_stored(daemon: tuple[Path, FakeNodeService]) -> None:
    sock, svc = daemon
    mesh_id = ctl(sock, "new-mesh").stdout.strip()
    out = ctl(sock, "put-alias", "--alias", "WEB1").stdout
    assert out == f"alias of this node in {mesh_id}: web1 (stored in lower case; you gave 'WEB1')\n"
    assert svc.meshes[mesh_id].nodes[SELF_KEY].alias == "web1"
    assert ctl(sock, "put-alias", "--alias", "db1").stdout.endswith(": db1\n")


@pytest.mark.parametrize(
    "args",
    [
        ["put-alias", "-m", "../../etc", "--alias", "x"],
        ["get-mesh", "--meshid", "a/b"],
        ["invite", "-m", "../../etc"],
        ["leave-mesh", "-m", "UPPER"],
        ["query-mesh", "-m", "a/../b", "-q", "x"],
        ["get-graph", "-m", "../../etc"],
        ["set-service", "-m", "../../etc", "--service", "http", "--value", "1"],
    ],
)
def test_bad_mesh_id_is_about_the_input(
    daemon: tuple[Path, FakeNodeService], args: list[str]
) -> None:
    sock, _ = daemon
    r = ctl(sock, *args, code=1)
    assert r.stderr.startswith("smegctl: invalid mesh id '"), r.stderr
    assert "route" not in r.stderr and "/v1" not in r.stderr


def test_bad_service_name_is_about_the_input(daemon: tuple[Path, FakeNodeService]) -> None:
    sock, _ = daemon
    ctl(sock, "new-mesh")
    r = ctl(sock, "delete-service", "--service", "../../x", code=1)
    assert r.stderr.startswith("smegctl: invalid service name '../../x': ")


def test_api_404_never_shows_routes(daemon: tuple[Path, FakeNodeService]) -> None:
    import httpx

    sock, _ = daemon
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://x") as c:
        for url in ("/v1/meshes/a/b/alias", "/v1/nothing", "/v1/meshes/..%2F..%2Fetc/alias"):
            r = c.put(url, json={"alias": "x"})
            assert r.status_code == 404, url
            msg = r.json()["error"]["message"]
            assert "/v1" not in msg and "route" not in msg and "PUT" not in msg, msg


def test_shell_completion_is_on() -> None:
    r = runner.invoke(app, ["--show-completion", "bash"], prog_name="smegctl")
    assert r.exit_code == 0 and "_SMEGCTL_COMPLETE=complete_bash" in r.stdout
    assert "--install-completion" in runner.invoke(app, ["--help"], prog_name="smegctl").stdout
    r = runner.invoke(
        app,
        [],
        prog_name="smegctl",
        env={"_SMEGCTL_COMPLETE": "complete_bash", "COMP_WORDS": "smegctl sta", "COMP_CWORD": "1"},
    )
    assert r.stdout.split() == ["status"]


# --------------------------------------------------------------------------- --api


def test_remote_api_with_token(tmp_path: Path) -> None:
    with served_tcp(TOKEN) as (url, svc):
        env = {"SMEG_API_TOKEN": TOKEN, "SMEG_SOCKET": "/nonexistent/s.sock"}
        r = runner.invoke(app, ["--api", url, "new-mesh"], env=env)
        assert r.exit_code == 0, r.stderr
        mesh_id = r.stdout.strip()
        assert mesh_id in svc.meshes
        r = runner.invoke(app, ["--api", url, "status", "--json"], env=env)
        assert r.exit_code == 0 and json.loads(r.stdout)["meshes"][0]["mesh_id"] == mesh_id
        tf = tmp_path / "token"
        tf.write_text(TOKEN + "\n")
        r = runner.invoke(
            app, ["--api", url, "--api-token-file", str(tf), "put-alias", "--alias", "Nas"]
        )
        assert r.exit_code == 0 and r.stdout.endswith(
            ": nas (stored in lower case; you gave 'Nas')\n"
        )

        r = runner.invoke(app, ["--api", url, "list-meshes"], env={"SMEG_API_TOKEN": "wrong"})
        assert r.exit_code == 1
        assert (
            r.stderr
            == f"smegctl: smegd at {url} answered 401 Unauthorized: the token was refused\n"
        )
        r = runner.invoke(app, ["--api", url, "list-meshes"], env={"SMEG_API_TOKEN": ""})
        assert (
            r.exit_code == 1
            and "no token given (set SMEG_API_TOKEN or --api-token-file" in r.stderr
        )

    dead = f"http://127.0.0.1:{free_port()}"
    r = runner.invoke(app, ["--api", dead, "status"], env={"SMEG_API_TOKEN": TOKEN})
    assert r.exit_code == 1 and r.stderr.startswith(f"smegctl: cannot reach smegd at {dead}: ")
    assert r.stderr.count("\n") == 1
    r = runner.invoke(app, ["--api", "ftp://h", "status"])
    assert r.exit_code == 1 and "is not an http:// or https:// URL" in r.stderr
    r = runner.invoke(app, ["--api", dead, "--api-token-file", str(tmp_path / "no"), "status"])
    assert r.exit_code == 1 and r.stderr.startswith("smegctl: --api-token-file: cannot read ")


# --------------------------------------------------------------------------- pure parts


def _node(key: str, alias: str, mesh: str = "m1", **kw: Any) -> NodeInfo:
    return NodeInfo(
        public_key=key, alias=alias, role="peer", overlay_address=_addr(mesh, key), **kw
    )


def _mesh(mesh_id: str, *nodes: NodeInfo) -> MeshDetail:
    from smegmesh.core.addressing import mesh_prefix

    return MeshDetail(
        mesh_id=mesh_id,
        prefix=str(mesh_prefix(mesh_id)),
        self_key="self",
        nodes=list(nodes),
    )


def test_resolver_rules() -> None:
    a, b = _node("AAAAkeyA=", "web1", node_id="0123456789abcdef"), _node("AAABkeyB=", "web2")
    m1 = _mesh("m1", a, b)
    assert resolve_node("WEB1", [m1]).node == a  # alias: any case
    assert resolve_node("AAAB", [m1]).node == b  # key prefix
    assert resolve_node("0123", [m1]).node == a  # node id prefix
    long = ipaddress.IPv6Address(a.overlay_address).exploded  # another spelling of it
    assert resolve_node(long, [m1]).node == a
    with pytest.raises(ServiceError) as e:
        resolve_node("AAA", [m1])
    assert e.value.code == "ambiguous_node" and "web1 (" in e.value.message
    assert "web2 (" in e.value.message
    # exact beats prefix: "web1" is also a prefix of "web10"
    m2 = _mesh("m1", a, _node("CCCC=", "web10"))
    assert resolve_node("web1", [m2]).node == a
    # the same node in two meshes: ask for --meshid; with it, found
    other = _mesh("m2", _node("AAAAkeyA=", "web1", mesh="m2"))
    with pytest.raises(ServiceError, match=r"in several meshes \(m1, m2\): pass --meshid"):
        resolve_node("web1", [m1, other])
    assert resolve_node("web1", [m1, other], "m2").mesh_id == "m2"
    # an address that is nobody's resolves to itself; anything else is unknown
    assert resolve_node("2001:db8::1", [m1]).node is None
    with pytest.raises(ServiceError) as e:
        resolve_node("zzz", [m1])
    assert e.value.status == 404 and e.value.code == "unknown_node"


def test_path_longest_match() -> None:
    me = _node("self", "me", is_self=True)
    hub = _node("hub=", "hub", wg_peer=True)
    far = _node("far=", "far")
    hub = hub.model_copy(update={"allowed_ips": [f"{hub.overlay_address}/128", "::/0"]})
    near = _node("near=", "near", wg_peer=True)
    near = near.model_copy(update={"allowed_ips": [f"{near.overlay_address}/128"]})
    m = _mesh("m1", me, hub, far, near)
    assert path_to(me.overlay_address, [m]).kind == "self"
    assert path_to(near.overlay_address, [m]).kind == "direct"
    p = path_to(far.overlay_address, [m])
    assert (p.kind, p.via_alias) == ("peer", "hub")
    assert path_to("2001:db8::1", [m]).kind == "bridge"
    assert path_to("2001:db8::1", [_mesh("m1", me, far)]).kind == "none"


def test_parse_ping_output() -> None:
    out = (
        "PING fd00::1(fd00::1) 56 data bytes\n"
        "64 bytes from fd00::1: icmp_seq=1 ttl=64 time=0.512 ms\n"
        "64 bytes from fd00::1: icmp_seq=2 ttl=64 time=1.25 ms\n\n"
        "--- fd00::1 ping statistics ---\n"
        "3 packets transmitted, 2 received, 33.3333% packet loss, time 401ms\n"
    )
    r = parse_ping(out)
    assert (r.sent, r.received, r.rtt_ms) == (3, 2, [0.512, 1.25])


# --------------------------------------------------------------------------- https


@pytest.fixture
def https_api(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A TLS server with a self-signed certificate answering ``GET /v1/status`` (token checked)."""
    cert, key = self_signed(tmp_path)

    class Handler(StubHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") == f"Bearer {TOKEN}":
                self.send_json(200, {"version": "9.9", "public_key": None, "meshes": []})
            else:
                self.send_json(
                    401, {"error": {"code": "unauthorized", "message": "missing or wrong token"}}
                )

    with stub_http(Handler, tls=(cert, key)) as url:
        yield url, cert


def test_remote_api_https_verifies_the_certificate(https_api: tuple[str, Path]) -> None:
    url, cert = https_api
    env = {"SMEG_API_TOKEN": TOKEN}
    r = runner.invoke(app, ["--api", url, "status"], env=env)
    assert r.exit_code == 1 and r.stderr.startswith(
        f"smegctl: TLS certificate of {url} does not verify ("
    ), r.stderr
    assert r.stderr.endswith("for a self-signed certificate pass --api-ca FILE\n")
    r = runner.invoke(app, ["--api", url, "--api-ca", str(cert), "status"], env=env)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("smegd 9.9  node -") and "not in any mesh" in r.stdout
    r = runner.invoke(app, ["--api", url, "--api-ca", str(cert / "x"), "status"], env=env)
    assert r.exit_code == 1 and r.stderr.startswith("smegctl: --api-ca: cannot use ")


# --------------------------------------------------------------------------- API, run_ping


def test_status_and_ping_api_bounds(daemon: tuple[Path, FakeNodeService]) -> None:
    import httpx

    sock, svc = daemon
    joined(sock, svc)
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://x") as c:
        assert c.get("/v1/status").json()["meshes"][0]["members_total"] == 4
        for body, field in (
            ({"node": "peer0", "count": 21}, "count"),
            ({"node": "peer0", "timeout_s": 0}, "timeout_s"),
            ({"node": ""}, "node"),
            ({"node": "x" * 129}, "node"),
            ({"node": "peer0", "count": "3"}, "count"),
        ):
            r = c.post("/v1/ping", json=body)
            assert r.status_code == 422, body
            assert r.json()["error"]["message"].startswith(f"invalid request: {field}: ")
        r = c.post("/v1/ping", json={"node": "zz"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_node"
        r = c.post("/v1/ping", json={"node": "peer0", "mesh_id": "other-mesh"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_mesh"


@pytest.mark.skipif(
    shutil.which("ping") is None and not IN_CI, reason="no ping program (iputils-ping)"
)
def test_run_ping_for_real() -> None:
    import asyncio

    from smegmesh.daemon.status import run_ping

    res = asyncio.run(run_ping("::1", 2, 1))
    assert (res.sent, res.received, len(res.rtt_ms), res.error) == (2, 2, 2, None)
    with pytest.raises(ValueError):
        asyncio.run(run_ping("-c 1 ::1", 1, 1))


def test_ping_sends_nothing_off_the_overlay(monkeypatch: pytest.MonkeyPatch) -> None:
    """An address no WireGuard peer covers would leave by the host's own routes: not pinged."""
    import asyncio

    from smegmesh.daemon import status

    async def boom(*_: Any) -> Any:
        raise AssertionError("ping sent")

    monkeypatch.setattr(status, "run_ping", boom)
    me = _node("self", "me", is_self=True)
    res = asyncio.run(status.ping_node("2001:db8::1", None, [_mesh("m1", me)], 1, 1))
    assert (res.sent, res.received, res.path.kind) == (0, 0, "none")
    assert res.error is not None and "not sent" in res.error
    res = asyncio.run(status.ping_node("me", None, [_mesh("m1", me)], 1, 1, refuse="no wg"))
    assert (res.sent, res.path.kind, res.error) == (0, "self", "no wg: not sent")


def test_member_paths_agree_with_path_to() -> None:
    """get-mesh's per-member path (one linear pass) is what path_to says for each member."""
    from smegmesh.daemon.status import member_paths

    me = _node("self", "me", is_self=True)
    hub = _node("hub=", "hub", wg_peer=True)
    far = _node("far=", "far")
    m0 = _mesh("m1", me, hub, far)
    prefix = m0.prefix
    hub = hub.model_copy(update={"allowed_ips": [f"{hub.overlay_address}/128", prefix]})
    near = _node("near=", "near", wg_peer=True)
    near = near.model_copy(update={"allowed_ips": [f"{near.overlay_address}/128"]})
    lone = _node("lone=", "lone", wg_peer=True)  # a direct session not up yet: no AllowedIPs
    m = _mesh("m1", me, hub, far, near, lone)
    paths = member_paths(m)
    for n in m.nodes:
        assert paths[n.public_key] == path_to(n.overlay_address, [m]), n.alias
    assert paths["near="].kind == "direct"
    assert (paths["far="].kind, paths["far="].via_alias) == ("peer", "hub")
    assert (paths["lone="].kind, paths["lone="].via_alias) == ("peer", "hub")
    assert paths["self"].kind == "self"


def _big_mesh(n: int, *, annotated: bool) -> MeshDetail:
    from smegmesh.core.addressing import mesh_prefix, overlay_address
    from smegmesh.daemon.direct import annotate

    mesh = "amber-falcon-river-k7q2"
    nodes = []
    for i in range(n):
        k = bytes([i % 256, i // 256]) + bytes(30)
        addr = str(overlay_address(mesh, k))
        nodes.append(
            NodeInfo(
                public_key=base64.b64encode(k).decode(),
                role="peer",
                overlay_address=addr,
                wg_peer=i != 0,
                is_self=i == 0,
                allowed_ips=[f"{addr}/128"] if i else [],
            )
        )
    d = MeshDetail.model_construct(
        mesh_id=mesh, interface="smeg0", prefix=str(mesh_prefix(mesh)), role="peer",
        nodes=nodes, routes=[],
    )  # fmt: skip
    return annotate(d, {}) if annotated else d


@pytest.mark.parametrize("annotated", [True, False])
def test_status_work_is_linear_in_members(monkeypatch: pytest.MonkeyPatch, annotated: bool) -> None:
    """``smegctl status`` searched every member's AllowedIPs for each member (path_to
    per member, and a search for its hop): 30 s of the event loop at 1,000 members,
    past the systemd watchdog (found by a review). Whether or not the view holds the
    paths, a status is a few parses per member."""
    import ipaddress

    from smegmesh.daemon import status as status_mod

    calls = 0
    real = ipaddress.ip_network

    def counting(*a: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*a, **kw)

    monkeypatch.setattr(status_mod.ipaddress, "ip_network", counting)
    n = 400
    d = _big_mesh(n, annotated=annotated)
    calls = 0
    out = status_mod.build_status("x", None, [d])
    assert out.meshes[0].members_total == n
    assert {m.path.kind for m in out.meshes[0].members} == {"self", "direct"}
    assert calls <= 2 * n, f"{calls} AllowedIPs parses for {n} members"
