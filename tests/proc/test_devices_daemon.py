"""Sponsored devices with real daemons (memory backend): add-device, get-mesh on every
member, DNS, evict, remove-device (issue 18)."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from smegmesh.daemon.devices_ops import parse_wg_quick
from smegmesh.testbed.loopback import Cluster, Smegd, create_mesh, wait_until


@pytest.fixture(scope="module")
def trio() -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.add(1, wait=False, dns_listen=True)
        c.add(2, wait=False)
        c.wait_ready()
        yield c
        assert not c.tracebacks(), "tracebacks in smegd logs"
    finally:
        c.close()


def _devices(d: Smegd, mesh: str) -> dict[str, dict[str, object]]:
    return {x["alias"]: x for x in d.mesh(mesh).get("devices", [])}


def _aaaa(d: Smegd, name: str) -> list[str]:
    q = dns.message.make_query(name, dns.rdatatype.AAAA)
    r = dns.query.udp(q, d.dns_host, timeout=3, port=d.dns_port)
    if r.rcode() != dns.rcode.NOERROR:
        return []
    return [rr.address for rrset in r.answer for rr in rrset]


def _one_line(r: object, *words: str) -> None:
    assert r.code == 1, r  # type: ignore[attr-defined]
    err = r.stderr  # type: ignore[attr-defined]
    assert err.startswith("smegctl: ") and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err.lower(), (w, err)


def _refused(d: Smegd, method: str, url: str, **kw: object) -> tuple[int, str, str]:
    """(status, code, message) of a request the daemon refuses (never a 500)."""
    import httpx

    transport = httpx.HTTPTransport(uds=str(d.sock))
    with httpx.Client(transport=transport, base_url="http://smegd", timeout=30) as c:
        r = c.request(method, url, **kw)  # type: ignore[arg-type]
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    err = r.json()["error"]
    return r.status_code, err["code"], err["message"]


def test_add_device_config_mesh_dns_evict_and_remove(trio: Cluster, tmp_path: Path) -> None:
    owner, a, b = trio.daemons
    mesh = create_mesh(owner, [a, b])
    key_a = a.self_key(mesh)
    a.api("PUT", f"/v1/meshes/{mesh}/alias", json={"alias": "alpha"})
    url = f"/v1/meshes/{mesh}/devices"
    detail_a = a.node(mesh, key_a)
    assert detail_a is not None

    # add-device on peer `a`: a valid wg-quick config, written 0600
    out = tmp_path / "phone.conf"
    r = a.ctl("add-device", "--meshid", mesh, "--name", "phone", "--output", str(out))
    assert "not kept" in r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    print("\n" + text)
    cfg = parse_wg_quick(text)
    iface, peer = cfg["Interface"], cfg["Peer"]
    priv = X25519PrivateKey.from_private_bytes(base64.b64decode(iface["PrivateKey"]))
    dev_key = base64.b64encode(priv.public_key().public_bytes_raw()).decode()
    mine = _devices(a, mesh)["phone"]
    assert mine["public_key"] == dev_key and mine["key_kept"] is False
    assert iface["Address"] == f"{mine['overlay_address']}/128"
    prefix = owner.mesh(mesh)["prefix"]
    assert peer["PublicKey"] == key_a
    assert peer["Endpoint"] == a.node(mesh, key_a)["wg_endpoint"]  # type: ignore[index]
    assert prefix in peer["AllowedIPs"].split(", ")
    assert peer["PersistentKeepalive"] == "25"
    assert not list((a.dir / "state").rglob("*.key")) or all(
        "devices" not in str(p) for p in (a.dir / "state").rglob("*.key")
    )  # the private key is not kept

    # every member sees it, with `a` as its sponsor (its only WireGuard peer)
    for d in (owner, a, b):
        wait_until(lambda d=d: "phone" in _devices(d, mesh), 20, 0.1, f"{d.name} sees phone")
        assert _devices(d, mesh)["phone"]["sponsor"] == key_a
    listed = b.ctl_json("list-devices", "--meshid", mesh)
    assert [x["alias"] for x in listed] == ["phone"] and listed[0]["sponsor_alias"] == "alpha"
    # DNS: phone.MESH.smeg. answers its overlay address
    addr = str(mine["overlay_address"])
    wait_until(lambda: _aaaa(owner, f"phone.{mesh}.smeg.") == [addr], 20, 0.2, "phone in DNS")
    # a member cannot take the device's alias (the device keeps it in DNS)
    code, _c, msg = _refused(b, "PUT", f"/v1/meshes/{mesh}/alias", json={"alias": "phone"})
    assert code == 409 and "device" in msg, msg

    # errors are clear: one line from smegctl, a 4xx with a message from the API
    _one_line(a.ctl("add-device", "--meshid", mesh, "--name", "phone", code=None), "already")
    for body, words in (
        ({"name": "x", "public_key": "nope"}, "public_key"),
        ({"name": "x", "via": b.self_key(mesh)}, "only an admin"),
        ({"name": "x", "public_key": b.self_key(mesh)}, "member"),
        ({"name": "alpha"}, "own alias"),  # else the name stays the sponsor's, silently
    ):
        msg = _refused(a, "POST", url, json=body)[2]
        assert words in msg.lower(), (body, msg)
    # another peer cannot list the phone too (a key listed twice is live for neither)
    code, _c, msg = _refused(b, "POST", url, json={"name": "phone2", "public_key": dev_key})
    assert code == 409 and "another peer" in msg, msg

    # --keep-key: stored 0600 in the state directory, deleted with the device
    kept = a.api("POST", url, json={"name": "tablet", "keep_key": True})
    assert kept["device"]["key_kept"] and kept["has_private_key"]
    files = list((a.dir / "state" / "devices").rglob("*.key"))
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    seed = base64.b64encode(files[0].read_bytes()).decode()
    assert f"PrivateKey = {seed}" in kept["config"]
    a.api("DELETE", f"{url}/tablet")
    assert not files[0].exists()

    # an admin evicts the device by name: gone everywhere, and `a` cannot re-add its key
    a.api("POST", url, json={"name": "router"})
    for d in (owner, a, b):
        wait_until(lambda d=d: "router" in _devices(d, mesh), 20, 0.1, f"{d.name} sees router")
    rkey = _devices(owner, mesh)["router"]["public_key"]
    owner.api("POST", f"/v1/meshes/{mesh}/evict", json={"node": "router"})
    for d in (owner, a, b):
        wait_until(lambda d=d: "router" not in _devices(d, mesh), 20, 0.1, f"{d.name} drops it")
    assert "evicted" in _refused(a, "POST", url, json={"name": "r2", "public_key": rkey})[2]

    # remove-device: gone from every member and from DNS
    a.api("DELETE", f"{url}/phone")
    for d in (owner, a, b):
        wait_until(lambda d=d: "phone" not in _devices(d, mesh), 20, 0.1, f"{d.name} drops phone")
    wait_until(lambda: _aaaa(owner, f"phone.{mesh}.smeg.") == [], 20, 0.2, "phone out of DNS")
    _one_line(a.ctl("remove-device", "--meshid", mesh, "phone", code=None), "no device")
    assert os.path.exists(out)  # the user's file is theirs

    # --qr prints the config as a QR code; the device goes when its sponsor leaves
    qr = a.ctl("add-device", "--meshid", mesh, "--name", "watch", "--qr")
    assert "▀" in qr.stdout or "█" in qr.stdout
    assert "PrivateKey" not in qr.stdout  # only the code, not the text
    for d in (owner, b):
        wait_until(lambda d=d: "watch" in _devices(d, mesh), 20, 0.1, f"{d.name} sees watch")
    a.api("DELETE", f"/v1/meshes/{mesh}")
    for d in (owner, b):
        wait_until(lambda d=d: _devices(d, mesh) == {}, 20, 0.1, f"{d.name} drops a's devices")


def test_client_cannot_sponsor(trio: Cluster) -> None:
    owner, _a, b = trio.daemons
    mesh = create_mesh(owner, [])
    tok = owner.api("POST", f"/v1/meshes/{mesh}/invites", json={"ttl_s": 600, "uses": 1})["token"]
    b.api("POST", "/v1/join", json={"token": tok, "role": "client"})
    wait_until(lambda: b.mesh(mesh)["role"] == "client", 20, 0.1, "b joins as a client")
    _one_line(b.ctl("add-device", "--meshid", mesh, "--name", "phone", code=None), "peer")


def test_admin_adds_a_device_via_a_remote_peer(trio: Cluster, tmp_path: Path) -> None:
    """``add-device --via PEER`` by an admin: the peer sponsors it; a non-admin cannot,
    not even by calling the peer directly; ``device-config`` reprints the config.
    (Over the API where the CLI adds nothing: each smegctl run costs seconds in CI.)"""
    import asyncio

    from smegmesh.core.device_messages import DeviceSettings, SponsorRequest
    from smegmesh.core.identity import NodeIdentity
    from smegmesh.core.wire import decode, encode
    from smegmesh.daemon.transport import RpcClient, TlsIdentity

    owner, a, b = trio.daemons
    mesh = create_mesh(owner, [a, b])
    key_a = a.self_key(mesh)
    a.api("PUT", f"/v1/meshes/{mesh}/alias", json={"alias": "alpha"})
    wait_until(
        lambda: (owner.node(mesh, key_a) or {}).get("alias") == "alpha", 20, 0.1, "alias seen"
    )
    url = f"/v1/meshes/{mesh}/devices"

    # the owner (an admin) names peer `a` by alias; the key is generated and kept here
    res = owner.api("POST", url, json={"name": "phone", "via": "alpha", "keep_key": True})
    cfg = parse_wg_quick(res["config"])
    assert res["has_private_key"] and res["device"]["sponsor"] == key_a
    assert cfg["Peer"]["PublicKey"] == key_a
    assert cfg["Peer"]["Endpoint"] == a.node(mesh, key_a)["wg_endpoint"]  # type: ignore[index]
    assert owner.mesh(mesh)["prefix"] in cfg["Peer"]["AllowedIPs"].split(", ")
    priv = X25519PrivateKey.from_private_bytes(base64.b64decode(cfg["Interface"]["PrivateKey"]))
    dev_key = base64.b64encode(priv.public_key().public_bytes_raw()).decode()
    assert res["device"]["public_key"] == dev_key
    for d in (owner, a, b):
        wait_until(lambda d=d: "phone" in _devices(d, mesh), 20, 0.1, f"{d.name} sees phone")
        assert _devices(d, mesh)["phone"]["sponsor"] == key_a
    # the private key stayed with the admin: never sent to, never kept by the sponsor
    assert not list((a.dir / "state").rglob("devices/*/*.key"))
    assert len(list((owner.dir / "state").rglob("devices/*/*.key"))) == 1

    # device-config: on the admin (asks the sponsor; the kept key included) and on the
    # sponsor (no private key: it never had it), the same settings
    again = owner.api("GET", f"{url}/phone/config")
    assert again["has_private_key"] and again["config"] == res["config"]
    out = tmp_path / "phone.conf"
    on_a = a.ctl("device-config", "--meshid", mesh, dev_key[:10], "--output", str(out))
    assert "the private key is not kept here" in on_a.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    assert "\nPrivateKey" not in text
    assert text.replace("# PrivateKey = <the device's private key (you kept it)>", "") == (
        res["config"].replace(f"PrivateKey = {cfg['Interface']['PrivateKey']}", "")
    )
    assert b.api("GET", f"{url}/phone/config")["config"] == text  # any member
    assert _refused(owner, "GET", f"{url}/nosuch/config")[:2] == (404, "unknown_device")
    # remove-device on a member that is not the sponsor said "this peer sponsors no
    # device 'phone'", which list-devices there contradicts: it says where to run it
    r = owner.ctl("remove-device", "--meshid", mesh, "phone", code=1)
    assert r.stderr == (
        "smegctl: device phone is sponsored by alpha: run remove-device there "
        "(an admin can also evict it)\n"
    ), r.stderr

    # a non-admin cannot make a peer sponsor a device: not through its daemon...
    _one_line(
        b.ctl("add-device", "--meshid", mesh, "--name", "evil", "--via", "alpha", code=None),
        "admin",
    )
    # ...nor by calling the peer itself with its own (member) identity
    attacker = NodeIdentity.from_seed((b.dir / "state" / "identity.key").read_bytes())
    fp = TlsIdentity.load_or_create(a.dir / "state").fingerprint
    endpoint = a.node(mesh, key_a)["control_endpoint"]  # type: ignore[index]

    async def ask() -> list[object]:
        rpc = RpcClient(attacker, timeout=10)
        try:
            body = encode(SponsorRequest(mesh, bytes(range(1, 33)), "evil"))
            return [decode(await rpc.call(endpoint, fp, body)) for _ in range(10)]
        finally:
            await rpc.close()

    replies = asyncio.run(ask())
    assert all(isinstance(r, DeviceSettings) and "admin" in r.error for r in replies), replies
    assert "evil" not in _devices(a, mesh)
    lines = [ln for ln in a.log().splitlines() if "not an admin" in ln]
    assert len(lines) == 1, lines  # logged once, then summarised: no log flood on demand
    # --via naming no node of the mesh: a clear error
    assert _refused(owner, "POST", url, json={"name": "x", "via": "nosuch"})[:2] == (
        404,
        "unknown_node",
    )

    # the invite policy applies to the sponsor: under `admins`, peer `a` (not an admin)
    # may not admit, so it refuses to sponsor and says why
    owner.api("PUT", f"/v1/meshes/{mesh}/policy", json={"invite_policy": "admins"})
    wait_until(lambda: a.mesh(mesh).get("invite_policy") == "admins", 20, 0.1, "policy seen")
    status, code, msg = _refused(owner, "POST", url, json={"name": "p3", "via": "alpha"})
    assert (status, code) == (409, "sponsor_refused") and "may not admit" in msg, msg
    assert "p3" not in _devices(a, mesh)

    # eviction applies: the admin evicts the device, gone everywhere; `a` cannot re-add it
    owner.api("POST", f"/v1/meshes/{mesh}/evict", json={"node": "phone"})
    for d in (owner, a, b):
        wait_until(lambda d=d: "phone" not in _devices(d, mesh), 20, 0.1, f"{d.name} drops it")
    status, code, msg = _refused(
        owner, "POST", url, json={"name": "p2", "via": "alpha", "public_key": dev_key}
    )
    assert status == 403 and "evicted" in msg, (code, msg)


def test_device_config_follows_the_mesh_routes(trio: Cluster) -> None:
    """A route added to the mesh after the device: ``device-config`` (on the sponsor, and
    on another member, which asks the sponsor) covers it, and the sponsor routes it."""
    owner, a, b = trio.daemons
    mesh1 = create_mesh(owner, [a, b], advertise_routes=True)
    url = f"/v1/meshes/{mesh1}/devices"
    res = owner.api("POST", url, json={"name": "tab", "keep_key": True})
    prefix1 = owner.mesh(mesh1)["prefix"]

    def allowed(cfg: dict[str, object]) -> set[str]:
        return set(parse_wg_quick(str(cfg["config"]))["Peer"]["AllowedIPs"].split(", "))

    # (the trio's daemons share meshes of earlier tests, which they bridge into mesh1 too)
    before = allowed(res)
    assert prefix1 in before
    wait_until(lambda: "tab" in _devices(a, mesh1), 20, 0.1, "a sees tab")

    # b bridges a new mesh into mesh1: the sponsor (owner) routes its prefix through b
    mesh2 = str(b.api("POST", "/v1/meshes", json={"advertise_routes": True})["mesh_id"])
    prefix2 = b.mesh(mesh2)["prefix"]

    def routed() -> bool:
        return any(r["destination"] == prefix2 for r in owner.mesh(mesh1)["routes"])

    wait_until(routed, 30, 0.1, "the sponsor routes mesh2 through b")
    bkey = b.self_key(mesh1)
    route = next(r for r in owner.mesh(mesh1)["routes"] if r["destination"] == prefix2)
    assert route["gateway"] == bkey

    assert prefix2 not in before
    want = before | {prefix2}
    now = owner.api("GET", f"{url}/tab/config")
    assert now["has_private_key"]  # kept on the sponsor: the whole config again
    assert allowed(now) == want
    assert parse_wg_quick(now["config"])["Interface"] == parse_wg_quick(res["config"])["Interface"]
    elsewhere = a.api("GET", f"{url}/tab/config")  # asks the sponsor
    assert not elsewhere["has_private_key"]
    assert allowed(elsewhere) == want
    b.api("DELETE", f"/v1/meshes/{mesh2}")
    wait_until(lambda: not routed(), 30, 0.1, "the route goes with mesh2")
    again = owner.api("GET", f"{url}/tab/config")
    assert allowed(again) == before
