"""Issue 15 (CLI items) against real ``smegd`` processes (memory WireGuard backend).

Three daemons form one mesh; ``smegctl status`` (text and JSON), ``put-alias``
and ``--meshid`` left out go through the real CLI and the real daemon; the
third daemon is driven only over its TCP API (``--api http://…`` with the
token), as a remote administrator would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from smegmesh.testbed.loopback import API_TOKEN, Cluster, CtlResult, Smegd, create_mesh, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[list[Smegd], str]]:
    c = Cluster()
    try:
        a, b = c.add(2, wait=False)
        (r,) = c.add(1, api_listen=True, wait=False)
        c.wait_ready()
        mesh_id = create_mesh(a, [b, r])
        yield [a, b, r], mesh_id
        assert not c.tracebacks(), [d.log()[-3000:] for d in c.daemons]
    finally:
        c.close()


def remote(d: Smegd, *args: str, token: str | None = API_TOKEN, code: int = 0) -> CtlResult:
    """``smegctl --api http://[::1]:PORT ARGS`` with no usable socket: only TCP can work."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMEG_")}
    env["SMEG_SOCKET"] = "/nonexistent/smegd.sock"
    if token is not None:
        env["SMEG_API_TOKEN"] = token
    url = f"http://[::1]:{d.api_port}"
    p = subprocess.run(
        [sys.executable, "-m", "smegmesh.cli.main", "--api", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert p.returncode == code, (args, p.returncode, p.stdout, p.stderr)
    return CtlResult(tuple(args), p.returncode, p.stdout, p.stderr)


def test_status_on_three_real_daemons(mesh: tuple[list[Smegd], str]) -> None:
    (a, b, r), mesh_id = mesh
    # --meshid left out: each node is in exactly one mesh
    assert a.ctl("put-alias", "--alias", "Alpha").stdout == (
        f"alias of this node in {mesh_id}: alpha (stored in lower case; you gave 'Alpha')\n"
    )
    b.ctl("put-alias", "--alias", "bravo")
    keys = {d.name: d.self_key(mesh_id) for d in (a, b, r)}

    def aliases_seen() -> dict[str, object] | None:
        st = a.ctl_json("status")
        (m,) = st["meshes"]
        got = {n["public_key"]: n for n in m["members"]}
        ok = got.get(keys[b.name], {}).get("alias") == "bravo"
        return st if ok else None

    st = wait_until(aliases_seen, 30, 0.5, "bravo's alias at alpha")
    assert st["public_key"] == keys[a.name] and st["version"]
    (m,) = st["meshes"]  # type: ignore[index]
    assert m["mesh_id"] == mesh_id and m["role"] == "peer" and m["interface"]
    assert (m["members_online"], m["members_total"]) == (3, 3)
    by = {n["public_key"]: n for n in m["members"]}
    assert by[keys[a.name]]["path"]["kind"] == "self" and by[keys[a.name]]["alias"] == "alpha"
    for name in (b.name, r.name):  # peers: each its own WireGuard peer
        p = by[keys[name]]["path"]
        assert p == {
            "kind": "direct",
            "via": keys[name],
            "via_alias": p["via_alias"],
            "mesh_id": mesh_id,
        }

    text = a.ctl("status").stdout
    assert text.startswith(f"smegd {st['version']}  node {keys[a.name][:8]}…")
    assert f"{mesh_id}  peer" in text and "3/3 online" in text
    rows = [ln for ln in text.splitlines() if keys[b.name][:8] in ln]
    assert len(rows) == 1 and "bravo" in rows[0] and "direct" in rows[0]
    assert "never" in rows[0]  # the memory backend never handshakes


def test_ping_without_a_wireguard_device_says_so(mesh: tuple[list[Smegd], str]) -> None:
    (a, b, _), mesh_id = mesh
    r = a.ctl("ping", "-c", "1", "-W", "1", b.self_key(mesh_id)[:10], code=1)
    assert r.stdout.endswith(
        "no reply (direct): this node runs without WireGuard (wgBackend: memory): "
        "no overlay to ping: not sent\n"
    ), r.stdout
    res = json.loads(a.ctl("ping", b.self_key(mesh_id), "--json", code=1).stdout)
    assert (res["sent"], res["received"], res["path"]["kind"]) == (0, 0, "direct")
    r = a.ctl("ping", "nosuchnode", code=1)
    assert r.stderr.startswith("smegctl: no node in any mesh of this node matches 'nosuchnode'")


def test_remote_api_every_kind_of_command(mesh: tuple[list[Smegd], str]) -> None:
    (_, _, r), mesh_id = mesh
    st = json.loads(remote(r, "status", "--json").stdout)
    assert st["meshes"][0]["mesh_id"] == mesh_id
    assert remote(r, "put-alias", "--alias", "Remote1").stdout.endswith(
        ": remote1 (stored in lower case; you gave 'Remote1')\n"
    )
    assert remote(r, "set-service", "--service", "ssh", "--value", "22").stdout == (
        f"service ssh set in {mesh_id}\n"
    )
    assert json.loads(remote(r, "query-mesh", "-q", "nodes[?is_self].services").stdout) == [
        {"ssh": "22"}
    ]
    tok = remote(r, "invite", "--ttl", "5m").stdout.strip()
    assert tok.startswith("smeg1.")
    bad = remote(r, "list-meshes", token="not-the-token", code=1)
    assert bad.stderr == (
        f"smegctl: smegd at http://[::1]:{r.api_port} answered 401 Unauthorized: "
        "the token was refused\n"
    )
    assert "no token given" in remote(r, "status", token=None, code=1).stderr
    bad = remote(r, "get-mesh", "-m", "../../etc", code=1)
    assert bad.stderr.startswith("smegctl: invalid mesh id '../../etc': ")


def test_a_clients_only_peer_that_left_is_not_online_in_its_status() -> None:
    """Found by review: the client showed its only peer online for ever after that
    peer ran leave-mesh (no tombstone reaches a client; unit tests:
    tests/unit/test_client_departed_peer.py)."""
    c = Cluster()
    try:
        a, b = c.add(2)
        mesh_id = create_mesh(a, [])
        tok = a.api("POST", f"/v1/meshes/{mesh_id}/invites", json={"ttl_s": 600, "uses": 1})
        b.api("POST", "/v1/join", json={"token": tok["token"], "role": "client"})

        def online() -> int:
            st = b.ctl_json("status")["meshes"][0]
            assert st["mesh_id"] == mesh_id and st["role"] == "client"
            return int(st["members_online"])

        wait_until(lambda: online() == 2, 30, 0.2, "the client sees its peer")
        a.ctl("leave-mesh", "--meshid", mesh_id, "--force")  # the last admin: forced
        wait_until(lambda: online() == 1, 30, 0.2, "the client sees its peer gone")
        (peer,) = [m for m in b.ctl_json("status")["meshes"][0]["members"] if not m["is_self"]]
        assert peer["status"] == "suspect"
        assert b.ctl("status").stdout.count("1/2 online") == 1
        assert not c.tracebacks(), [d.log()[-3000:] for d in c.daemons]
    finally:
        c.close()


def test_last_seen_of_a_client_and_its_peer_on_real_daemons() -> None:
    """Found by a user sweep: a client showed its live peer as last seen "never", and
    a member not its peer showed the client "44s ago" while online (unit tests:
    tests/unit/test_last_seen.py). The client's peer is a fresh age on the client;
    elsewhere LAST SEEN names the peer the client's liveness is known through."""
    c = Cluster()
    try:
        a, x, b = c.add(3)
        mesh_id = create_mesh(a, [x])
        tok = a.api("POST", f"/v1/meshes/{mesh_id}/invites", json={"ttl_s": 600, "uses": 1})
        b.api("POST", "/v1/join", json={"token": tok["token"], "role": "client"})
        wait_until(
            lambda: b.ctl_json("status")["meshes"][0]["members_online"] == 3, 30, 0.2, "3 online"
        )
        me = b.ctl_json("get-mesh", "--meshid", mesh_id)
        (own,) = [n for n in me["nodes"] if n["is_self"]]
        peer = own["assigned_peer"]
        assert peer is not None
        other, owner = (x, a) if key_of(a, mesh_id) == peer else (a, x)
        assert key_of(owner, mesh_id) == peer
        for _ in range(3):  # well past the join: ages of the join would show
            time.sleep(3)
            row = node_row(b, mesh_id, peer)
            assert row["seen_via"] is None and time.time() - row["last_seen"] < 5
            row = node_row(owner, mesh_id, own["public_key"])
            assert row["seen_via"] is None and time.time() - row["last_seen"] < 5
            row = node_row(other, mesh_id, own["public_key"])
            assert row["status"] == "live" and row["seen_via"] == peer
        line = [
            ln
            for ln in other.ctl("get-mesh", "--meshid", mesh_id).stdout.splitlines()
            if own["public_key"][:12] in ln
        ]
        assert len(line) == 1 and f"via {peer[:8]}" in line[0], line
        assert not c.tracebacks(), [d.log()[-3000:] for d in c.daemons]
    finally:
        c.close()


def key_of(d: Smegd, mesh_id: str) -> str:
    return str(d.self_key(mesh_id))


def node_row(d: Smegd, mesh_id: str, key: str) -> dict[str, object]:
    (n,) = [
        n for n in d.ctl_json("get-mesh", "--meshid", mesh_id)["nodes"] if n["public_key"] == key
    ]
    return dict(n)
