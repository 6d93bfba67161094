"""Sponsored devices (issue 18): the core rules, on real records, certs and states."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from smegmesh.core.addressing import overlay_address
from smegmesh.core.cert import Cert, Policy, Revocation
from smegmesh.core.desired import desired_config
from smegmesh.core.devices import LiveDevice, contested_devices, live_devices, sponsor_device
from smegmesh.core.record import (
    MAX_DEVICES,
    NodeRecord,
    RecordError,
    Role,
    SponsoredDevice,
    record_from_obj,
    validate_record,
)
from smegmesh.core.state import MeshState
from smegmesh.core.wire import decode_item, encode_item
from smegmesh.testbed.founded import Mesh, ident

DEV = bytes(range(32))  # a device key (no smegd identity behind it)


def _device(m: Mesh, sponsor, key: bytes = DEV, alias: str = "phone") -> SponsoredDevice:  # type: ignore[no-untyped-def]
    m.t += 1000
    return sponsor_device(sponsor, m.mesh_id, device_key=key, alias=alias, now_ms=m.t)


def _live(st: MeshState) -> list[bytes]:
    return [d.wg_key for d in live_devices(st.mesh_id, st.live_records(), st.authority)]


def _config(m: Mesh, st: MeshState, who, role: Role = Role.PEER) -> Any:  # type: ignore[no-untyped-def]
    """``who``'s desired WireGuard interface over ``st`` with the mesh's live devices."""
    iface, _ = desired_config(
        mesh_id=m.mesh_id,
        self_key=who.wg_public_key,
        private_key=who.wg_private_key,
        role=role,
        listen_port=51820,
        records=st.live_records(),
        ifname="smegtest",
        devices=[(d.wg_key, d.address, d.sponsor) for d in _live_devices(st)],
    )
    return iface


def _peer(m: Mesh, st: MeshState, who, **kw) -> NodeRecord:  # type: ignore[no-untyped-def]
    rec = m.record(who, wg_endpoint="192.0.2.1:51820", **kw)
    assert st.apply(rec, rec.timestamp_ms)
    return rec


def test_record_with_devices_round_trips_and_without_keeps_21_fields() -> None:
    m = Mesh()
    a = ident(2)
    m.admit(a)
    plain = m.record(a)
    assert len(plain.to_obj()) == 21  # older versions read and verify it unchanged
    rec = m.record(a, devices=(_device(m, a),))
    assert len(rec.to_obj()) == 22
    back = record_from_obj(rec.to_obj())
    validate_record(back, m.mesh_id)
    assert back.devices == rec.devices
    assert decode_item(encode_item(rec)) == rec
    evolved = rec.evolve(a, m.t + 5000, alias="alpha")
    assert evolved.devices == rec.devices  # evolve keeps the devices


def test_malformed_device_entries_are_refused() -> None:
    m = Mesh()
    a, b = ident(2), ident(3)
    m.admit(a)
    m.admit(b)
    # the cert must be the sponsor's own, for this very device
    foreign = sponsor_device(b, m.mesh_id, device_key=DEV, alias="x", now_ms=m.t + 1)
    with pytest.raises(RecordError, match="sponsor's certificate"):
        m.record(a, devices=(foreign,))
    wrong_subject = replace(_device(m, a), wg_key=bytes(32))
    with pytest.raises(RecordError, match="sponsor's certificate"):
        m.record(a, devices=(wrong_subject,))
    admitting = Cert.create(a, m.mesh_id, subject=DEV, may_admit=True, now_ms=m.t + 1)
    with pytest.raises(RecordError, match="may not admit"):
        m.record(a, devices=(SponsoredDevice(DEV, "x", admitting),))
    with pytest.raises(RecordError, match="unique"):
        m.record(a, devices=(_device(m, a), _device(m, a)))
    with pytest.raises(RecordError, match="own key"):
        m.record(a, devices=(replace(_device(m, a), wg_key=a.wg_public_key),))
    many = tuple(_device(m, a, key=bytes([i]) * 32) for i in range(MAX_DEVICES + 1))
    with pytest.raises(RecordError, match=f"at most {MAX_DEVICES}"):
        m.record(a, devices=many)
    # on the wire: more entries than the bound are refused before any work
    ok = m.record(a, devices=many[:MAX_DEVICES])
    obj = ok.to_obj()
    devs = obj[21][0][1]  # the devices extension: [tag, entries]
    devs.append(devs[0])
    with pytest.raises(RecordError, match=f"at most {MAX_DEVICES}"):
        record_from_obj(obj)


def test_forged_device_cert_signature_is_refused_by_the_state() -> None:
    m = Mesh()
    st = m.state()
    a = ident(2)
    m.admit(a)
    d = _device(m, a)
    forged = SponsoredDevice(DEV, "phone", replace(d.cert, signature=bytes(64)))
    rec = m.record(a, devices=(forged,))  # signed by its owner, but the cert is not
    with pytest.raises(RecordError, match="devices"):
        st.apply(rec, rec.timestamp_ms)


def test_device_is_live_only_through_a_sponsor_allowed_to_admit() -> None:
    m = Mesh(policy=Policy.PEERS)
    st = m.state()
    allowed, barred = ident(2), ident(3)
    m.admit(allowed, may_admit=True)
    m.admit(barred, may_admit=False)  # e.g. admitted as a client under "peers"
    _peer(m, st, allowed, devices=(_device(m, allowed, key=b"\x01" * 32),))
    _peer(m, st, barred, devices=(_device(m, barred, key=b"\x02" * 32),))
    assert _live(st) == [b"\x01" * 32]
    # a client cannot sponsor (it forwards nothing)
    c = ident(4)
    m.admit(c, may_admit=True)
    rec = m.record(c, role=Role.CLIENT, devices=(_device(m, c, key=b"\x03" * 32),))
    assert st.apply(rec, rec.timestamp_ms)
    assert b"\x03" * 32 not in _live(st)


def test_admins_policy_only_admins_sponsor() -> None:
    m = Mesh(policy=Policy.ADMINS)
    st = m.state()
    peer = ident(2)
    m.admit(peer, may_admit=False)
    _peer(m, st, m.founder, devices=(_device(m, m.founder, key=b"\x05" * 32),))
    _peer(m, st, peer, devices=(_device(m, peer, key=b"\x06" * 32),))
    assert _live(st) == [b"\x05" * 32]


def test_device_goes_when_removed_or_the_sponsor_leaves() -> None:
    m = Mesh()
    st = m.state()
    a = ident(2)
    m.admit(a)
    rec = _peer(m, st, a, devices=(_device(m, a),))
    assert _live(st) == [DEV]
    m.t += 10_000
    removed = rec.evolve(a, m.t, devices=())
    assert st.apply(removed, m.t)
    assert _live(st) == []
    m.t += 10_000
    back = removed.evolve(a, m.t, devices=(_device(m, a),))
    assert st.apply(back, m.t) and _live(st) == [DEV]
    m.t += 10_000
    assert st.apply(back.evolve(a, m.t, left=True), m.t)
    assert _live(st) == []


def test_device_goes_when_evicted_or_its_sponsor_is_evicted() -> None:
    m = Mesh()
    st = m.state()
    a, b = ident(2), ident(3)
    m.admit(a)
    m.admit(b)
    _peer(m, st, a, devices=(_device(m, a, key=b"\x07" * 32, alias="p1"),))
    _peer(m, st, b, devices=(_device(m, b, key=b"\x08" * 32, alias="p2"),))
    assert _live(st) == [b"\x07" * 32, b"\x08" * 32]
    m.t += 1000
    ev_dev = Revocation.create(m.founder, m.mesh_id, target=b"\x07" * 32, cascade=False, now_ms=m.t)
    assert st.apply(ev_dev, m.t)
    assert _live(st) == [b"\x08" * 32]
    assert st.live_record(a.wg_public_key) is not None  # the sponsor itself stays
    m.t += 1000
    ev_b = Revocation.create(
        m.founder, m.mesh_id, target=b.wg_public_key, cascade=False, now_ms=m.t
    )
    assert st.apply(ev_b, m.t)
    assert _live(st) == []


def test_a_member_key_is_never_a_device() -> None:
    m = Mesh()
    st = m.state()
    a, b = ident(2), ident(3)
    m.admit(a)
    m.admit(b)
    _peer(m, st, b)
    # a lists b's key as its device: b stays b, and nothing routes b through a
    _peer(m, st, a, devices=(_device(m, a, key=b.wg_public_key, alias="hijack"),))
    assert _live(st) == []
    iface = _config(m, st, m.founder)
    b_addr = str(overlay_address(m.mesh_id, b.wg_public_key))
    assert iface.peers[a.wg_public_key].allowed_ips == {
        f"{overlay_address(m.mesh_id, a.wg_public_key)}/128"
    }
    assert iface.peers[b.wg_public_key].allowed_ips == {f"{b_addr}/128"}


def test_a_key_listed_by_two_sponsors_is_live_for_neither() -> None:
    """A member admitted before the rightful sponsor lists the device's key with a
    cert dated at its own admission (a sponsor dates its certs itself): the key
    was given to the earliest date, so every member routed the device's traffic
    to it and the rightful sponsor dropped the device. Nothing orders two
    claims, so a contested key is live for neither: cut off, never taken."""
    m = Mesh()
    st = m.state()
    thief, sponsor = ident(2), ident(3)
    thief_chain = m.admit(thief)  # admitted first
    m.admit(sponsor)
    _peer(m, st, sponsor, devices=(_device(m, sponsor),))
    assert [d.sponsor for d in live_devices(m.mesh_id, st.live_records(), st.authority)] == [
        sponsor.wg_public_key
    ]
    backdated = Cert.create(
        thief, m.mesh_id, subject=DEV, may_admit=False, now_ms=thief_chain[-1].issued_ms
    )
    _peer(m, st, thief, devices=(SponsoredDevice(DEV, "phone", backdated),))
    assert _live(st) == []
    assert contested_devices(st.live_records(), st.authority) == {
        DEV: tuple(sorted((thief.wg_public_key, sponsor.wg_public_key)))
    }
    iface = _config(m, st, m.founder)
    dev_net = f"{overlay_address(m.mesh_id, DEV)}/128"
    assert dev_net not in iface.peers[thief.wg_public_key].allowed_ips
    # the member at fault drops it (or is evicted): the rightful sponsor has it again
    _peer(m, st, thief, devices=())
    assert [d.sponsor for d in _live_devices(st)] == [sponsor.wg_public_key]
    assert contested_devices(st.live_records(), st.authority) == {}


def _live_devices(st: MeshState) -> list[LiveDevice]:
    return live_devices(st.mesh_id, st.live_records(), st.authority)


def test_every_member_reaches_the_device_through_its_sponsor() -> None:
    m = Mesh()
    st = m.state()
    a, b = ident(2), ident(3)
    m.admit(a)
    m.admit(b)
    _peer(m, st, a, devices=(_device(m, a),))
    _peer(m, st, b)
    dev_net = f"{overlay_address(m.mesh_id, DEV)}/128"

    def cfg(who, role=Role.PEER):  # type: ignore[no-untyped-def]
        return _config(m, st, who, role)

    on_sponsor = cfg(a).peers[DEV]
    assert on_sponsor.allowed_ips == {dev_net} and on_sponsor.endpoint is None
    on_b = cfg(b)
    assert DEV not in on_b.peers and dev_net in on_b.peers[a.wg_public_key].allowed_ips


def test_device_routes_validate_before_the_service() -> None:
    from urllib.parse import quote

    import httpx

    from api_fake import served_unix

    with served_unix() as (path, svc):
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, base_url="http://smegd", timeout=10) as c:
            mesh = c.post("/v1/meshes").json()["mesh_id"]
            url = f"/v1/meshes/{mesh}/devices"
            for body in (
                {},
                {"name": ""},
                {"name": "x" * 64},
                {"name": "p", "public_key": "k" * 10_000},
                {"name": "p", "keep_key": "yes"},
                {"name": "p", "via": "v" * 300},
            ):
                r = c.post(url, json=body)
                assert r.status_code == 422, (body, r.text)
            assert not any(call[0] == "add_device" for call in svc.calls)
            r = c.post(url, json={"name": "phone", "keep_key": True})
            assert r.status_code == 200 and r.json()["device"]["alias"] == "phone"
            assert c.get(url).json() == []
            r = c.delete(f"{url}/nosuch")
            assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_device"
            # a public key (or a prefix of one) may hold "/": smegctl sends it as %2F
            for method in ("DELETE", "GET"):
                suffix = "/config" if method == "GET" else ""
                r = c.request(method, f"{url}/{quote('ab/c+d=', safe='')}{suffix}")
                assert r.status_code == 404 and "'ab/c+d='" in r.json()["error"]["message"]
            assert ("device_config", (mesh, "ab/c+d=")) in svc.calls
            assert c.get("/v1/meshes/nosuchmesh/devices").status_code == 404


def test_printed_config_parses_and_renders_as_a_qr_code() -> None:
    from smegmesh.cli.devices import qr_text
    from smegmesh.daemon.devices_ops import parse_wg_quick, render_wg_quick

    text = render_wg_quick(
        private_key="YI1Qe6G1Fa/WycjGwkrgD1mQoDTVvKWM6z38MUkJh2c=",
        address="fd00::1",
        prefix="fd00::/64",
        dns="fd00::2",
        sponsor_key="4BQhXpuO+3dePqjs1m1c+u6SRYVovPgZfvevqznzknE=",
        endpoint="[2001:db8::2]:51820",
        allowed_ips=["fd01::/64"],
        comment="demo",
    )
    cfg = parse_wg_quick(text)
    assert cfg["Interface"]["Address"] == "fd00::1/128"
    assert cfg["Peer"]["AllowedIPs"] == "fd00::/64, fd01::/64"
    assert cfg["Peer"]["PersistentKeepalive"] == "25"
    qr = qr_text(text)
    assert len(qr.splitlines()) > 20 and ("█" in qr or "▀" in qr)


def test_device_messages_round_trip_and_bound_what_a_peer_sends() -> None:
    from smegmesh.core.device_messages import (
        MAX_DEVICE_ROUTES,
        DeviceQuery,
        DeviceSettings,
        SponsorRequest,
    )
    from smegmesh.core.wire import WireError, decode, encode

    mesh = Mesh().mesh_id
    for msg in (
        SponsorRequest(mesh, DEV, "phone"),
        DeviceQuery(mesh, DEV),
        DeviceSettings(mesh, "", "fd00::1", ("fd01::/64", "10.0.0.0/8")),
        DeviceSettings(mesh, "refused", None, ()),
    ):
        assert decode(encode(msg)) == msg
    # a hostile peer's answers and requests: refused at decoding, never a crash
    bad = (
        SponsorRequest(mesh, DEV[:31], "phone"),
        SponsorRequest(mesh, DEV, "-bad-"),
        SponsorRequest(mesh, DEV, "x" * 64),
        DeviceSettings(mesh, "", "not an address", ()),
        DeviceSettings(mesh, "", None, ("fd01::1/64",)),  # host bits set
        DeviceSettings(mesh, "", None, ("nonsense",)),
        DeviceSettings(mesh, "", None, tuple(f"fd01:{i:x}::/64" for i in range(65))),
    )
    for msg in bad:
        with pytest.raises(WireError):
            decode(encode(msg))
    assert MAX_DEVICE_ROUTES == 64
    long_error = DeviceSettings(mesh, "e" * 10_000, None, ())
    back = decode(encode(long_error))
    assert isinstance(back, DeviceSettings) and len(back.error) == 300  # truncated, not refused


def test_device_routes_are_what_the_sponsor_routes_now() -> None:
    from smegmesh.core.addressing import mesh_prefix
    from smegmesh.core.desired import GatewayRoute
    from smegmesh.core.record import RouteAdv
    from smegmesh.daemon.devices_ops import device_routes

    mesh = Mesh().mesh_id
    prefix = str(mesh_prefix(mesh))

    class Routing:  # the fields of core.routing.RoutingResult device_routes reads
        def __init__(self, gw: list[str], own: list[str]) -> None:
            self.gateway_routes = {mesh: tuple(GatewayRoute(d, bytes(32)) for d in gw)}
            self.adverts = {mesh: tuple(RouteAdv(p) for p in [*own, prefix])}

    assert device_routes(mesh, None) == []
    # through another gateway of the mesh, and advertised by the sponsor itself (a bridge);
    # not a default route (an exit's): the device's owner opts in, as acceptDefaults
    r = Routing(["fd02::/64", "::/0"], ["fd03::/64", "::/0", "0.0.0.0/0"])
    assert device_routes(mesh, r) == ["fd02::/64", "fd03::/64"]
    # the mesh's routes change: so does what a reprinted config covers
    assert device_routes(mesh, Routing([], ["fd03::/64"])) == ["fd03::/64"]
    assert device_routes("another-mesh", r) == []


def test_smegctl_device_config_and_via_reach_the_api() -> None:
    """In-process smegctl over the fake service: ``--via`` is passed on, ``device-config``
    names the device in the path (a key holding "/" too) and refusals are one line."""
    from typer.testing import CliRunner

    from api_fake import served_unix
    from smegmesh.cli.main import app

    runner = CliRunner()
    with served_unix() as (path, svc):
        sock = ["--socket", str(path)]
        mesh = runner.invoke(app, [*sock, "new-mesh"]).stdout.strip()
        r = runner.invoke(app, [*sock, "add-device", "-m", mesh, "--name", "p", "--via", "bravo"])
        assert r.exit_code == 0, r.stdout
        assert svc.calls[-1] == ("add_device", (mesh, "p", None, False, "bravo"))
        r = runner.invoke(app, [*sock, "device-config", "-m", mesh, "ab/c+d="])
        assert r.exit_code == 1 and svc.calls[-1] == ("device_config", (mesh, "ab/c+d="))
        assert r.stderr.startswith("smegctl: ") and len(r.stderr.splitlines()) == 1, r.stderr
        assert "no device" in r.stderr


def test_add_device_output_that_cannot_be_written_is_refused_before_the_device_is_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generated private key is shown once: a mistyped --output directory made
    smegctl fail after the daemon had added the device, the key neither written nor
    printed (a traceback: FileNotFoundError)."""
    from typer.testing import CliRunner

    from api_fake import served_unix
    from smegmesh.cli import devices as cli_devices
    from smegmesh.cli.main import app

    runner = CliRunner()
    with served_unix() as (path, svc):
        sock = ["--socket", str(path)]
        mesh = runner.invoke(app, [*sock, "new-mesh"]).stdout.strip()
        for out in (tmp_path / "no-such-dir" / "phone.conf", tmp_path):
            r = runner.invoke(
                app, [*sock, "add-device", "-m", mesh, "--name", "p", "--output", str(out)]
            )
            assert r.exit_code == 1 and r.stderr.startswith("smegctl: --output"), r.stderr
            assert len(r.stderr.splitlines()) == 1, r.stderr
            assert not any(c[0] == "add_device" for c in svc.calls)

        # a write that fails anyway, after the device is added: the config is printed
        def fail(*_a: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(cli_devices, "write_private_file", fail)
        out = tmp_path / "phone.conf"
        r = runner.invoke(
            app, [*sock, "add-device", "-m", mesh, "--name", "p", "--output", str(out)]
        )
        assert r.exit_code == 1 and "[Interface]" in r.stdout, (r.stdout, r.stderr)
        assert "No space left" in r.stderr and "printed above" in r.stderr, r.stderr


def test_a_pruned_members_key_is_never_a_device() -> None:
    """A member pruned for a while (asleep, cut off, or pruned by the one listing it)
    keeps its record; its key listed as another peer's device took its overlay
    address (derived from the key) and so its traffic, until it came back. Every key
    the mesh holds a record or prune for is out (found by a review of routing)."""
    from smegmesh.core.record import Prune

    m = Mesh()
    st = m.state()
    observer, victim, thief = ident(40), ident(41), ident(42)
    for n in (observer, victim, thief):
        m.admit(n)
    _peer(m, st, observer)
    vrec = _peer(m, st, victim)
    prune = Prune.create(
        observer,
        m.mesh_id,
        now_ms=m.t,
        target_record=vrec,
        by_chain=m.chains[observer.wg_public_key],
    )
    assert st.apply(prune, m.t) and st.record(victim.wg_public_key) is not None
    _peer(m, st, thief, devices=(_device(m, thief, key=victim.wg_public_key, alias="victim"),))
    nodes = frozenset(st.node_keys())
    assert live_devices(m.mesh_id, st.live_records(), st.authority, nodes=nodes) == []
    assert contested_devices(st.live_records(), st.authority, nodes=nodes) == {}
    # without the held keys (the code before the fix) the thief had it
    assert [d.wg_key for d in _live_devices(st)] == [victim.wg_public_key]
    # and the daemon passes them: its view of the mesh's devices
    from types import SimpleNamespace

    from smegmesh.daemon.devices_ops import DeviceOps

    ops: Any = DeviceOps.__new__(DeviceOps)
    rt: Any = SimpleNamespace(
        mesh_id=m.mesh_id, node=SimpleNamespace(mesh=st, live_records=st.live_records)
    )
    assert ops._devices(rt) == []


def test_a_remote_sponsors_settings_keep_mesh_prefixes_and_its_own_dns_only() -> None:
    """The trust rule on a sponsor's DeviceSettings, pure (core.device_messages)."""
    from smegmesh.core.device_messages import DeviceSettings, from_remote_sponsor

    mesh64 = "fd12:3456:789a:bc01::/64"
    sponsor = "fd12:3456:789a:bc01::5"
    reply = DeviceSettings(
        "m", "", "FD12:3456:789A:BC01:0::5", (mesh64, "::/1", "8000::/1", "10.0.0.0/8")
    )
    kept = from_remote_sponsor(reply, sponsor)
    assert kept == DeviceSettings("m", "", reply.dns, (mesh64,))
    assert from_remote_sponsor(replace(reply, dns="fd12:3456:789a:bc01::6"), sponsor).dns is None
    assert from_remote_sponsor(replace(reply, dns="192.0.2.1"), sponsor).dns is None
    assert from_remote_sponsor(replace(reply, dns=None), sponsor).dns is None
