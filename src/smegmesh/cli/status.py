"""``smegctl status`` and ``smegctl ping``: the node at a glance, and overlay reachability.

Both are one request to the daemon (``GET /v1/status``, ``POST /v1/ping``), so
they work the same over the socket and over ``--api``. Registered on the app of
:mod:`smegmesh.cli.main` when that module imports this one.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from smegmesh.cli.app import JsonOpt, _run, _smegd, app
from smegmesh.cli.client import check_mesh_id
from smegmesh.cli.output import _ago, _bytes, _console, _dur, _print_json
from smegmesh.cli.tables import evicted_line, plain
from smegmesh.daemon.api_models import (
    MemberStatus,
    MeshStatus,
    PathInfo,
    PingResponse,
    StatusResponse,
)

__all__ = ["path_text", "ping", "print_status", "status"]


def _short_key(key: str | None) -> str:
    return key[:8] + "…" if key else "-"


def path_text(path: PathInfo) -> str:
    """``direct`` / ``via ALIAS`` / ``via bridge ALIAS`` / ``self`` / ``no path``."""
    kind = path.kind
    hop = path.via_alias or _short_key(path.via)
    if kind == "direct":
        return "direct"
    if kind == "peer":
        return f"via {hop}"
    if kind == "bridge":
        return f"via bridge {hop}"
    if kind == "self":
        return "self"
    return "no path"


STATUS_HELP = (
    "Show the whole node on one screen, like tailscale status.\n\n"
    "Version and identity; each mesh with this node's role and the members online; per "
    "member its alias, overlay address, role, how it is reached (direct, via a peer, via a "
    "bridge), the measured round trip (RTT: a client's direct-session partners and its "
    "assigned peer), the last WireGuard handshake and traffic (for direct peers); then the routes "
    "and exits in use. * marks this node."
)
PING_HELP = (
    "Ping a node over the overlay and say which path answered.\n\n"
    "smegd sends ICMPv6 echo requests (ping -6) to NODE's overlay address and reports the "
    "path WireGuard takes: directly to NODE, through another peer (e.g. a client's assigned "
    "peer), or through a bridge; and the round-trip times. Exits 1 when no reply came."
)


@app.command(
    "status",
    help=STATUS_HELP,
    epilog="Examples: smegctl status;  smegctl status --json | jq '.meshes[].members_online'",
)
def status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The node at a glance (help text: ``STATUS_HELP``)."""

    def go() -> None:
        res = _smegd(ctx).call(StatusResponse, "GET", "/v1/status")
        if as_json:
            _print_json(res.raw)
            return
        print_status(_console(), res.data)

    _run(as_json, go)


def print_status(con: Console, st: StatusResponse) -> None:
    """The text of ``status``."""
    con.print(
        f"[bold]smegd {st.version}[/bold]  node {_short_key(st.public_key)}"
        + (f"  ({st.public_key})" if st.public_key else "")
    )
    if st.dns_listen:
        con.print(f"DNS on {st.dns_listen} (smeg. names; smegctl dns-help)")
    for u in st.not_restored:  # the reason is the file's text: no markup
        then = "tried again" if u.retrying else f"{u.file} kept; fix or move it, restart smegd"
        con.print(f"mesh {u.mesh_id} NOT RUNNING: {u.reason} ({then})", markup=False)
    if not st.meshes:  # with meshes NOT RUNNING above, not an invitation to make one
        con.print(
            "no mesh running"
            if st.not_restored
            else "not in any mesh (create one with: smegctl new-mesh)"
        )
        return
    now = time.time()
    for m in st.meshes:
        con.print()
        _print_mesh(con, m, now, st.accept_defaults)
    if st.accept_defaults and not any(m.exits or _uses_exit(m) for m in st.meshes):
        con.print(
            "\nacceptDefaults is on, but no member of any mesh offers an exit (::/0): "
            "this host keeps its own default route"
        )


def _uses_exit(m: MeshStatus) -> bool:
    return any(r.destination == "::/0" for r in m.routes)


_MEMBER_COLUMNS = (
    "",
    "ALIAS",
    "ADDRESS",
    "ROLE",
    "PATH",
    "RTT",
    "HANDSHAKE",
    "RX / TX",
    "LAST SEEN",
    "KEY",
)


