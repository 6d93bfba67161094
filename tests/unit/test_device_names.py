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
from smegmesh.core.cert import AliasReserve, Cert, Founding, Policy
from smegmesh.core.devices import live_devices, sponsor_device
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.record import NodeRecord
from smegmesh.core.state import MeshState
from smegmesh.daemon.dns_wiring import DnsOps
from smegmesh.dns.names import AAAA, NameView, resolve

NOW = 1_700_000_000_000


def ident(i: int) -> NodeIdentity:
    return NodeIdentity.from_seed(bytes([i]) * 32)


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


def test_a_device_cannot_take_an_alias_reserved_for_another_node() -> None:
    founder, member, holder = ident(1), ident(2), ident(3)
    founding = Founding.create(founder, "amber-fox-ash", now_ms=NOW, policy=Policy.PEERS)
    mid = founding.mesh_id
    st = MeshState(mid, admission=True)
    assert st.apply(founding, NOW)
    t = NOW + 1000
    chain = (Cert.create(founder, mid, subject=member.wg_public_key, may_admit=True, now_ms=t),)
    # the admin reserves "db" for the holder (a node not online right now)
    res = AliasReserve.create(founder, mid, alias="db", holder=holder.wg_public_key, now_ms=t + 1)
    assert st.apply(res, t + 1)
    device = ident(9).wg_public_key
    dev = sponsor_device(member, mid, device_key=device, alias="db", now_ms=t + 2)
    rec = NodeRecord.create(
        member, mid, version=t + 3, now_ms=t + 3, chain=chain, alias="m", devices=[dev]
    )
    changed, errors = st.apply_many([rec], t + 3)
    assert member.wg_public_key in changed and not errors, errors
    assert [d.alias for d in live_devices(mid, st.live_records(), st.authority)] == ["db"]

    view = _names(st, mid)
    ans = resolve(view, f"db.{mid}.smeg.", AAAA)
    got = [r.data for r in ans.answer]
    # Expected: the reserved name is not the device's (NXDOMAIN, or the holder's once it claims it).
    assert got == [], f"db.{mid}.smeg. -> {got} (the hostile member's device)"


def test_a_later_admitted_member_cannot_take_a_devices_alias() -> None:
    """A member admitted after a device cannot take the device's alias in DNS
    (nor can a device take an earlier member's: the same rule both ways)."""
    founder, sponsor, thief = ident(1), ident(2), ident(4)
    founding = Founding.create(founder, "amber-fox-ash", now_ms=NOW, policy=Policy.PEERS)
    mid = founding.mesh_id
    st = MeshState(mid, admission=True)
    assert st.apply(founding, NOW)
    t = NOW + 1000
    s_chain = (Cert.create(founder, mid, subject=sponsor.wg_public_key, may_admit=True, now_ms=t),)
    phone = ident(9).wg_public_key
    dev = sponsor_device(sponsor, mid, device_key=phone, alias="phone", now_ms=t + 10)
    srec = NodeRecord.create(
        sponsor, mid, version=t + 11, now_ms=t + 11, chain=s_chain, alias="s", devices=[dev]
    )
    # the thief is admitted long after the phone
    t2 = t + 60_000
    th_chain = (Cert.create(founder, mid, subject=thief.wg_public_key, may_admit=True, now_ms=t2),)
    trec = NodeRecord.create(thief, mid, version=t2 + 1, now_ms=t2 + 1, chain=th_chain)
    _changed, errors = st.apply_many([srec, trec], t2 + 1)
    assert not errors, errors
    phone_addr = resolve(_names(st, mid), f"phone.{mid}.smeg.", AAAA).answer[0].data

    trec2 = NodeRecord.create(
        thief, mid, version=t2 + 2, now_ms=t2 + 2, chain=th_chain, alias="phone"
    )
    _changed, errors = st.apply_many([trec2], t2 + 2)
    assert not errors, errors
    got = [r.data for r in resolve(_names(st, mid), f"phone.{mid}.smeg.", AAAA).answer]
    assert got == [phone_addr], f"phone.{mid}.smeg. -> {got}, was {phone_addr} (the device)"


def test_a_device_sponsored_after_a_member_does_not_take_its_alias() -> None:
    founder, sponsor, early = ident(1), ident(2), ident(5)
    founding = Founding.create(founder, "amber-fox-ash", now_ms=NOW, policy=Policy.PEERS)
    mid = founding.mesh_id
    st = MeshState(mid, admission=True)
    assert st.apply(founding, NOW)
    t = NOW + 1000
    e_chain = (Cert.create(founder, mid, subject=early.wg_public_key, may_admit=False, now_ms=t),)
    erec = NodeRecord.create(early, mid, version=t + 1, now_ms=t + 1, chain=e_chain, alias="web")
    s_chain = (Cert.create(founder, mid, subject=sponsor.wg_public_key, may_admit=True, now_ms=t),)
    dev = sponsor_device(sponsor, mid, device_key=ident(9).wg_public_key, alias="web", now_ms=t + 5)
    srec = NodeRecord.create(
        sponsor, mid, version=t + 6, now_ms=t + 6, chain=s_chain, devices=[dev]
    )
    _changed, errors = st.apply_many([erec, srec], t + 6)
    assert not errors, errors
    devices = live_devices(mid, st.live_records(), st.authority)
    owners = name_owners(st.live_records(), devices, st.authority)
    assert owners["web"] == early.wg_public_key
    got = [r.data for r in resolve(_names(st, mid), f"web.{mid}.smeg.", AAAA).answer]
    assert got == [erec.address]
