"""Record decoding: node records and prunes from their wire form.

The inverse of :meth:`NodeRecord.to_obj <smegmesh.core.record_model.NodeRecord.to_obj>`
and :meth:`Prune.to_obj`: shapes and types are checked here, the field checks
of :mod:`smegmesh.core.record_model` run on the result; the signature is not
verified. The public import path is :mod:`smegmesh.core.record`.
"""

from __future__ import annotations

from typing import Any

from smegmesh.core.cert import MAX_CHAIN, Cert, CertError, Founding
from smegmesh.core.certwire import auth_from_obj
from smegmesh.core.record_fields import (
    EXT_DEVICES,
    EXT_NAT,
    MAX_DEVICES,
    MAX_LOCAL_ENDPOINTS,
    MAX_PROOFS,
    Admission,
    InviteGrant,
    MembershipProof,
    Role,
    RouteAdv,
    SponsoredDevice,
    _fail,
)
from smegmesh.core.record_model import NodeRecord, Prune, check_prune_fields, check_record_fields

__all__ = ["prune_from_obj", "record_from_obj"]


def _list(v: object, name: str) -> list[Any]:
    if type(v) is not list:
        raise _fail(name, "must be an array")
    return v


def record_from_obj(obj: object) -> NodeRecord:
    """Build a record from its wire form (:meth:`NodeRecord.to_obj`).

    Checks shapes and types only (raises :class:`RecordError`); call
    :func:`validate_record` (or let :class:`~smegmesh.core.state.MeshState` do
    it) before trusting the content.
    """
    o = _list(obj, "record")
    if len(o) not in (21, 22):
        raise _fail("record", "must have 21 fields (22 with extensions)")
    devices, nat_endpoint, local = _extensions_from_obj(o)
    try:
        role = Role(o[5])
    except (ValueError, TypeError):
        raise _fail("role", "must be 'peer' or 'client'") from None
    services = _services_from_obj(o[12])
    routes = _routes_from_obj(o[13])
    invites = _invites_from_obj(o[15])
    admitted = _admitted_from_obj(o[16])
    rec = NodeRecord(
        mesh_id=o[0],
        wg_key=o[1],
        sign_key=o[2],
        version=o[3],
        timestamp_ms=o[4],
        role=role,
        wg_endpoint=o[6],
        control_endpoint=o[7],
        tls_fp=o[8],
        address=o[9],
        alias=o[10],
        description=o[11],
        services=tuple(services),
        routes=tuple(routes),
        assigned_peer=o[14],
        invites=tuple(invites),
        admitted=tuple(admitted),
        left=o[17],
        chain=_chain_from_obj(o[18], "chain"),
        proofs=tuple(_proof_from_obj(p) for p in _list(o[19], "proofs")[: MAX_PROOFS + 1]),
        signature=o[20],
        devices=devices,
        nat_endpoint=nat_endpoint,
        local_endpoints=local,
    )
    mesh_id = rec.mesh_id
    if type(mesh_id) is not str:
        raise _fail("mesh_id", "must be a string")
    check_record_fields(rec, mesh_id)
    return rec


def _extensions_from_obj(
    o: list[Any],
) -> tuple[tuple[SponsoredDevice, ...], Any, tuple[Any, ...]]:
    """The optional extensions (field 22): devices, NAT endpoint, local endpoints."""
    devices: tuple[SponsoredDevice, ...] = ()
    nat_endpoint: Any = None
    local: tuple[Any, ...] = ()
    if len(o) == 22:
        ext = _list(o[21], "extensions")
        if not ext or len(ext) > 2:
            raise _fail("extensions", "must hold 1 or 2 [tag, value] entries")
        last = 0
        for entry in ext:
            entry = _list(entry, "extensions")
            if len(entry) != 2 or type(entry[0]) is not int or not last < entry[0] <= EXT_NAT:
                raise _fail("extensions", "entries must be [tag, value] with known tags in order")
            last = entry[0]
            if entry[0] == EXT_DEVICES:
                devices = _devices_from_obj(entry[1])
                if not devices:
                    raise _fail("devices", "an empty list is left out of the record")
            else:
                nat = _list(entry[1], "nat")
                if len(nat) != 2:
                    raise _fail("nat", "must be [nat_endpoint, local_endpoints]")
                nat_endpoint = nat[0]
                local = tuple(_list(nat[1], "local_endpoints")[: MAX_LOCAL_ENDPOINTS + 1])
    return devices, nat_endpoint, local


