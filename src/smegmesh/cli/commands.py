"""smegctl commands of the meshes: create, invite, join, leave, list, show, draw, query."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from smegmesh.cli.app import (
    CtlError,
    JsonOpt,
    OptMeshIdOpt,
    _client,
    _meshid,
    _run,
    _smegd,
    app,
    choices,
)
from smegmesh.cli.client import ClientError, check_mesh_id, read_token_file
from smegmesh.cli.meshflags import with_mesh_flags
from smegmesh.cli.output import EXIT_USAGE, _console, _fail, _print_json, parse_duration
from smegmesh.cli.tables import mesh_tables, meshes_table
from smegmesh.core.invite import MAX_TOKEN_CHARS
from smegmesh.daemon.api_models import (
    MAX_INVITE_TTL_S,
    MAX_INVITE_USES,
    GraphFormat,
    JoinRequest,
    MeshOptions,
)

__all__ = ["get_graph", "get_mesh", "join_mesh", "list_meshes", "new_mesh", "query_mesh"]

if TYPE_CHECKING:
    GraphChoice = str
else:
    GraphChoice = choices("GraphFormat", GraphFormat)
DOT = GraphChoice("dot")


@app.command("new-mesh", epilog="Example: smegctl new-mesh --wgport 51820 --role peer")
@with_mesh_flags("new-mesh")
def new_mesh(ctx: typer.Context, opts: dict[str, Any], as_json: JsonOpt = False) -> None:
    """Create a new mesh with this node as its first member (and admin) and print its id."""

    def go() -> None:
        res = _smegd(ctx, timeout=60).new_mesh(MeshOptions.model_construct(**opts))
        _print_json(res.raw) if as_json else typer.echo(res.data.mesh_id)

    _run(as_json, go)


@app.command(
    "invite",
    epilog="Examples: smegctl invite --meshid MESH;  smegctl invite --meshid MESH --ttl 2h "
    "--uses 5",
)
def invite(
    ctx: typer.Context,
    meshid: OptMeshIdOpt = None,
    ttl: Annotated[
        str,
        typer.Option(
            "--ttl", help="How long the token is valid: e.g. 90s, 30m, 2h, 1d, 1h30m; at most 365d."
        ),
    ] = "24h",
    uses: Annotated[
        int,
        typer.Option(
            "--uses", min=1, max=MAX_INVITE_USES, help="How many nodes may join with the token."
        ),
    ] = 1,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Only this node admits with the token: the use count is exact."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Issue an invitation token for a mesh and print it.

    Give the token to the new node, which runs: smegctl join-mesh --token TOKEN

    Uses are counted mesh-wide over every admission ever made with the token.
    Any member allowed by the mesh's invite policy can admit with it, so joins
    racing at different members at the same moment may over-admit by the
    number of members racing; --strict makes this node the only admitter (the
    count is then exact, and the token names only this node).

    A node has at most 16 invitations outstanding (neither used up, revoked
    nor expired); a 17th is refused until one is (revoke-invite).
    """
    ttl_s = parse_duration(ttl, most_s=MAX_INVITE_TTL_S, flag="--ttl")

    def go() -> None:
        mid = _meshid(ctx, meshid)
        res = _smegd(ctx).invite(mid, ttl_s, uses, strict)
        _print_json(res.raw) if as_json else typer.echo(res.data.token)

    _run(as_json, go)


