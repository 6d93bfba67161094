"""Tables of ``list-meshes`` and ``get-mesh``, from the API's models."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from smegmesh.cli.output import _ago, _bytes, _dur
from smegmesh.daemon.api_models import (
    DeviceInfo,
    EvictedNode,
    MeshDetail,
    MeshSummary,
    NodeInfo,
)

__all__ = ["devices_table", "mesh_tables", "meshes_table", "plain"]

_NODE_COLUMNS = (
    "",
    "ALIAS",
    "ROLE",
    "ADDRESS",
    "ENDPOINT",
    "LAST SEEN",
    "HANDSHAKE",
    "RX / TX",
    "KEY",
)


def plain(*cells: str) -> tuple[Text, ...]:
    """Cells shown as they are: a string cell is rich markup, and a member's
    ``[fd00::1]:51820`` endpoint was taken for a style tag (shown ``:51820``)."""
    return tuple(Text(c) for c in cells)


def meshes_table(meshes: Sequence[MeshSummary]) -> Table:
    """``list-meshes``: one row per mesh."""
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("MESH", "INTERFACE", "ROLE", "ADDRESS", "PREFIX", "NODES"):
        t.add_column(col, overflow="fold", min_width=len(col))
    for m in meshes:
        t.add_row(
            m.mesh_id,
            m.interface or "-",
            m.role,
            m.overlay_address,
            m.prefix,
            str(m.node_count),
        )
    return t


def _node_row(n: NodeInfo, now: float) -> tuple[str, ...]:
    role: str = n.role
    if role == "client" and n.assigned_peer:
        role += f" (via {n.assigned_peer[:8]})"
    alias = n.alias or "-"
    if n.alias_conflict:
        alias += " (clash)"
    if n.admin:
        role += " ADMIN"
    if n.role == "peer" and any(r.destination == "::/0" and not r.path for r in n.routes):
        role += " EXIT"  # offers ::/0 (advertiseDefaults)
    if n.role == "peer" and any(r.path for r in n.routes):
        role += " BRIDGE"  # passes other meshes' routes on (advertiseRoute)
    return (
        "*" if n.is_self else "",
        alias,
        role,
        n.overlay_address,
        n.wg_endpoint or "-",
        _ago(n.last_seen, now, n.seen_via),
        _dur(n.handshake_age_s),
        f"{_bytes(n.rx_bytes)} / {_bytes(n.tx_bytes)}" if n.wg_peer else "-",
        n.public_key[:12] + "…",
    )


def mesh_tables(d: MeshDetail, *, show_all: bool = False) -> Iterator[RenderableType]:
    """``get-mesh``: the title line, the nodes, a clash warning, evicted nodes, routes."""
    now = time.time()
    yield f"[bold]{d.mesh_id}[/bold]  prefix {d.prefix}" + (
        f"  interface {d.interface}" if d.interface else ""
    )
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in _NODE_COLUMNS:
        t.add_column(col, overflow="fold", min_width=min(len(col), 9) or 1)
    for n in d.nodes:
        t.add_row(*plain(*_node_row(n, now)))
    yield t
    if d.devices:
        yield devices_table(d.devices, title="devices (no smegd: reached through their sponsor)")
    if d.evicted_self is not None:
        yield evicted_line(d.mesh_id, d.evicted_self)
    me = next((n for n in d.nodes if n.is_self), None)
    if me is not None and me.alias_conflict:
        yield (
            f"[yellow]alias {me.alias!r} is also claimed by another node, which "
            "keeps it: choose another with put-alias[/yellow]"
        )
    if show_all and d.evicted:
        et = Table(title="evicted", box=None, header_style="bold")
        for col in ("KEY", "ADDRESS", "BY", "WHEN", "CASCADE"):
            et.add_column(col, overflow="fold")
        for e in d.evicted:
            et.add_row(
                *plain(
                    e.public_key[:12] + "…",
                    e.overlay_address,
                    e.by[:12] + "…",
                    _ago(e.time, now),
                    "yes" if e.cascade else "no",
                )
            )
        yield et
    if d.routes:
        rt = Table(title="routes from this node", box=None, header_style="bold")
        for col in ("DESTINATION", "VIA", "PATH (meshes)", "LENGTH", "ALTERNATIVES"):
            rt.add_column(col, overflow="fold")
        for r in d.routes:
            rt.add_row(
                *plain(
                    r.destination,
                    r.gateway_alias or r.gateway[:12] + "…",
                    " → ".join(r.path) or "-",
                    str(r.path_length),
                    str(len(r.alternatives)),
                )
            )
        yield rt


def devices_table(devices: Sequence[DeviceInfo], *, title: str | None = None) -> Table:
    """Sponsored devices: ``list-devices``, and under the nodes in ``get-mesh``."""
    t = Table(title=title, box=None, pad_edge=False, header_style="bold")
    for col in ("NAME", "ADDRESS", "SPONSOR", "PUBLIC KEY"):
        t.add_column(col, overflow="fold")
    for x in devices:
        sponsor = x.sponsor_alias or x.sponsor[:12] + "…"
        t.add_row(*plain(x.alias or "-", x.overlay_address, sponsor, x.public_key))
    return t


def evicted_line(mesh_id: str, e: EvictedNode) -> str:
    """The warning under a mesh this node was evicted from (``get-mesh``, ``status``)."""
    # by cascade: the admin evicted a node it was admitted through, and it with it
    through = f" with {e.through[:12]}…, through which it was admitted," if e.through else ""
    return (
        f"[bold red]this node was evicted from {mesh_id}[/bold red] by the admin "
        f"{e.by[:12]}…{through} {_ago(e.time, time.time())}: no member takes anything from "
        f"it; leave the mesh with: smegctl leave-mesh --meshid {mesh_id}"
    )
