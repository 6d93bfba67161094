"""The detectors that turn the daemon's state changes into events: members,
routes, WireGuard peers, handshakes (``daemon/events.py`` describes them).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smegmesh.core.record import NodeRecord
    from smegmesh.core.routing import RouteEntry, RoutingResult
    from smegmesh.core.state import MeshState
    from smegmesh.core.wgconfig import InterfaceStatus
from smegmesh.daemon.event_bus import EventBus
from smegmesh.daemon.event_text import key_text

#: A handshake older than this is "down" (WireGuard's REJECT_AFTER_TIME).
HANDSHAKE_FRESH_S = 180.0
#: More WireGuard peers than this added (removed) at once make one summary event.
WG_PEER_EVENTS_MAX = 32
#: More route changes than this in one mesh at once make one summary event: a
#: member can invent 512 destinations and withdraw them with each version of its
#: record, and one event (one INFO line) per destination let it flood the log
#: and turn over the event buffer at will (docs/SECURITY.md).
ROUTE_EVENTS_MAX = 32


#: Member states other than "live", tested in this order (first match wins);
#: each is a predicate over (state, record). A new state is one line here (and
#: its event type in :data:`GONE_EVENTS`).
MEMBER_STATES: tuple[tuple[str, Callable[[MeshState, NodeRecord], bool]], ...] = (
    ("left", lambda st, rec: rec.left),
    ("pruned", lambda st, rec: not st.is_live(rec.wg_key)),
)
#: The event when a live member enters a state (leaving "live").
GONE_EVENTS: dict[str, str] = {
    "left": "member.left",
    "pruned": "member.pruned",
    "evicted": "member.evicted",
}


@dataclass(frozen=True, slots=True)
class MemberView:
    """What the events compare of one node in one mesh."""

    state: str  # "live" or a name of MEMBER_STATES
    alias: str
    address: str
    role: str
    description: str
    services: tuple[tuple[str, str], ...]
    assigned_peer: bytes | None


def member_view(state: MeshState, key: bytes) -> MemberView | None:
    """The view of ``key`` in ``state`` (None: nothing held for it)."""
    rec = state.get(key)
    if rec is None:
        if state.admission and state.authority.is_revoked(key):
            # an eviction purges the record: the view that remains is "evicted"
            return MemberView("evicted", "", "", "", "", (), None)
        return None
    name = "live"
    for st_name, test in MEMBER_STATES:
        if test(state, rec):
            name = st_name
            break
    return MemberView(
        state=name,
        alias=rec.alias,
        address=rec.address,
        role=str(rec.role.value),
        description=rec.description,
        services=rec.services,
        assigned_peer=rec.assigned_peer,
    )


def diff_member(old: MemberView | None, new: MemberView | None) -> list[tuple[str, dict[str, Any]]]:
    """The events (type, detail) for one node going from ``old`` to ``new``. Pure."""
    was_live = old is not None and old.state == "live"
    is_live = new is not None and new.state == "live"
    if not was_live and not is_live:
        return []
    if is_live and not was_live:
        assert new is not None
        base = {"address": new.address, "role": new.role}
        if old is None:
            return [("member.joined", base)]
        return [("member.returned", {**base, "was": old.state})]
    assert old is not None
    if not is_live:
        if new is None:  # collected: it was already gone (no event)
            return []
        kind = GONE_EVENTS.get(new.state, f"member.{new.state}")
        return [(kind, {"address": old.address, "role": old.role})]
    assert new is not None
    out: list[tuple[str, dict[str, Any]]] = []
    changes: dict[str, Any] = {}
    if old.alias != new.alias:
        changes["alias"] = {"old": old.alias or None, "new": new.alias or None}
    if old.description != new.description:
        changes["description"] = {"old": old.description, "new": new.description}
    if old.services != new.services:
        changes["services"] = {"old": dict(old.services), "new": dict(new.services)}
    if old.role != new.role:
        changes["role"] = {"old": old.role, "new": new.role}
    if changes:
        out.append(("member.changed", {"address": new.address, **changes}))
    if new.role == "client" and old.assigned_peer != new.assigned_peer:
        out.append(
            (
                "client.reassigned",
                {
                    "address": new.address,
                    "old": key_text(old.assigned_peer) if old.assigned_peer else None,
                    "new": key_text(new.assigned_peer) if new.assigned_peer else None,
                },
            )
        )
    return out


class MemberEvents:
    """Per mesh, the last view of every node; :meth:`changed` publishes the differences.

    A mesh is watched from :meth:`track` (its current members taken as known,
    silently) until :meth:`forget`; changes of an untracked mesh (a join in
    progress) are ignored. Views of departed nodes are kept until the state
    collects them (:meth:`sweep`).
    """

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self._views: dict[str, dict[bytes, MemberView]] = {}
        self._gone: dict[str, set[bytes]] = {}  # keys whose view is not live

    def track(self, mesh_id: str, state: MeshState, how: str) -> None:
        views: dict[bytes, MemberView] = {}
        gone: set[bytes] = set()
        for key in state.node_keys():
            v = member_view(state, key)
            if v is not None:
                views[key] = v
                if v.state != "live":
                    gone.add(key)
        self._views[mesh_id] = views
        self._gone[mesh_id] = gone
        nodes = sum(1 for v in views.values() if v.state == "live")
        self.bus.publish("mesh.joined", mesh=mesh_id, detail={"how": how, "nodes": nodes})

    def forget(self, mesh_id: str) -> None:
        if self._views.pop(mesh_id, None) is not None:
            self._gone.pop(mesh_id, None)
            self.bus.publish("mesh.left", mesh=mesh_id)

    def changed(self, mesh_id: str, state: MeshState, keys: Iterable[bytes]) -> None:
        views = self._views.get(mesh_id)
        if views is None:
            return
        gone = self._gone[mesh_id]
        for key in keys:
            old = views.get(key)
            new = member_view(state, key)
            # a pruned node we had not seen came back (its prune is moot now,
            # and dropped, when its newer record came: see was_refuted)
            if (
                old is None
                and new is not None
                and new.state == "live"
                and (state.get_prune(key) is not None or state.was_refuted(key))
            ):
                old = MemberView("pruned", "", new.address, new.role, "", (), None)
            if new is None:
                views.pop(key, None)
                gone.discard(key)
            else:
                views[key] = new
                if new.state == "live":
                    gone.discard(key)
                else:
                    gone.add(key)
            if old == new:
                continue
            shown = new if new is not None else old
            for kind, detail in diff_member(old, new):
                self._publish_member(mesh_id, state, key, shown, kind, detail)

    def _publish_member(
        self,
        mesh_id: str,
        state: MeshState,
        key: bytes,
        view: MemberView | None,
        kind: str,
        detail: dict[str, Any],
    ) -> None:
        if kind == "client.reassigned":
            for side in ("old", "new"):
                k = detail.get(side)
                if k:
                    v = self._views[mesh_id].get(base64.b64decode(k))
                    detail[f"{side}_alias"] = v.alias if v and v.alias else None
        self.bus.publish(
            kind, mesh=mesh_id, node=key, alias=view.alias if view else None, detail=detail
        )

    def sweep(self, mesh_id: str, state: MeshState) -> None:
        """Drop views of departed nodes the state no longer holds (after its gc)."""
        views, gone = self._views.get(mesh_id), self._gone.get(mesh_id)
        if views is None or gone is None:
            return
        for key in [k for k in gone if k not in state]:
            gone.discard(key)
            views.pop(key, None)

    def alias_of(self, mesh_id: str, key: bytes) -> str | None:
        v = self._views.get(mesh_id, {}).get(key)
        return v.alias or None if v else None

    def address_of(self, mesh_id: str, key: bytes) -> str | None:
        v = self._views.get(mesh_id, {}).get(key)
        return v.address if v else None


# --------------------------------------------------------------------------- routes


def _route_json(e: RouteEntry, alias: Callable[[str, bytes], str | None]) -> dict[str, Any]:
    return {
        "mesh": e.mesh_id,
        "gateway": key_text(e.gateway),
        "gateway_alias": alias(e.mesh_id, e.gateway),
        "path": list(e.path),
    }


DEFAULT_ROUTE = "::/0"


def route_events(
    old: RoutingResult | None,
    new: RoutingResult | None,
    alias: Callable[[str, bytes], str | None] = lambda m, k: None,
) -> list[tuple[str, str | None, bytes | None, dict[str, Any]]]:
    """(type, mesh, gateway, detail) per destination whose route changed. Pure.

    The default route (``::/0``) is ``exit.changed``; others ``route.changed``.
    ``old`` None is the first computation: nothing to compare, no events. More
    than :data:`ROUTE_EVENTS_MAX` ``route.changed`` of one mesh are one event
    of that mesh, ``{"count": n}`` with no gateway.
    """
    if old is None:
        return []
    before = {e.destination: e for e in old.table}
    after = {e.destination: e for e in new.table} if new is not None else {}
    if before == after:
        return []
    out: list[tuple[str, str | None, bytes | None, dict[str, Any]]] = []
    for dest in sorted(before.keys() | after.keys()):
        b, a = before.get(dest), after.get(dest)
        if (
            b is not None
            and a is not None
            and (b.mesh_id, b.gateway, b.path)
            == (
                a.mesh_id,
                a.gateway,
                a.path,
            )
        ):
            continue
        kind = "exit.changed" if dest == DEFAULT_ROUTE else "route.changed"
        cur = a or b
        assert cur is not None
        out.append(
            (
                kind,
                cur.mesh_id,
                a.gateway if a is not None else None,
                {
                    "destination": dest,
                    "old": _route_json(b, alias) if b is not None else None,
                    "new": _route_json(a, alias) if a is not None else None,
                },
            )
        )
    return _summarised(out)


def _summarised(
    evs: list[tuple[str, str | None, bytes | None, dict[str, Any]]],
) -> list[tuple[str, str | None, bytes | None, dict[str, Any]]]:
    """``evs`` with the ``route.changed`` of a mesh that has more than
    :data:`ROUTE_EVENTS_MAX` replaced by one summary (in the place of the first)."""
    counts: dict[str | None, int] = {}
    for kind, mesh, _, _ in evs:
        if kind == "route.changed":
            counts[mesh] = counts.get(mesh, 0) + 1
    if all(n <= ROUTE_EVENTS_MAX for n in counts.values()):
        return evs
    out: list[tuple[str, str | None, bytes | None, dict[str, Any]]] = []
    summarised: set[str | None] = set()
    for ev in evs:
        kind, mesh = ev[0], ev[1]
        n = counts.get(mesh, 0) if kind == "route.changed" else 0
        if n <= ROUTE_EVENTS_MAX:
            out.append(ev)
        elif mesh not in summarised:  # the first of this mesh: its summary, not the rest
            summarised.add(mesh)
            out.append((kind, mesh, None, {"count": n}))
    return out


# --------------------------------------------------------------------------- WireGuard


def wg_peer_events(wg_ops: Iterable[Any]) -> tuple[list[bytes], list[bytes]]:
    """The public keys of peers added and removed by reconciler operations. Pure."""
    from smegmesh.core.wgdiff import AddPeer, RemovePeer

    added: list[bytes] = []
    removed: list[bytes] = []
    for op in wg_ops:
        if isinstance(op, AddPeer):
            added.append(op.peer.public_key)
        elif isinstance(op, RemovePeer):
            removed.append(op.public_key)
    return added, removed


class HandshakeEvents:
    """Handshake up/down per peer, from WireGuard status reads (whenever one is made)."""

    def __init__(self, bus: EventBus, fresh_s: float = HANDSHAKE_FRESH_S) -> None:
        self.bus = bus
        self.fresh_s = fresh_s
        self._up: dict[str, dict[bytes, bool]] = {}

    def forget(self, mesh_id: str) -> None:
        self._up.pop(mesh_id, None)

    def status(
        self,
        mesh_id: str,
        status: InterfaceStatus,
        now: float,
        members: MemberEvents | None = None,
    ) -> None:
        """Compare a fresh read with the previous one; the first read only seeds."""
        first = mesh_id not in self._up
        prev = self._up.setdefault(mesh_id, {})
        seen: set[bytes] = set()
        for key, peer in status.peers.items():
            seen.add(key)
            hs = peer.last_handshake
            up = hs is not None and now - hs < self.fresh_s
            was = prev.get(key)
            prev[key] = up
            if first or was == up or (was is None and not up):
                continue
            self.bus.publish(
                "handshake.up" if up else "handshake.down",
                mesh=mesh_id,
                node=key,
                alias=members.alias_of(mesh_id, key) if members else None,
                detail={
                    "address": members.address_of(mesh_id, key) if members else None,
                    "last_handshake": hs,
                },
            )
        for key in [k for k in prev if k not in seen]:
            del prev[key]