def _services_from_obj(obj: object) -> list[tuple[Any, Any]]:
    services = []
    for s in _list(obj, "services"):
        s = _list(s, "services")
        if len(s) != 2:
            raise _fail("services", "entries must be [key, value]")
        services.append((s[0], s[1]))
    return services


def _routes_from_obj(obj: object) -> list[RouteAdv]:
    routes = []
    for r in _list(obj, "routes"):
        r = _list(r, "routes")
        if len(r) != 2:
            raise _fail("routes", "entries must be [prefix, path]")
        routes.append(RouteAdv(r[0], tuple(_list(r[1], "routes.path"))))
    return routes


def _invites_from_obj(obj: object) -> list[InviteGrant]:
    invites = []
    for g in _list(obj, "invites"):
        g = _list(g, "invites")
        if len(g) != 4:
            raise _fail("invites", "entries must be [hash, expiry, uses, strict]")
        invites.append(InviteGrant(g[0], g[1], g[2], g[3]))
    return invites


def _admitted_from_obj(obj: object) -> list[Admission]:
    admitted = []
    for a in _list(obj, "admitted"):
        a = _list(a, "admitted")
        if len(a) != 2:
            raise _fail("admitted", "entries must be [hash, joiner]")
        admitted.append(Admission(a[0], a[1]))
    return admitted


def _cert_from_obj(obj: object, name: str) -> Cert:
    try:
        c = auth_from_obj(obj)
    except CertError as e:
        raise _fail(name, str(e)) from None
    if type(c) is not Cert:
        raise _fail(name, "entries must be admission certificates")
    return c


def _chain_from_obj(obj: object, name: str) -> tuple[Cert, ...]:
    raw = _list(obj, name)
    if len(raw) > MAX_CHAIN:
        raise _fail(name, f"at most {MAX_CHAIN} admission certificates")
    return tuple(_cert_from_obj(c, name) for c in raw)


def _devices_from_obj(obj: object) -> tuple[SponsoredDevice, ...]:
    raw = _list(obj, "devices")
    if len(raw) > MAX_DEVICES:
        raise _fail("devices", f"at most {MAX_DEVICES} sponsored devices")
    out = []
    for d in raw:
        d = _list(d, "devices")
        if len(d) != 3:
            raise _fail("devices", "entries must be [key, alias, cert]")
        out.append(SponsoredDevice(d[0], d[1], _cert_from_obj(d[2], "devices.cert")))
    return tuple(out)


def _proof_from_obj(obj: object) -> MembershipProof:
    o = _list(obj, "proofs")
    if len(o) != 2:
        raise _fail("proofs", "entries must be [founding, chain]")
    try:
        f = auth_from_obj(o[0])
    except CertError as e:
        raise _fail("proofs", str(e)) from None
    if type(f) is not Founding:
        raise _fail("proofs", "must start with a founding record")
    return MembershipProof(f, _chain_from_obj(o[1], "proofs.chain"))


def prune_from_obj(obj: object) -> Prune:
    """Build a prune from its wire form (shapes and types checked, not the signature)."""
    o = _list(obj, "prune")
    if len(o) != 9:
        raise _fail("prune", "must have 9 fields")
    o = list(o)
    o[6] = None if o[6] is None else record_from_obj(o[6])
    o[7] = _chain_from_obj(o[7], "by_chain")
    p = Prune(*o)
    if type(p.mesh_id) is not str:
        raise _fail("mesh_id", "must be a string")
    check_prune_fields(p, p.mesh_id)
    return p
