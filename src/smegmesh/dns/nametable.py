"""The names of a changing set of nodes, kept up to date one node at a time. Pure.

:class:`~smegmesh.dns.names.NameView` is a snapshot; building one from
scratch costs O(nodes) of Python work per change of any node (~80 ms at
3,000 members, on the daemon's event loop, for every mesh change under
churn). A :class:`NameTable` holds the same owner names and the groups that
make them, and :meth:`NameTable.sync` recomputes only the names a changed node
touches: its NODEID and alias names (both label orders, and the short ones),
its mesh's apex, its reverse name and zone, and the reverse names of the
nodes whose PTR target depends on those forward names (the others carrying
its alias in that mesh). A snapshot is then a copy of the table's dicts (C
speed). The rules are ``names``'s, name by name:

* ``LABEL.MESH.smeg.``: the nodes with NODEID ``LABEL`` in ``MESH``, else
  those with alias ``LABEL`` there; if neither, the prototype order (``MESH``
  read as a node label, ``LABEL`` as a mesh id).
* ``LABEL.smeg.``: the nodes with NODEID ``LABEL``, else those with that alias,
  else an empty name if a mesh is called ``LABEL``.
* a reverse name: the node's qualified alias name if that name answers with
  its address, else its NODEID name (several nodes on one address: all, sorted).

``tests/unit/test_dns_nametable.py`` checks every update against the
from-scratch construction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from smegmesh.dns.names import (
    ZONE,
    NodeName,
    _Entry,
    _entry,
    _label,
    _nibbles,
    address_text,
    node_id_prefix,
)

__all__ = ["NameTable"]

_Node = tuple[str, bytes]  # (mesh id lower-cased, key): one node in one mesh
_Group = dict[_Node, NodeName]
K = TypeVar("K", str, tuple[str, str])


class NameTable:
    """Owner names of a set of :class:`NodeName` entries; see the module docstring."""

    __slots__ = (
        "_by_alias",
        "_by_id",
        "_g_alias",
        "_g_id",
        "_meshes",
        "_names",
        "_nodes",
        "_ptr",
        "_zones",
    )

    def __init__(self) -> None:
        self._nodes: dict[_Node, NodeName] = {}
        self._by_id: dict[tuple[str, str], _Group] = {}  # (mesh, NODEID) -> nodes
        self._by_alias: dict[tuple[str, str], _Group] = {}  # (mesh, alias) -> nodes
        self._g_id: dict[str, _Group] = {}
        self._g_alias: dict[str, _Group] = {}
        self._meshes: dict[str, int] = {}  # mesh label -> nodes in it
        self._zones: dict[str, int] = {}  # reverse zone -> nodes in it
        self._ptr: dict[str, dict[_Node, str]] = {}  # reverse name -> node -> PTR target
        self._names: dict[str, _Entry] = {ZONE: _Entry(zone=ZONE, apex=True)}

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def nodes(self) -> tuple[NodeName, ...]:
        return tuple(self._nodes.values())

    def names(self) -> dict[str, _Entry]:
        """A copy of the owner names (for a snapshot)."""
        return dict(self._names)

    def zones(self) -> dict[str, str]:
        """The reverse zones (a copy, for a snapshot)."""
        return {z: z for z in self._zones}

    def sync(self, nodes: Iterable[NodeName]) -> int:
        """Make the table hold exactly ``nodes`` (last entry per (mesh, key) wins).

        Returns how many nodes were added, changed or removed. O(len(nodes))
        dict lookups, plus the names of those nodes.
        """
        new: dict[_Node, NodeName] = {}
        for n in nodes:
            new[(n.mesh_id.lower(), bytes(n.wg_key))] = n
        old = self._nodes
        gone = [k for k in old if k not in new]
        changed = [(k, n) for k, n in new.items() if old.get(k) != n]
        if not gone and not changed:
            return 0
        fwd: set[str] = set()
        rev: set[_Node] = set()
        for k in gone:
            self._remove(k, fwd, rev)
        for k, n in changed:
            if k in old:
                self._remove(k, fwd, rev)
            self._add(k, n, fwd, rev)
        for name in fwd:
            self._forward(name)
        for k in rev:
            self._reverse(k)
        # one order whatever the history: that of ``nodes`` (as a fresh build)
        self._nodes = new
        return len(gone) + len(changed)

    # -- groups -------------------------------------------------------------------
    def _touch(
        self, mesh: str, nid: str, alias: str | None, fwd: set[str], rev: set[_Node]
    ) -> None:
        """Names that depend on a node (mesh, nid, alias) and the PTRs that depend on them."""
        fwd.add(mesh)
        for label in (nid, alias):
            if label is None:
                continue
            fwd.update((f"{label}.{mesh}", f"{mesh}.{label}", label))
            rev.update(self._by_alias.get((mesh, label), ()))

    def _add(self, k: _Node, n: NodeName, fwd: set[str], rev: set[_Node]) -> None:
        self._nodes[k] = n
        labels = _labels(n)
        if labels is None:
            return
        mesh, nid, alias = labels
        self._meshes[mesh] = self._meshes.get(mesh, 0) + 1
        self._by_id.setdefault((mesh, nid), {})[k] = n
        self._g_id.setdefault(nid, {})[k] = n
        if alias is not None:
            self._by_alias.setdefault((mesh, alias), {})[k] = n
            self._g_alias.setdefault(alias, {})[k] = n
        zone = _nibbles(n.address)[32:]
        self._zones[zone] = self._zones.get(zone, 0) + 1
        self._touch(mesh, nid, alias, fwd, rev)
        rev.add(k)

    def _remove(self, k: _Node, fwd: set[str], rev: set[_Node]) -> None:
        n = self._nodes.pop(k)
        labels = _labels(n)
        if labels is None:
            return
        mesh, nid, alias = labels
        self._touch(mesh, nid, alias, fwd, rev)
        rev.discard(k)
        rname = _nibbles(n.address)
        ptrs = self._ptr.get(rname)
        if ptrs is not None:
            ptrs.pop(k, None)
            self._put_ptr(rname)
        zone = rname[32:]
        _dec(self._zones, zone)
        if zone not in self._zones:
            self._names.pop(zone, None)
        _dec(self._meshes, mesh)
        _drop(self._by_id, (mesh, nid), k)
        _drop(self._g_id, nid, k)
        if alias is not None:
            _drop(self._by_alias, (mesh, alias), k)
            _drop(self._g_alias, alias, k)

    # -- names --------------------------------------------------------------------
    def _forward(self, name: str) -> None:
        """Recompute owner name ``name`` (without ".smeg."): one or two labels."""
        first, dot, second = name.partition(".")
        if dot:
            group = self._by_id.get((second, first)) or self._by_alias.get((second, first))
            if not group:  # the prototype order: mesh first
                group = self._by_id.get((first, second)) or self._by_alias.get((first, second))
            ent = _entry(list(group.values()), True) if group else None
        else:
            group = self._g_id.get(first) or self._g_alias.get(first)
            if group:
                ent = _entry(list(group.values()), False)
            else:
                ent = _Entry(zone=ZONE) if first in self._meshes else None
        full = name + "." + ZONE
        if ent is None:
            self._names.pop(full, None)
        else:
            self._names[full] = ent

    def _reverse(self, k: _Node) -> None:
        """Recompute the PTR target of node ``k`` (after the forward names)."""
        n = self._nodes[k]
        labels = _labels(n)
        if labels is None:
            return
        mesh, nid, alias = labels
        target = f"{nid}.{mesh}.{ZONE}"
        if alias is not None:
            fwd = self._names.get(f"{alias}.{mesh}.{ZONE}")
            if fwd is not None and fwd.aaaa and address_text(n.address) in fwd.aaaa:
                target = f"{alias}.{mesh}.{ZONE}"
        rname = _nibbles(n.address)
        self._ptr.setdefault(rname, {})[k] = target
        self._put_ptr(rname)
        zone = rname[32:]
        self._names[zone] = _Entry(zone=zone, apex=True)

    def _put_ptr(self, rname: str) -> None:
        ptrs = self._ptr.get(rname)
        if not ptrs:
            self._ptr.pop(rname, None)
            self._names.pop(rname, None)
            return
        self._names[rname] = _Entry(zone=rname[32:], ptr=tuple(sorted(set(ptrs.values()))))


def _labels(n: NodeName) -> tuple[str, str, str | None] | None:
    """(mesh label, NODEID, alias label or None); None: a mesh id that is no label."""
    mesh = _label(n.mesh_id)
    if mesh is None:
        return None
    return mesh, node_id_prefix(bytes(n.wg_key)), (_label(n.alias) if n.alias else None)


def _dec(counts: dict[str, int], k: str) -> None:
    c = counts[k] - 1
    if c:
        counts[k] = c
    else:
        del counts[k]


def _drop(groups: dict[K, _Group], k: K, node: _Node) -> None:
    g = groups.get(k)
    if g is not None:
        g.pop(node, None)
        if not g:
            del groups[k]