def _member_row(n: MemberStatus, now: float) -> tuple[str, ...]:
    alias = n.alias or "-"
    if n.status == "suspect":
        alias += " (suspect)"
    direct = n.path.kind == "direct"
    hs = n.handshake_age_s
    return (
        "*" if n.is_self else "",
        alias,
        n.overlay_address,
        n.role,
        path_text(n.path),
        f"{n.rtt_ms:.2f} ms" if n.rtt_ms is not None else "-",
        "-" if n.is_self else ("never" if hs is None else _dur(hs) + " ago"),
        f"{_bytes(n.rx_bytes)} / {_bytes(n.tx_bytes)}" if direct else "-",
        "-" if n.is_self else _ago(n.last_seen, now, n.seen_via),
        _short_key(n.public_key),
    )


def _print_mesh(con: Console, m: MeshStatus, now: float, accept: bool | None = None) -> None:
    """One mesh of ``status``: its line, its members, the routes and exits in use."""
    head = (
        f"[bold]{m.mesh_id}[/bold]  {m.role or '-'}"
        f"  {m.overlay_address or '-'}"
        f"  {m.members_online}/{m.members_total} online"
    )
    if m.interface:
        head += f"  interface {m.interface}"
    con.print(head)
    if m.evicted_self is not None:
        con.print(evicted_line(m.mesh_id, m.evicted_self))
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in _MEMBER_COLUMNS:
        t.add_column(col, overflow="fold", min_width=min(len(col), 9) or 1)
    for n in m.members:
        t.add_row(*plain(*_member_row(n, now)))
    con.print(t)
    for r in m.routes:
        hop = r.gateway_alias or _short_key(r.gateway)
        path = " → ".join(r.path)
        exit_ = "exit" if r.destination == "::/0" else "route"
        alts = len(r.alternatives)
        con.print(
            f"  {exit_} {r.destination} via {hop}"
            + (f" (across {path})" if path else "")
            + (f", {alts} alternative(s)" if alts else "")
        )
    me = next((n for n in m.members if n.is_self), None)
    self_exit = me is not None and me.public_key in m.exits
    if self_exit:  # an exit never sends its own default traffic into the mesh
        con.print("  this node is an exit of this mesh (advertiseDefaults): it offers ::/0")
    names = {n.public_key: n.alias or _short_key(n.public_key) for n in m.members}
    offered = [names.get(k, _short_key(k)) for k in m.exits if me is None or k != me.public_key]
    if offered and accept is False and not self_exit:
        con.print(
            f"  exit offered by {', '.join(offered)}: not used "
            "(acceptDefaults is off in smegd's config)",
            markup=False,
        )


@app.command(
    "ping",
    help=PING_HELP,
    epilog="Examples: smegctl ping web1;  smegctl ping fd3a:  (a unique prefix);  "
    "smegctl ping -m MESH -c 5 KEYPREFIX --json",
)
def ping(
    ctx: typer.Context,
    node: Annotated[
        str,
        typer.Argument(
            help="Alias, public key, overlay address, or a unique prefix of one "
            "(any IPv6 address, e.g. behind a bridge, is pinged as is).",
            show_default=False,
        ),
    ],
    meshid: Annotated[
        str | None,
        typer.Option("--meshid", "-m", help="Only look for NODE in this mesh."),
    ] = None,
    count: Annotated[
        int, typer.Option("--count", "-c", min=1, max=20, help="Echo requests to send.")
    ] = 3,
    timeout: Annotated[
        int,
        typer.Option("--timeout", "-W", min=1, max=10, help="Seconds to wait for each reply."),
    ] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Ping over the overlay (help text: ``PING_HELP``)."""

    def go() -> None:
        body: dict[str, Any] = {"node": node, "count": count, "timeout_s": timeout}
        if meshid is not None:
            body["mesh_id"] = check_mesh_id(meshid)
        wait = count * 0.2 + timeout + 15
        answer = _smegd(ctx, timeout=wait).call(PingResponse, "POST", "/v1/ping", body=body)
        res: PingResponse = answer.data
        if as_json:
            _print_json(answer.raw)
        else:
            name = res.alias or _short_key(res.public_key)
            where = f" in {res.mesh_id}" if res.mesh_id else ""
            target = f"{name} ({res.address}{where})" if res.public_key else res.address
            path = path_text(res.path)
            if res.received:
                typer.echo(
                    f"{target}: {res.received}/{res.sent} replies, {path}, "
                    f"rtt avg {res.rtt_avg_ms or 0:.2f} ms "
                    f"(min {min(res.rtt_ms):.2f}, max {max(res.rtt_ms):.2f})"
                )
            else:
                why = res.error or "no reply"
                typer.echo(f"{target}: no reply ({path}): {why}")
        if not res.received:
            raise typer.Exit(1)

    _run(as_json, go)
