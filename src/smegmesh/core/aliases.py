"""Alias ownership: which node a name in a mesh belongs to (a protocol rule).

Every node computes the same owners from the same records, whatever their
order, so that DNS answers and the ``alias_conflict`` flag agree across the
mesh. The ranking itself (reservation, then admission order, then rendezvous
score for meshes without an authority) is
:func:`smegmesh.core.authority.alias_owners`; this module applies it to
records and says who loses.
"""

from __future__ import annotations

from collections.abc import Iterable

from smegmesh.core.authority import Authority
from smegmesh.core.authority import alias_owners as _rank_owners
from smegmesh.core.devices import LiveDevice
from smegmesh.core.record import NodeRecord

__all__ = ["alias_owners", "alias_rival", "alias_user", "name_owners", "present"]


def present(records: Iterable[NodeRecord]) -> dict[bytes, NodeRecord]:
    """Records of the nodes in the mesh (departed ones dropped), by key."""
    return {r.wg_key: r for r in records if not r.left}


def alias_owners(
    records: Iterable[NodeRecord], authority: Authority | None = None
) -> dict[str, bytes]:
    """Alias -> key of the node that owns it, for every alias claimed in the mesh.

    Claims are compared case-insensitively. An alias reserved by an admin
    belongs to its holder, otherwise the claimant admitted first keeps it
    (admission times are signed by the admitting member, so no key can be
    ground to win a name, and re-signing a record does not change it).
    Departed nodes (``left``) claim nothing.
    """
    return _rank_owners(
        ((r.wg_key, r.alias, r.chain) for r in present(records).values()), authority
    )


def name_owners(
    records: Iterable[NodeRecord],
    devices: Iterable[LiveDevice],
    authority: Authority | None = None,
) -> dict[str, bytes]:
    """Alias -> key of the node *or sponsored device* that owns it (the DNS rule).

    A device is admitted like a node (its certificate, signed by its sponsor,
    dates it), so it is ranked with the nodes by :func:`alias_owners`' rule: an
    alias reserved for another node is not its to take, and a member admitted
    after it cannot take its alias (nor can it take an earlier member's).
    """
    claims = [(r.wg_key, r.alias, r.chain) for r in present(records).values()]
    claims += [(d.wg_key, d.alias, (d.cert,)) for d in devices]
    return _rank_owners(claims, authority)


def alias_rival(
    records: Iterable[NodeRecord], self_key: bytes, authority: Authority | None = None
) -> tuple[str, NodeRecord | None] | None:
    """``(alias, owner)`` if another node owns this node's alias, else None.

    ``owner`` is the owner's record, or None when the alias is reserved for a
    node that is not in the mesh.
    """
    nodes = present(records)
    me = nodes.get(self_key)
    if me is None or not me.alias:
        return None
    owner = alias_owners(nodes.values(), authority).get(me.alias.lower())
    if owner is None or owner == self_key:
        return None
    return me.alias, nodes.get(owner)


def alias_user(records: Iterable[NodeRecord], self_key: bytes, alias: str) -> NodeRecord | None:
    """Another present node already claiming ``alias`` (case-insensitively), if any."""
    for r in present(records).values():
        if r.wg_key != self_key and r.alias and r.alias.lower() == alias.lower():
            return r
    return None
