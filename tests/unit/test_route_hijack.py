"""Traffic hijack through routing by a member turned bad (review of routing).

Each test plays one attack found by the review on the real core and failed
before its fix; see docs/SECURITY.md, "What a member turned bad can do with
routing".
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from smegmesh.core.addressing import mesh_prefix
from smegmesh.core.device_messages import DeviceQuery, DeviceSettings
from smegmesh.core.record import MembershipProof, NodeRecord, RecordError, Role, RouteAdv
from smegmesh.core.routing import compute_routes
from smegmesh.core.state import MeshState
from smegmesh.core.wire import encode
from smegmesh.daemon.devices_remote import DeviceRemoteOps
from smegmesh.testbed.founded import NOW, Mesh, ident

#: a mesh of the old style (4-character suffix: no authority, no admission)
OLD = "here-mesh-abcd"


def _old_record(who: int, **kw: object) -> NodeRecord:
    return NodeRecord.create(
        ident(who),
        OLD,
        version=NOW,
        now_ms=NOW,
        role=Role.PEER,
        wg_endpoint=f"192.0.2.{who}:51820",
        **kw,  # type: ignore[arg-type]
    )


def test_a_copied_membership_proof_is_refused_in_a_mesh_without_an_authority() -> None:
    """A member of an old-style mesh took a share of a founded mesh's traffic.

    Records of a mesh without an authority skipped every admission check, the
    membership proofs of other meshes included, so a member that copied the
    real bridge's proof (the founding record and chain are in its record)
    advertised the founded mesh at length 1 and tied with the bridge.
    """
    there = Mesh(name="there-mesh-b", founder=ident(3))
    dest = str(mesh_prefix(there.mesh_id))
    advert = (RouteAdv(dest, (there.mesh_id,)),)
    proof = (MembershipProof(there.founding, ()),)  # the bridge founded 'there'
    st = MeshState(OLD)
    assert st.apply(_old_record(3, routes=advert, proofs=proof), NOW)
    liar = _old_record(4, routes=advert, proofs=proof)
    with pytest.raises(RecordError, match="proofs"):
        st.apply(liar, NOW)
    res = compute_routes(
        ident(2).wg_public_key,
        {OLD: st.live_records()},
        advertise_routes=False,
        advertise_defaults=False,
        accept_defaults=False,
    )
    [entry] = res.table
    assert entry.gateway == ident(3).wg_public_key and entry.alternatives == 0


def test_a_remote_sponsor_cannot_route_a_devices_traffic_beyond_the_mesh() -> None:
    """A sponsor's answer put any network into a device's wg-quick file.

    Only ``::/0`` and ``0.0.0.0/0`` were dropped: the halves of either (the
    way wg-quick itself routes everything without replacing the default
    route), IPv4 ranges, the admin's LAN or a link-local range went into the
    device's ``AllowedIPs``, and wg-quick routed them into the tunnel to the
    sponsor; a DNS server of its choosing was queried outside the tunnel.
    What a sponsor routes is mesh /64s (core.routing), and the only DNS server
    it offers is its own overlay address (docs/DEVICES.md).
    """
    m = Mesh()
    sponsor = m.record(
        m.founder, control_endpoint="[2001:db8::2]:4000", tls_fp=bytes(32), alias="gw"
    )
    bridged = str(mesh_prefix("far-mesh-abcd"))
    hostile = (
        "::/1",
        "8000::/1",
        "0.0.0.0/1",
        "128.0.0.0/1",
        "192.168.1.0/24",
        "2000::/3",
        "fe80::/10",
        "fd01::/64",
        "fd00::/8",
        f"{bridged[:-3]}/65",
    )
    replies = [
        DeviceSettings(m.mesh_id, "", "203.0.113.53", (*hostile, bridged)),
        DeviceSettings(m.mesh_id, "", sponsor.address, (bridged,)),
    ]

    class Rpc:
        async def call(self, *_a: object, **_k: object) -> bytes:
            return encode(replies.pop(0))

    ops: Any = DeviceRemoteOps.__new__(DeviceRemoteOps)
    ops.rpc = Rpc()
    rt: Any = SimpleNamespace(mesh_id=m.mesh_id)
    got = asyncio.run(ops._device_call(rt, sponsor, DeviceQuery(m.mesh_id, bytes(32))))
    assert got.allowed_ips == (bridged,)
    assert got.dns is None
    honest = asyncio.run(ops._device_call(rt, sponsor, DeviceQuery(m.mesh_id, bytes(32))))
    assert honest.allowed_ips == (bridged,) and honest.dns == sponsor.address