@app.command(
    "join-mesh",
    epilog="Examples: smegctl join-mesh --token TOKEN --role client;  "
    "smegctl join-mesh --token-file FILE;  echo TOKEN | smegctl join-mesh --token -",
)
@with_mesh_flags("join-mesh")
def join_mesh(
    ctx: typer.Context,
    opts: dict[str, Any],
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            "-t",
            help="Invitation token (smegctl invite on a member); '-' reads it from standard "
            "input, out of the process list.",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="Read the invitation token from this file."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Join a mesh with an invitation token and print the mesh id.

    A token given as --token TOKEN is in the process list, readable by every
    local user, while the join runs (up to 2 minutes): --token - or
    --token-file keep it out.
    """

    if token is not None and token_file is not None:
        _fail("give only one of --token and --token-file", as_json, code=EXIT_USAGE)
    if token is None and token_file is None:
        msg = "give the invitation as --token TOKEN, --token - or --token-file FILE"
        _fail(msg, as_json, code=EXIT_USAGE)
    if token is not None and not token.strip():
        _fail("--token: the invitation token is empty", as_json, code=EXIT_USAGE)

    def go() -> None:
        tok = _join_token(token, token_file)
        res = _smegd(ctx, timeout=120).join_mesh(JoinRequest.model_construct(**opts, token=tok))
        _print_json(res.raw) if as_json else typer.echo(res.data.mesh_id)

    _run(as_json, go)


def _join_token(token: str | None, token_file: Path | None) -> str:
    """The invitation token from --token, --token - (standard input) or --token-file
    (exactly one of them: join_mesh checked)."""
    if token_file is not None:
        return read_token_file(token_file, "--token-file")
    if token != "-":
        return str(token)
    line = sys.stdin.readline(MAX_TOKEN_CHARS + 1).strip()
    if not line or len(line) > MAX_TOKEN_CHARS:
        raise ClientError("--token -: standard input must hold the token on its first line")
    return line


@app.command("leave-mesh", epilog="Example: smegctl leave-mesh --meshid MESH")
def leave_mesh(
    ctx: typer.Context,
    meshid: OptMeshIdOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Leave even as the last admin of a mesh that has other members "
            "(refused without it: nobody could evict a node or name an admin after).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Leave a mesh: tell the other members and remove its WireGuard interface."""

    def go() -> None:
        mid = _meshid(ctx, meshid)
        res = _smegd(ctx, timeout=60).leave_mesh(mid, force=force)
        _print_json({**res.raw, "mesh_id": mid}) if as_json else typer.echo(f"left {mid}")

    _run(as_json, go)


@app.command("list-meshes", epilog="Example: smegctl list-meshes --json")
def list_meshes(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the meshes this node is in."""

    def go() -> None:
        res = _smegd(ctx).list_meshes()
        if as_json:
            _print_json(res.raw)
            return
        # saved meshes that did not start are in no list: without them named, a
        # damaged file looked like a mesh gone ("create one with: smegctl new-mesh")
        health = _client(ctx).json("GET", "/v1/health")
        stopped = ", ".join(str(m) for m in health.get("not_restored", ()))
        note = f"saved but not running: {stopped} (smegctl status says why)"
        if not res.data:
            typer.echo(
                f"no mesh running; {note}"
                if stopped
                else "not in any mesh (create one with: smegctl new-mesh)"
            )
            return
        _console().print(meshes_table(res.data))
        if stopped:
            sys.stderr.write(f"smegctl: {note}\n")

    _run(as_json, go)


@app.command("get-mesh", epilog="Example: smegctl get-mesh --meshid MESH")
def get_mesh(
    ctx: typer.Context,
    meshid: OptMeshIdOpt = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also list the nodes evicted from the mesh.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show the nodes of a mesh as a table (* marks this node, ADMIN the mesh's admins)."""

    def go() -> None:
        res = _smegd(ctx).get_mesh(_meshid(ctx, meshid))
        if as_json:
            _print_json(res.raw)
            return
        console = _console()
        for part in mesh_tables(res.data, show_all=show_all):
            console.print(part)

    _run(as_json, go)


@app.command(
    "get-graph",
    epilog="Examples: smegctl get-graph --meshid MESH | dot -Tsvg > mesh.svg;  "
    "smegctl get-graph --format png -o meshes.png",
)
def get_graph(
    ctx: typer.Context,
    meshid: Annotated[
        str | None,
        typer.Option("--meshid", "-m", help="Only this mesh (default: all, linked by bridges)."),
    ] = None,
    fmt: Annotated[
        GraphChoice | None,
        typer.Option(
            "--format",
            "-f",
            help="Output format. Default: the extension of -o FILE (.svg, .png), else dot.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to FILE instead of stdout.", dir_okay=False),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Draw the mesh (nodes, roles, clients under their peers, bridges, routes)."""

    if fmt is None:  # -o mesh.png: a PNG, not DOT text under that name
        ext = output.suffix.lower().lstrip(".") if output is not None else ""
        fmt = GraphChoice(ext) if ext in ("svg", "png") else DOT

    def go() -> None:
        params = {"format": str(fmt)}
        if meshid:
            params["meshid"] = check_mesh_id(meshid)
        data = _client(ctx, timeout=60).request("GET", "/v1/graph", params=params).content
        if output is not None:
            try:
                output.write_bytes(data)
            except OSError as e:
                raise CtlError(f"cannot write {output}: {e.strerror or e}") from None
            if as_json:
                _print_json({"format": str(fmt), "output": str(output), "bytes": len(data)})
            return
        if as_json:
            if str(fmt) == "png":
                _print_json(
                    {
                        "format": "png",
                        "encoding": "base64",
                        "data": base64.b64encode(data).decode(),
                    }
                )
            else:
                _print_json({"format": str(fmt), "data": data.decode("utf-8", "replace")})
            return
        if str(fmt) == "png" and sys.stdout.isatty():
            raise CtlError("not writing PNG to a terminal; use -o FILE or redirect stdout")
        sys.stdout.buffer.write(data)
        sys.stdout.flush()

    _run(as_json, go)


@app.command(
    "query-mesh",
    epilog="Examples: smegctl query-mesh --meshid MESH --query 'nodes[].alias';  "
    "smegctl query-mesh -m MESH -q \"nodes[?role=='peer'].overlay_address\"",
)
def query_mesh(
    ctx: typer.Context,
    query: Annotated[
        str,
        typer.Option(
            "--query", "-q", help="JMESPath expression over the mesh (see get-mesh --json)."
        ),
    ],
    meshid: OptMeshIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a JMESPath query over a mesh and print the result as JSON."""

    def go() -> None:
        mid = _meshid(ctx, meshid)
        _print_json(_smegd(ctx).query(mid, query).data.result)

    _run(as_json, go)
