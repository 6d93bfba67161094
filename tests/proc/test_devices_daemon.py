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


def test_add_device_config_mesh_dns_evict_and_remove(trio: Cluster, tmp_path: Path) -> None:
    owner, a, b = trio.daemons
    mesh = create_mesh(owner, [a, b])
    key_a = a.self_key(mesh)
    a.ctl("put-alias", "--meshid", mesh, "--alias", "alpha")
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

    # errors are clear, one line
    _one_line(a.ctl("add-device", "--meshid", mesh, "--name", "phone", code=None), "already")
    _one_line(
        a.ctl("add-device", "--meshid", mesh, "--name", "x", "--public-key", "nope", code=None),
        "public_key",
    )
    _one_line(
        a.ctl(
            "add-device",
            "--meshid",
            mesh,
            "--name",
            "x",
            "--via",
            key_a[:0] + b.self_key(mesh),
            code=None,
        ),
        "only the sponsoring peer",
    )
    _one_line(
        a.ctl(
            "add-device",
            "--meshid",
            mesh,
            "--name",
            "x",
            "--public-key",
            b.self_key(mesh),
            code=None,
        ),
        "member",
    )

    # --keep-key: stored 0600 in the state directory, deleted with the device
    kept = a.ctl_json("add-device", "--meshid", mesh, "--name", "tablet", "--keep-key")
    assert kept["device"]["key_kept"] and kept["has_private_key"]
    files = list((a.dir / "state" / "devices").rglob("*.key"))
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    seed = base64.b64encode(files[0].read_bytes()).decode()
    assert f"PrivateKey = {seed}" in kept["config"]
    a.ctl("remove-device", "--meshid", mesh, "tablet")
    assert not files[0].exists()

    # an admin evicts the device by name: gone everywhere, and `a` cannot re-add its key
    router = Path(tmp_path / "r.conf")
    a.ctl("add-device", "--meshid", mesh, "--name", "router", "--output", str(router))
    for d in (owner, a, b):
        wait_until(lambda d=d: "router" in _devices(d, mesh), 20, 0.1, f"{d.name} sees router")
    rkey = _devices(owner, mesh)["router"]["public_key"]
    owner.ctl("evict", "--meshid", mesh, "router")
    for d in (owner, a, b):
        wait_until(lambda d=d: "router" not in _devices(d, mesh), 20, 0.1, f"{d.name} drops it")
    _one_line(
        a.ctl("add-device", "--meshid", mesh, "--name", "r2", "--public-key", str(rkey), code=None),
        "evicted",
    )

    # remove-device: gone from every member and from DNS
    a.ctl("remove-device", "--meshid", mesh, "phone")
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
    a.ctl("leave-mesh", "--meshid", mesh)
    for d in (owner, b):
        wait_until(lambda d=d: _devices(d, mesh) == {}, 20, 0.1, f"{d.name} drops a's devices")


def test_client_cannot_sponsor(trio: Cluster) -> None:
    owner, _a, b = trio.daemons
    mesh = create_mesh(owner, [])
    tok = owner.api("POST", f"/v1/meshes/{mesh}/invites", json={"ttl_s": 600, "uses": 1})["token"]
    b.api("POST", "/v1/join", json={"token": tok, "role": "client"})
    wait_until(lambda: b.mesh(mesh)["role"] == "client", 20, 0.1, "b joins as a client")
    _one_line(b.ctl("add-device", "--meshid", mesh, "--name", "phone", code=None), "peer")
