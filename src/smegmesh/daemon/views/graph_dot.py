"""Meshes drawn as Graphviz DOT (``get-graph``): the clusters, nodes and edges.

Where things go is planned in :mod:`.graph_plan`; turning the DOT source into
SVG or PNG is :mod:`.graph_render`.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Sequence

from smegmesh.core.addressing import mesh_prefix
from smegmesh.core.identity import key_to_text
from smegmesh.core.record import NodeRecord, Role
from smegmesh.daemon.textsafe import control_chars
from smegmesh.daemon.views.common import RouteUse, _first_paths, _present, _short
from smegmesh.daemon.views.graph_plan import (
    _CLIENT_COLS,
    _MESH_ROW_COLS,
    GraphMesh,
    _Plan,
    _plan,
    bridges_of,
)

__all__ = ["graph_dot"]

# Palette (colour-blind friendly enough, and legible in greyscale by style).
_PEER_FILL = "#dbeafe"
_PEER_LINE = "#1e40af"
_CLIENT_FILL = "#dcfce7"
_CLIENT_LINE = "#166534"
_BRIDGE_FILL = "#fde68a"
_BRIDGE_LINE = "#92400e"
_SUSPECT_FILL = "#fee2e2"
_SUSPECT_LINE = "#b91c1c"
_ROUTE = "#dc2626"
_REMOTE_LINE = "#6b7280"


#: Control characters but the newline (which :func:`_q` writes as DOT's ``\n``), each
#: made a space: a NUL ends Graphviz's input ("syntax error"), and escape sequences
#: would reach a terminal the DOT is printed on.
_CONTROL = dict.fromkeys(control_chars(but="\n"), " ")


def _q(s: str) -> str:
    """A DOT double-quoted string (control characters made spaces)."""
    s = s.translate(_CONTROL)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**kv: str | int | float | None) -> str:
    parts = []
    for k, v in kv.items():
        if v is None:
            continue
        if isinstance(v, str) and v.startswith("<") and v.endswith(">"):
            parts.append(f"{k}={v}")  # HTML-like label
        elif isinstance(v, str):
            parts.append(f"{k}={_q(v)}")
        else:
            parts.append(f"{k}={v}")
    return "[" + ", ".join(parts) + "]" if parts else ""


def _small(s: str) -> str:
    return f'<font point-size="8">{html.escape(s)}</font>'


class _DotWriter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def add(self, line: str) -> None:
        self.lines.append("  " * self.depth + line)

    def open(self, line: str) -> None:
        self.add(line + " {")
        self.depth += 1

    def close(self) -> None:
        self.depth -= 1
        self.add("}")


_Attr = str | int | float | None


class _Graph:
    """The state of one drawing: who is where, the edges so far (drawn last, deduplicated)."""

    def __init__(self, meshes: Sequence[GraphMesh], self_key: bytes) -> None:
        self.meshes = meshes
        self.self_key = self_key
        self.w = _DotWriter()
        self.mesh_ids = [m.mesh_id for m in meshes]
        self.present = [_present(m.records) for m in meshes]
        self.membership: dict[bytes, list[int]] = {}
        for i, nodes in enumerate(self.present):
            for k in nodes:
                self.membership.setdefault(k, []).append(i)
        self.shared = {k for k, idx in self.membership.items() if len(idx) > 1}
        self.bridges = bridges_of(self.present, self.membership)  # of those, the peers in 2+
        self.ids = {k: f"n{i}" for i, k in enumerate(sorted(self.membership))}
        self.suspect_any = {k for m in meshes for k in m.suspects if k != self_key}
        used = [(mi, RouteUse(*r)) for mi, m in enumerate(meshes) for r in m.routes]
        self.used = [(mi, r) for mi, r in used if r.mesh_id == meshes[mi].mesh_id]
        self.exits: dict[bytes, list[str]] = {}
        for _, r in self.used:
            if r.destination not in self.exits.setdefault(r.gateway, []):
                self.exits[r.gateway].append(r.destination)
        self.edges: list[str] = []
        self.edge_seen: set[tuple[str, str]] = set()
        self.hubs: dict[str, str] = {}
        self.plans: list[_Plan] = []
        self.mesh_row: list[int] = []
        self.shared_below: dict[bytes, set[int]] = {}

    def edge(self, a: str, b: str, **kv: _Attr) -> None:
        if (a, b) in self.edge_seen:
            return
        self.edge_seen.add((a, b))
        self.edges.append(f"{a} -> {b} {_attrs(**kv)};")

    # -- header and nodes

    def header(self) -> None:
        meshes = self.meshes
        w = self.w
        w.open("digraph smegmesh")
        total = len(self.membership)
        title = (
            f"smegmesh: {len(meshes)} mesh{'es' if len(meshes) != 1 else ''}, {total} nodes"
            f"{f', {len(self.bridges)} bridges' if len(meshes) > 1 else ''}"
        )
        legend = (
            "boxes: peers · ellipses: clients (under their peer) · amber: bridges · "
            "dashed pink: suspect · red: routes this node uses · double border: this node"
        )
        w.add(
            "graph "
            + _attrs(
                rankdir="TB",
                newrank="true",
                compound="true",
                nodesep=0.2,
                ranksep=0.35,
                fontname="Helvetica",
                fontsize=12,
                labelloc="t",
                label=f"<<b>{html.escape(title)}</b><br/>{_small(legend)}>",
                tooltip=title,
            )
            + ";"
        )
        w.add('node [fontname="Helvetica", fontsize=10, margin="0.08,0.03"];')
        w.add('edge [arrowsize=0.6, color="#6b7280"];')

    def _label(self, k: bytes, rec: NodeRecord, addrs: list[str]) -> str:
        name = html.escape(rec.alias or _short(k))
        lines = [f"<b>{name}</b>"]
        lines += [_small(a) for a in addrs]
        tags = []
        if k == self.self_key:
            tags.append("this node")
        if k in self.shared:
            tags.append("bridge" if k in self.bridges else f"in {len(self.membership[k])} meshes")
        if k in self.suspect_any:
            tags.append("suspect")
        if tags:
            lines.append(f'<font point-size="8"><i>{html.escape(", ".join(tags))}</i></font>')
        if k in self.exits:
            dests = sorted(self.exits[k])
            shown = dests[:3] + ([f"+{len(dests) - 3} more"] if len(dests) > 3 else [])
            lines += [
                f'<font point-size="8" color="{_ROUTE}">exit for {html.escape(d)}</font>'
                for d in shown
            ]
        return "<" + "<br/>".join(lines) + ">"

    def node_attrs(self, k: bytes, rec: NodeRecord, addrs: list[str], role: Role) -> str:
        bridge = k in self.bridges
        suspect = k in self.suspect_any
        if suspect:
            fill, line = _SUSPECT_FILL, _SUSPECT_LINE
        elif bridge:
            fill, line = _BRIDGE_FILL, _BRIDGE_LINE
        elif role == Role.PEER:
            fill, line = _PEER_FILL, _PEER_LINE
        else:
            fill, line = _CLIENT_FILL, _CLIENT_LINE
        style = ["filled"]
        if role == Role.PEER or bridge:
            style.append("rounded")
        if suspect:
            style.append("dashed")
        pen: float = 1.0
        if k in self.exits:
            line, pen = _ROUTE, 2.0
        if k == self.self_key:
            pen = 2.0
        tip = f"{key_to_text(k)} ({role.value}{', suspect' if suspect else ''})"
        if rec.description:
            tip += f"\n{rec.description}"
        return _attrs(
            id=self.ids[k],
            shape="box" if role == Role.PEER or bridge else "ellipse",
            style=",".join(style),
            fillcolor=fill,
            color=line,
            penwidth=pen,
            peripheries=2 if k == self.self_key else None,
            fontsize=9 if role == Role.CLIENT and not bridge else None,
            label=self._label(k, rec, addrs),
            tooltip=tip,
        )

    def node(self, k: bytes, nodes: dict[bytes, NodeRecord], role: Role) -> None:
        self.w.add(f"{self.ids[k]} {self.node_attrs(k, nodes[k], [nodes[k].address], role)};")

    def shared_nodes(self) -> None:
        """Nodes in several meshes (bridges among them): once, outside every cluster."""
        for k in sorted(self.shared):
            idx = self.membership[k]
            recs = [self.present[i][k] for i in idx]
            role = Role.PEER if any(r.role == Role.PEER for r in recs) else Role.CLIENT
            self.w.add(
                f"{self.ids[k]} {self.node_attrs(k, recs[0], [r.address for r in recs], role)};"
            )

    # -- layout: peer groups per mesh, meshes in rows, where nodes in several meshes sit

    def layout(self) -> None:
        self.plans = [
            _plan(self.present[mi], self.shared, self.self_key) for mi in range(len(self.meshes))
        ]
        row, used_cols = 0, 0
        for mi, plan in enumerate(self.plans):
            # meshes side by side while they fit _MESH_ROW_COLS peer groups, then below
            if mi and used_cols + plan.cols > max(_MESH_ROW_COLS, plan.cols):
                row, used_cols = row + 1, 0
            self.mesh_row.append(row)
            used_cols += plan.cols
        # a bridge sits above the first row of meshes it is in, or, when it links
        # rows, between that row and the next: edges to that first row go up
        for k in self.shared:
            rows = sorted({self.mesh_row[mi] for mi in self.membership[k]})
            below = {
                mi for mi in self.membership[k] if len(rows) > 1 and self.mesh_row[mi] == rows[0]
            }
            self.shared_below[k] = below

    # -- one mesh: its cluster, the grid of peer groups, clients under their peer

    def mesh_cluster(self, mi: int, m: GraphMesh, hub: str) -> None:
        w, nodes, plan = self.w, self.present[mi], self.plans[mi]
        n_clients = sum(1 for r in nodes.values() if r.role == Role.CLIENT)
        n_suspect = sum(1 for k in nodes if k in m.suspects and k != self.self_key)
        counts = f"{len(nodes)} nodes, {n_clients} clients"
        if n_suspect:
            counts += f", {n_suspect} suspect"
        w.open(f"subgraph cluster_m{mi}")
        w.add(
            "graph "
            + _attrs(
                label=(
                    f"<<b>{html.escape(m.mesh_id)}</b><br/>"
                    f"{_small(str(mesh_prefix(m.mesh_id)) + ' · ' + counts)}>"
                ),
                style="rounded,filled",
                fillcolor="#f8fafc",
                color="#94a3b8",
                penwidth=1.5,
                id=f"cluster_m{mi}",
            )
            + ";"
        )
        # invisible anchors at the top and bottom: bridge edges end on the
        # cluster border, and what is drawn below the mesh hangs from the foot
        w.add(f'{hub} [shape=point, style=invis, width=0.01, label=""];')
        w.add(f'foot{mi} [shape=point, style=invis, width=0.01, label=""];')
        for gi, pk in enumerate(plan.heads):
            cl = [c for c in plan.clients_of.get(pk, []) if c not in self.shared]
            if cl:
                w.open(f"subgraph cluster_m{mi}_g{gi}")
                w.add('graph [label="", style="rounded,dotted", color="#94a3b8"];')
            self.node(pk, nodes, Role.PEER)
            for c in cl:
                self.node(c, nodes, Role.CLIENT)
            if cl:
                w.close()
        for c in plan.loose:
            self.node(c, nodes, Role.CLIENT)
        for r0 in range(0, len(plan.heads), plan.cols):
            row_ids = "; ".join(self.ids[k] for k in plan.heads[r0 : r0 + plan.cols])
            w.add(f"{{ rank=same; {row_ids}; }}")
        w.close()

    def grid_edges(self, mi: int, hub: str) -> None:
        """Peer groups in a grid; rows aligned: each row starts below the tallest above."""
        ids, plan = self.ids, self.plans[mi]
        cols, heads, heights = plan.cols, plan.heads, plan.heights
        for gi, pk in enumerate(heads):
            if gi < cols:
                self.edge(hub, ids[pk], style="invis")
            if gi + cols < len(heads):
                row = gi - gi % cols
                self.edge(
                    ids[pk], ids[heads[gi + cols]], style="invis", minlen=max(heights[row:][:cols])
                )
        last_row = (len(heads) - 1) // cols * cols if heads else 0
        for gi in range(last_row, len(heads)):
            self.edge(ids[heads[gi]], f"foot{mi}", style="invis", minlen=heights[gi])
        for c in plan.loose:
            self.edge(hub, ids[c], style="invis")
            self.edge(ids[c], f"foot{mi}", style="invis")
        self.edge(hub, f"foot{mi}", style="invis")

    def client_edges(self, mi: int, m: GraphMesh) -> None:
        """Clients under their peer, rows of _CLIENT_COLS; the edge points client -> peer."""
        ids, nodes, shared = self.ids, self.present[mi], self.shared
        for pk, cl in self.plans[mi].clients_of.items():
            for j, c in enumerate(cl):
                tip = f"{nodes[c].alias or _short(c)} is served by {nodes[pk].alias or _short(pk)}"
                dashed = "dashed" if c in m.suspects or pk in m.suspects else None
                if mi in self.shared_below.get(pk, ()):
                    # the bridge is drawn under this mesh: its clients stay near the bottom
                    self.edge(ids[c], ids[pk], color=_CLIENT_LINE, style=dashed, tooltip=tip)
                    continue
                self.edge(
                    ids[pk],
                    ids[c],
                    dir="back",
                    color=_CLIENT_LINE,
                    style=dashed,
                    constraint="false" if j >= _CLIENT_COLS and pk not in shared else None,
                    tooltip=tip,
                )
                if j + _CLIENT_COLS < len(cl) and pk not in shared:
                    self.edge(ids[c], ids[cl[j + _CLIENT_COLS]], style="invis")

    def draw_meshes(self) -> None:
        for mi, m in enumerate(self.meshes):
            hub = f"hub{mi}"
            self.hubs[m.mesh_id] = hub
            self.mesh_cluster(mi, m, hub)
            self.grid_edges(mi, hub)
            self.client_edges(mi, m)

    def row_and_bridge_edges(self) -> None:
        """Meshes of a row hang below the row above; a node in several: a bold edge to each."""
        for mi, mrow in enumerate(self.mesh_row):
            for above in (i for i, ra in enumerate(self.mesh_row) if ra == mrow - 1):
                self.edge(f"foot{above}", f"hub{mi}", style="invis")
        for k in sorted(self.shared):
            for mi in self.membership[k]:
                style: dict[str, _Attr] = {
                    "color": _BRIDGE_LINE,
                    "penwidth": 2,
                    "arrowhead": "none",
                    "tooltip": f"member of {self.mesh_ids[mi]}",
                }
                if mi in self.shared_below[k]:
                    self.edge(f"foot{mi}", self.ids[k], ltail=f"cluster_m{mi}", **style)
                else:
                    self.edge(self.ids[k], f"hub{mi}", lhead=f"cluster_m{mi}", **style)

    # -- routes: advertised paths to meshes we do not draw, and default routes

    def route_paths(
        self,
    ) -> tuple[dict[str, str], dict[str, set[str]], dict[str, str], dict[tuple[str, str], bool]]:
        """Remote meshes, their extra destinations, default routes, and route edges (hot?)."""
        remote: dict[str, str] = {}
        remote_dests: dict[str, set[str]] = {}
        defaults: dict[str, str] = {}
        first_paths = [_first_paths(p) for p in self.present]
        used_paths = {
            (r.gateway, r.destination, first_paths[mi].get((r.gateway, r.destination), ()))
            for mi, r in self.used
        }
        route_edges: dict[tuple[str, str], bool] = {}
        known_prefixes = {str(mesh_prefix(m)) for m in self.mesh_ids}
        for mi in range(len(self.meshes)):
            for k, rec in sorted(self.present[mi].items()):
                for adv in rec.routes:
                    hot = (k, adv.prefix, adv.path) in used_paths
                    chain = [self.ids[k]]
                    for mid in adv.path:
                        if mid in self.hubs:
                            chain.append(self.hubs[mid])
                        else:
                            if mid not in remote:
                                remote[mid] = f"r{len(remote)}"
                            chain.append(remote[mid])
                    if adv.path:
                        last = adv.path[-1]
                        if last not in self.hubs and adv.prefix != str(mesh_prefix(last)):
                            remote_dests.setdefault(last, set()).add(adv.prefix)
                    elif adv.prefix not in known_prefixes:
                        if adv.prefix not in defaults:
                            defaults[adv.prefix] = f"d{len(defaults)}"
                        chain.append(defaults[adv.prefix])
                    for a, b in itertools.pairwise(chain):
                        route_edges[(a, b)] = route_edges.get((a, b), False) or hot
        return remote, remote_dests, defaults, route_edges

    def routes(self) -> None:
        remote, remote_dests, defaults, route_edges = self.route_paths()
        for mid, rid in remote.items():
            extra = sorted(remote_dests.get(mid, ()))
            shown = [str(mesh_prefix(mid)), *extra[:3]] + (["…"] if len(extra) > 3 else [])
            label = f"<<b>{html.escape(mid)}</b><br/>{'<br/>'.join(_small(p) for p in shown)}>"
            tip = f"mesh {mid} (reached through a bridge; not a mesh of this node)"
            attrs = _attrs(
                shape="folder", style="dashed", color=_REMOTE_LINE, label=label, tooltip=tip
            )
            self.w.add(f"{rid} {attrs};")
        for dest, did in defaults.items():
            what = "internet" if dest == "::/0" else "network"
            attrs = _attrs(
                shape="egg",
                style="dashed",
                color=_REMOTE_LINE,
                label=f"<<b>{what}</b><br/>{_small(dest)}>",
                tooltip=f"{dest}, offered as a route",
            )
            self.w.add(f"{did} {attrs};")
        hub_cluster = {hub: f"cluster_m{i}" for i, hub in enumerate(self.hubs.values())}
        for (a, b), hot in sorted(route_edges.items()):
            if (a, b) in self.edge_seen and not hot:
                continue
            self.edge_seen.discard((a, b))
            self.edge(
                a,
                b,
                lhead=hub_cluster.get(b),
                ltail=hub_cluster.get(a),
                constraint="false" if b in hub_cluster else None,
                style="bold" if hot else "dashed",
                color=_ROUTE if hot else _REMOTE_LINE,
                penwidth=2 if hot else None,
                tooltip="route path",
            )

    def exit_edges(self) -> None:
        """This node -> each exit it uses (the exit's label lists the destinations)."""
        ids, self_key = self.ids, self.self_key
        for gw, dests in sorted(self.exits.items()):
            if gw == self_key or gw not in ids or self_key not in ids:
                continue
            self.edge(
                ids[self_key],
                ids[gw],
                color=_ROUTE,
                penwidth=2,
                style="bold",
                constraint="false",
                tooltip="this node routes " + ", ".join(sorted(dests)) + " through here",
            )

    def finish(self) -> str:
        for e in self.edges:
            self.w.add(e)
        self.w.close()
        return "\n".join(self.w.lines) + "\n"


def graph_dot(meshes: Sequence[GraphMesh], *, self_key: bytes) -> str:
    """Draw meshes as a Graphviz ``digraph`` (DOT source, layout engine ``dot``).

    * one cluster per mesh (title: mesh id, prefix, counts);
    * inside it, a box per peer and, under each peer, its clients (ellipses)
      in a dotted sub-cluster with an edge from each client to its peer; peer
      groups are laid out in a grid, not joined to one another (no full-mesh
      hairball: WireGuard peers of a mesh are all connected anyway);
    * a node in several of the meshes (a bridge; this node when more than one
      mesh is drawn) is drawn once, outside the clusters, in amber, with a
      bold edge to each mesh it is in;
    * meshes reached through route paths but not drawn appear as dashed folders
      linked from the member advertising the route; a default route (``::/0``)
      offered without a path appears as a dashed "internet" node;
    * the routes this node uses are red: the exit node's border, an edge from
      this node to it labelled with the destinations, and the path beyond it;
    * suspect nodes are dashed and pink, with "suspect" in their label; this
      node has a double border and "this node" in its label.
    """
    g = _Graph(meshes, self_key)
    g.header()
    g.shared_nodes()
    g.layout()
    g.draw_meshes()
    g.row_and_bridge_edges()
    g.routes()
    g.exit_edges()
    return g.finish()
