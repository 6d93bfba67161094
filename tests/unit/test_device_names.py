"""DNS names of sponsored devices: ranked with the members' aliases (core.aliases.name_owners).

Found by review (seventeenth session): ``daemon/dns_wiring.py`` named a device
``d.alias if d.alias not in owners``, where ``owners`` lists only aliases some
present member claims. So an alias an admin reserved for a node that is absent
(or uses another alias) went to any member's device, and a member admitted
after a device took the device's name. Both failed before the fix.
"""

from __future__ import annotations

from types import SimpleNamespace

from smegmesh.core.aliases import name_owners
from smegmesh.core.cert import AliasReserve
from smegmesh.core.devices import live_devices, sponsor_device
from smegmesh.core.state import MeshState
from smegmesh.daemon.dns_wiring import DnsOps
from smegmesh.dns.names import AAAA, NameView, resolve
from smegmesh.testbed.founded import Mesh, ident


def _names(st: MeshState, mesh_id: str) -> NameView:
    """What DnsOps._update_dns serves for this one mesh (a stand-in daemon)."""
    rt = SimpleNamespace(
        mesh_id=mesh_id,
        node=SimpleNamespace(live_records=st.live_records, mesh=SimpleNamespace(version=1)),
        alias_authority=st.authority,
    )
    served: list[NameView] = []
    fake = SimpleNamespace(
        dns=SimpleNamespace(update=served.append),
        meshes={mesh_id: rt},
        _dns_key=None,
        _dns_names={},
        _dns_table=None,
        _dns_serial=0,
        _devices=lambda rt: live_devices(rt.mesh_id, st.live_records(), st.authority),
    )
    DnsOps._update_dns(fake)  # type: ignore[arg-type]
    return served[-1]


def _aaaa(st: MeshState, m: Mesh, alias: str) -> list[str]:
    """The AAAA answers of ``alias.MESH.smeg.`` as the daemon serves them."""
    return [
        r.data for r in resolve(_names(st, m.mesh_id), f"{alias}.{m.mesh_id}.smeg.", AAAA).answer
    ]


def _apply(st: MeshState, m: Mesh, *items: object) -> None:
    _changed, errors = st.apply_many(list(items), m.t + 10)  # type: ignore[arg-type]
    assert not errors, errors


def test_a_device_cannot_take_an_alias_reserved_for_another_node() -> None:
    m, member, holder = Mesh(), ident(2), ident(3)
    st = m.state()
    m.admit(member)
    # the admin reserves "db" for the holder (a node not online right now)
    res = AliasReserve.create(
        m.founder, m.mesh_id, alias="db", holder=holder.wg_public_key, now_ms=m.t + 1
    )
    assert st.apply(res, m.t + 1)
    dev = sponsor_device(
        member, m.mesh_id, device_key=ident(9).wg_public_key, alias="db", now_ms=m.t + 2
    )
    _apply(st, m, m.record(member, alias="m", devices=[dev]))
    assert [d.alias for d in live_devices(m.mesh_id, st.live_records(), st.authority)] == ["db"]
    # the reserved name is not the device's (NXDOMAIN, or the holder's once it claims it)
    assert _aaaa(st, m, "db") == []


def test_a_later_admitted_member_cannot_take_a_devices_alias() -> None:
    """A member admitted after a device cannot take the device's alias in DNS
    (nor can a device take an earlier member's: the same rule both ways)."""
    m, sponsor, thief = Mesh(), ident(2), ident(4)
    st = m.state()
    m.admit(sponsor)
    phone = ident(9).wg_public_key
    dev = sponsor_device(sponsor, m.mesh_id, device_key=phone, alias="phone", now_ms=m.t + 10)
    srec = m.record(sponsor, alias="s", devices=[dev])
    m.admit(thief)  # after the phone
    _apply(st, m, srec, m.record(thief))
    phone_addr = _aaaa(st, m, "phone")
    assert len(phone_addr) == 1
    _apply(st, m, m.record(thief, alias="phone"))
    assert _aaaa(st, m, "phone") == phone_addr  # still the device


def test_a_device_sponsored_after_a_member_does_not_take_its_alias() -> None:
    m, sponsor, early = Mesh(), ident(2), ident(5)
    st = m.state()
    m.admit(early, may_admit=False)
    erec = m.record(early, alias="web")
    m.admit(sponsor)
    dev = sponsor_device(
        sponsor, m.mesh_id, device_key=ident(9).wg_public_key, alias="web", now_ms=m.t + 5
    )
    _apply(st, m, erec, m.record(sponsor, devices=[dev]))
    devices = live_devices(m.mesh_id, st.live_records(), st.authority)
    assert name_owners(st.live_records(), devices, st.authority)["web"] == early.wg_public_key
    assert _aaaa(st, m, "web") == [erec.address]
