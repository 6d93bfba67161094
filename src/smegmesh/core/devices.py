"""Sponsored devices: nodes without smegd, reached through the peer that vouches for them. Pure.

A phone or a small router runs WireGuard but not smegd. A peer *sponsors* it:
it lists the device in its own signed record (:class:`SponsoredDevice`: the
device's WireGuard public key, an alias, and a :class:`~smegmesh.core.cert.Cert`
by which the sponsor admits it). The device holds no smegd identity, so it
cannot sign a record of its own; the sponsor's signature stands for it.

Rules (every member derives the same view from the same records):

* a device is live while its sponsor's record is live (not left, not pruned,
  not purged by an eviction) and lists it;
* its admission chain is the sponsor's chain followed by the device's cert:
  the sponsor must be allowed to admit under the mesh's invite policy, and an
  eviction of the device key (``smegctl evict``) or of the sponsor removes it;
* a key that is a node's own (one the mesh holds a record or prune for, live
  or not) is never a device,
  so no member can publish a device in another member's place; a key listed
  by two or more sponsors is *contested* and live for none of them. Nothing
  can order their claims: the date of a sponsor's cert is its own word (a
  member admitted before the rightful sponsor could date its cert earlier),
  and a device signs nothing. So a member turned bad can cut a device off by
  listing its public key, but never take its traffic; the daemon logs the
  sponsors (:func:`contested_devices`), and an admin evicts the one at fault;
* its overlay address is derived from its key like any node's; every member
  reaches it through its sponsor, exactly like a client through its peer.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from smegmesh.core.addressing import overlay_address
from smegmesh.core.authority import Authority
from smegmesh.core.cert import Cert
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.record import NodeRecord, Role, SponsoredDevice

__all__ = ["LiveDevice", "contested_devices", "live_devices", "sponsor_device"]


@dataclass(frozen=True, slots=True)
class LiveDevice:
    """A sponsored device as every member sees it."""

    wg_key: bytes
    alias: str
    address: str
    sponsor: bytes
    #: Its certificate, signed by the sponsor: its admission (alias ownership).
    cert: Cert

    @property
    def issued_ms(self) -> int:
        """When its sponsor admitted it."""
        return self.cert.issued_ms


def sponsor_device(
    identity: NodeIdentity,
    mesh_id: str,
    *,
    device_key: bytes,
    alias: str,
    now_ms: int,
) -> SponsoredDevice:
    """The entry a sponsor adds to its record (the device may not admit others)."""
    cert = Cert.create(identity, mesh_id, subject=device_key, may_admit=False, now_ms=now_ms)
    return SponsoredDevice(device_key, alias, cert)


def _listings(
    records: list[NodeRecord], authority: Authority | None, nodes: Collection[bytes]
) -> dict[bytes, dict[bytes, SponsoredDevice]]:
    """Device key -> {sponsor key: its entry}, for the entries that pass the rules."""
    members = {r.wg_key for r in records}.union(nodes)
    out: dict[bytes, dict[bytes, SponsoredDevice]] = {}
    for r in records:
        if r.left or r.role != Role.PEER or not r.devices:
            continue
        for d in r.devices:
            if d.wg_key in members:
                continue
            if authority is not None and authority.check_chain(d.wg_key, (*r.chain, d.cert)):
                continue
            out.setdefault(d.wg_key, {})[r.wg_key] = d
    return out


def live_devices(
    mesh_id: str,
    records: Iterable[NodeRecord],
    authority: Authority | None,
    *,
    nodes: Collection[bytes] = frozenset(),
) -> list[LiveDevice]:
    """The devices live in a mesh, from its live records (see the module rules).

    ``records``: the live records; ``authority``: the mesh's authority when it
    enforces admission (None for meshes of older versions: no chain check);
    ``nodes``: the key of every node the mesh holds a record or prune for, live
    or not (``MeshState.node_keys``). None of them is ever a device: a pruned
    member's key listed as a device took its address (derived from the key)
    and its traffic until it came back.
    """
    out = [
        LiveDevice(
            wg_key=k,
            alias=d.alias,
            address=str(overlay_address(mesh_id, k)),
            sponsor=sponsor,
            cert=d.cert,
        )
        for k, by in _listings(list(records), authority, nodes).items()
        if len(by) == 1
        for sponsor, d in by.items()
    ]
    return sorted(out, key=lambda x: x.wg_key)


def contested_devices(
    records: Iterable[NodeRecord],
    authority: Authority | None,
    *,
    nodes: Collection[bytes] = frozenset(),
) -> dict[bytes, tuple[bytes, ...]]:
    """Device keys listed by more than one sponsor -> those sponsors' keys (sorted)."""
    listed = _listings(list(records), authority, nodes)
    return {k: tuple(sorted(by)) for k, by in listed.items() if len(by) > 1}
