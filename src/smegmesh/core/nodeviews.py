"""The engine's O(N) views of its mesh state, kept up to date incrementally. Pure.

A change of k records costs O(k log N) (a bisection and a memmove per
changed key), not a rebuild: at 10,000 nodes a rebuild is ~0.1 s and every
state change would pay it. That holds for a change of membership too (a
peer joins, leaves or is pruned): the reachable list is edited by bisection
(it stays sorted), and the clients assigned to us are recomputed from the
live clients alone (none in a mesh of peers). At 3,000 members a
membership change cost ~3 ms of rebuilds a node before; a node of a
3,000-member swarm process pays it once per member. ``reach_version`` (the
state version of the reachable list's last change) tells what is derived
from that list when it changed: the failure detector (which looks members
up in the list itself) and a client's rendezvous order of the peers (kept
from the state's change log, ``MeshState.changed_since``, not rebuilt).

The lists and dicts are edited in place while the views are the node's own
(``owned``); views shared between nodes (:func:`share_views`) or handed out
(``MeshNode.live_records`` and the like) are copied once at their next
update, so a caller's list never changes under it. (Copying them on every
change cost a push of a record 240 µs and 156 KB more at 3,000 members
than at 300: bench/engine_cost_bench.py.)
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, fields, replace

from smegmesh.core.desired import assigned_peer
from smegmesh.core.record import NodeRecord, Role
from smegmesh.core.state import MeshState

__all__ = ["Views", "is_pruned", "is_pruned_member", "share_views", "update_pays", "views_of"]


@dataclass(slots=True)
class Views:
    """What one node (``me``) derives from its state at ``version``.

    Treat as read-only: the next update may edit ``live``, ``peers``,
    ``reachable`` and ``pruned`` in place while ``owned`` (call :meth:`export`
    before handing them out). ``my_clients`` and ``clients`` are never edited
    in place.
    """

    state: MeshState
    version: int
    live: list[NodeRecord]
    peers: dict[bytes, NodeRecord]
    reachable: list[bytes]  # live peers with a control endpoint, but me; sorted
    my_clients: list[bytes]  # clients assigned to me
    #: pruned (not departed) members we could try to reach again, in the order
    #: they were pruned (a dict: O(1) membership)
    pruned: dict[bytes, None]
    clients: list[bytes]  # live clients, sorted
    #: the state version at which ``reachable`` last changed (it holds since)
    reach_version: int = 0
    #: the lists are this node's alone and nobody else holds them: edit in place
    owned: bool = field(default=False, compare=False)

    def export(self) -> Views:
        """These views, no longer edited in place (a caller keeps their lists)."""
        self.owned = False
        return self


def _record_key(r: NodeRecord) -> bytes:
    return r.wg_key


def is_pruned(st: MeshState, key: bytes) -> bool:
    """``key`` has a record, has not left, and is not live: pruned."""
    r = st.record(key)
    return r is not None and not r.left and not st.is_live(key)


def is_pruned_member(st: MeshState, me: bytes, key: bytes) -> bool:
    """A pruned (not departed) member we could try to reach again."""
    r = st.record(key)
    return key != me and r is not None and r.control_endpoint is not None and is_pruned(st, key)


def _reachable_of(peers: dict[bytes, NodeRecord], me: bytes) -> list[bytes]:
    return sorted(k for k, r in peers.items() if k != me and r.control_endpoint is not None)


def _clients_of(
    clients: list[bytes], st: MeshState, peers: dict[bytes, NodeRecord], me: bytes
) -> list[bytes]:
    out = []
    for k in clients:
        r = st.live_record(k)
        if r is not None and assigned_peer(r, peers) == me:
            out.append(k)
    return out


def _edit_sorted(keys: list[bytes], key: bytes, present: bool) -> None:
    """Insert (``present``) or remove ``key`` in the sorted list ``keys``, O(log N) + memmove."""
    i = bisect.bisect_left(keys, key)
    there = i < len(keys) and keys[i] == key
    if present and not there:
        keys.insert(i, key)
    elif not present and there:
        del keys[i]


def update_pays(changed: int, size: int) -> bool:
    """Whether ``changed`` keys are fewer to apply one by one than a rebuild of ``size``."""
    return changed * 8 <= max(64, size)


def views_of(cached: Views | None, st: MeshState, me: bytes) -> Views:
    """The views of ``st`` for ``me``: ``cached`` itself, updated, or rebuilt."""
    v = cached
    if v is not None and v.state is st:
        if v.version == st.version:
            return v
        keys = st.changed_since(v.version)
        if keys is not None and update_pays(len(keys), len(v.live)):
            return _update_views(v, st, me, set(keys))
    live = st.live_records()
    peers = {r.wg_key: r for r in live if r.role == Role.PEER}
    clients = [r.wg_key for r in live if r.role == Role.CLIENT]
    return Views(
        st,
        st.version,
        live,
        peers,
        _reachable_of(peers, me),
        _clients_of(clients, st, peers, me),
        dict.fromkeys(k for k in (r.wg_key for r in st.records()) if is_pruned_member(st, me, k)),
        clients,
        st.version,
        owned=True,
    )


def _update_views(v: Views, st: MeshState, me: bytes, keys: set[bytes]) -> Views:
    if v.owned:  # ours alone: edit in place (v is stale from here on)
        live, peers, pruned, reach = v.live, v.peers, v.pruned, v.reachable
        v.owned = False
    else:  # shared (share_views) or handed out: copy once, then ours
        live, peers, pruned = list(v.live), dict(v.peers), dict(v.pruned)
        reach = list(v.reachable)
    reach_version = v.reach_version
    clients: list[bytes] | None = None  # a copy of v.clients once a client changes
    assignees = False  # the set of live peers (clients are assigned among them) changed
    for k in sorted(keys):
        i = bisect.bisect_left(live, k, key=_record_key)
        old = live[i] if i < len(live) and live[i].wg_key == k else None
        if old is not None:
            del live[i]
        new = st.live_record(k)
        if new is not None:
            live.insert(i, new)
        old_peer = peers.pop(k, None)
        if new is not None and new.role == Role.PEER:
            peers[k] = new
        was = old_peer is not None and old_peer.control_endpoint is not None
        now = new is not None and new.role == Role.PEER and new.control_endpoint is not None
        assignees |= (old_peer is None) != (k not in peers)
        if was != now and k != me:
            _edit_sorted(reach, k, now)
            reach_version = st.version
        if any(r is not None and r.role == Role.CLIENT for r in (old, new)):
            if clients is None:
                clients = list(v.clients)
            _edit_sorted(clients, k, new is not None and new.role == Role.CLIENT)
        if is_pruned_member(st, me, k):
            pruned.setdefault(k, None)
        else:
            pruned.pop(k, None)
    cl = v.clients if clients is None else clients
    redo = assignees or clients is not None
    mine = _clients_of(cl, st, peers, me) if redo else v.my_clients
    return Views(st, st.version, live, peers, reach, mine, pruned, cl, reach_version, owned=True)


def share_views(ref: Views, st: MeshState, me: bytes) -> Views | None:
    """``ref``'s views for another node ``me`` whose state ``st`` equals ``ref.state``.

    The live list and the peers dict are shared (O(1) memory per node); the
    reachable list (which excludes the node itself) is per node. None when
    that shortcut does not hold (``ref`` has clients or pruned members, or
    the views grew a field this function does not know).
    """
    names = [f.name for f in fields(ref)]
    known = [
        "state",
        "version",
        "live",
        "peers",
        "reachable",
        "my_clients",
        "pruned",
        "clients",
        "reach_version",
        "owned",
    ]
    if names != known:
        return None
    if ref.my_clients or ref.pruned or ref.clients:
        return None
    # sorted, as every reachable list (the updates bisect it; the peers dict
    # is in key order only until its first update)
    ref.export()  # its lists are now shared: neither node edits them in place
    return replace(
        ref,
        state=st,
        version=st.version,
        reachable=_reachable_of(ref.peers, me),
        reach_version=st.version,
        owned=False,
    )
