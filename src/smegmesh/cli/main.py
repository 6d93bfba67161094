"""``smegctl``: command-line client of the local ``smegd`` API (unix socket).

A thin client: every command is one HTTP request to the daemon's ``/v1`` API over
its control socket (``--socket``, then ``$SMEG_SOCKET``, then
``/run/smegmesh/smegd.sock``). Every command has ``--json`` for machine output
on stdout. Errors are one line on stderr (``smegctl: ...``) and a non-zero exit
status; never a traceback.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.table import Table

from smegmesh.cli.client import (
    TOKEN_ENV,
    ClientError,
    RemoteClient,
    check_api_url,
    check_mesh_id,
    check_service_key,
    mesh_id_of,
    read_token_file,
    token_from_env,
)
from smegmesh.daemon.defaults import DEFAULT_CONFIG_PATH, DEFAULT_CONTROL_SOCKET, VERSION

__all__ = ["app", "main", "parse_duration"]

SOCKET_ENV = "SMEG_SOCKET"
API_ENV = "SMEG_API"

#: Exit statuses: 1 = the daemon refused or failed, or is unreachable; 2 = usage error.
EXIT_ERROR = 1

app = typer.Typer(
    name="smegctl",
    help="Control the local smegmesh daemon (smegd): create, join and inspect WireGuard "
    "meshes.\n\n"
    f"smegctl talks to smegd over its unix socket: --socket PATH, else ${SOCKET_ENV}, "
    f"else {DEFAULT_CONTROL_SOCKET}. Every command accepts --json for machine-readable "
    "output.\n\n"
    "Typical use: [bold]smegctl new-mesh[/bold] on the first node, "
    "[bold]smegctl invite --meshid ID[/bold] there, and "
    "[bold]smegctl join-mesh --token TOKEN[/bold] on each new node.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _console() -> Console:
    """Console for tables: on a pipe never truncate (lines may be long, tools grep them)."""
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, width=1000, color_system=None)


class CtlError(Exception):
    """A failure to report as ``smegctl: <message>``."""

    def __init__(self, message: str, payload: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.payload = payload


class Role(StrEnum):
    peer = "peer"
    client = "client"


class InvitePolicy(StrEnum):
    admins = "admins"
    peers = "peers"
    members = "members"


class GraphFormat(StrEnum):
    dot = "dot"
    svg = "svg"
    png = "png"


# --------------------------------------------------------------------------- client


class State:
    def __init__(
        self,
        socket: str,
        api: str | None = None,
        api_token: str | None = None,
        api_ca: Path | None = None,
    ) -> None:
        self.socket = socket
        self.api = api
        self.api_token = api_token
        self.api_ca = api_ca


class Client:
    """HTTP over the daemon's unix socket."""

    def __init__(self, socket: str, timeout: float = 30.0) -> None:
        self.socket = socket
        self.timeout = timeout

    def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=self.socket)
        t = httpx.Timeout(timeout or self.timeout, connect=5.0)
        try:
            with httpx.Client(transport=transport, base_url="http://smegd", timeout=t) as c:
                resp = c.request(method, url, json=json_body, params=params)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as e:
            if isinstance(e.__cause__ or e.__context__, PermissionError) or "ermission" in str(e):
                raise CtlError(
                    f"permission denied on {self.socket} (run as root, or as a member of "
                    "the socket's group)"
                ) from None
            raise CtlError(
                f"cannot reach smegd at {self.socket} (is it running? start it with: "
                f"smegd {DEFAULT_CONFIG_PATH})"
            ) from None
        except PermissionError:
            raise CtlError(f"permission denied on {self.socket} (run as root)") from None
        except httpx.TimeoutException:
            raise CtlError(f"smegd at {self.socket} did not answer within {t.read:g}s") from None
        except httpx.HTTPError as e:
            raise CtlError(f"talking to smegd at {self.socket} failed: {e}") from None
        if resp.status_code >= 400:
            raise CtlError(*_error_of(resp))
        return resp

    def json(self, method: str, url: str, **kw: Any) -> Any:
        resp = self.request(method, url, **kw)
        try:
            return resp.json()
        except ValueError:
            raise CtlError("smegd sent an answer that is not JSON") from None


def _error_of(resp: httpx.Response) -> tuple[str, dict[str, Any] | None]:
    try:
        body = resp.json()
        err = body["error"]
        msg = str(err["message"])
        return msg, body
    except (ValueError, KeyError, TypeError):
        text = " ".join(resp.text.split())[:200]
        return f"smegd answered HTTP {resp.status_code}: {text or resp.reason_phrase}", None


def _client(ctx: typer.Context, timeout: float = 30.0) -> Client | RemoteClient:
    state = ctx.find_object(State)
    if state is not None and state.api:  # --api URL: the daemon's TCP API
        return RemoteClient(state.api, state.api_token, state.api_ca, timeout)
    return Client(state.socket if state else DEFAULT_CONTROL_SOCKET, timeout=timeout)


def _meshid(ctx: typer.Context, meshid: str | None) -> str:
    """``--meshid`` checked, or the node's only mesh when it was left out."""
    return mesh_id_of(_client(ctx), meshid)


# --------------------------------------------------------------------------- output


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def _fail(message: str, as_json: bool = False, payload: dict[str, Any] | None = None) -> NoReturn:
    if as_json:
        _print_json(payload or {"error": {"code": "client", "message": message}})
    sys.stderr.write(f"smegctl: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(EXIT_ERROR)


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    return _dur(max(0.0, now - ts)) + " ago"


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _bytes(n: int) -> str:
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{n} B"  # pragma: no cover


_DURATION_RE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """``"90"`` / ``"90s"`` / ``"30m"`` / ``"2h"`` / ``"1d"`` / ``"1h30m"`` -> seconds (> 0)."""
    t = text.strip().lower()
    if t.isdigit():
        secs = int(t)
    else:
        pos, secs = 0, 0
        for m in _DURATION_RE.finditer(t):
            if m.start() != pos:
                break
            secs += int(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(t) or not t:
            raise typer.BadParameter(
                f"{text!r} is not a duration; use e.g. 90s, 30m, 2h, 1d or 1h30m"
            )
    if secs <= 0:
        raise typer.BadParameter("must be longer than 0 seconds")
    return secs


# --------------------------------------------------------------------------- options

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON on stdout, nothing else.")
]
MeshIdOpt = Annotated[str, typer.Option("--meshid", "-m", help="The mesh id.", show_default=False)]
#: ``--meshid`` that may be left out when the node is in exactly one mesh (see ``_meshid``).
OptMeshIdOpt = Annotated[
    str | None,
    typer.Option(
        "--meshid",
        "-m",
        help="The mesh id (may be left out when this node is in exactly one mesh).",
        show_default=False,
    ),
]
WgPortOpt = Annotated[
    int | None,
    typer.Option("--wgport", min=1, max=65535, help="WireGuard listen port (default: a free one)."),
]
EndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        help="Host (or host:port) other nodes reach this node at "
        "(default: publicEndpoint / ipDiscovery of the config).",
    ),
]
RoleOpt = Annotated[
    Role | None,
    typer.Option(
        "--role",
        case_sensitive=False,
        help="peer (reachable, forwards for clients) or client (behind NAT). "
        "Default: baseConfiguration.role.",
    ),
]
KeepaliveOpt = Annotated[
    int | None,
    typer.Option(
        "--keepalive", min=0, max=65535, help="WireGuard persistent keepalive, seconds; 0 = off."
    ),
]
AdvRoutesOpt = Annotated[
    bool | None,
    typer.Option(
        "--advertise-routes/--no-advertise-routes",
        help="Bridge: advertise this node's other meshes into this one "
        "(default: baseConfiguration.advertiseRoute).",
        show_default=False,
    ),
]
AdvDefaultsOpt = Annotated[
    bool | None,
    typer.Option(
        "--advertise-defaults/--no-advertise-defaults",
        help="Offer a default route (::/0) to this mesh "
        "(default: baseConfiguration.advertiseDefaults).",
        show_default=False,
    ),
]


def _mesh_opts(
    wgport: int | None,
    endpoint: str | None,
    role: Role | None,
    keepalive: int | None,
    advertise_routes: bool | None,
    advertise_defaults: bool | None,
) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "wgport": wgport,
        "endpoint": endpoint,
        "role": role.value if role is not None else None,
        "keepalive": keepalive,
        "advertise_routes": advertise_routes,
        "advertise_defaults": advertise_defaults,
    }
    return {k: v for k, v in opts.items() if v is not None}


def _version_cb(value: bool) -> None:
    if value:
        typer.echo(f"smegctl {VERSION}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    socket: Annotated[
        str,
        typer.Option(
            "--socket",
            "-s",
            envvar=SOCKET_ENV,
            help="Control socket of smegd (the controlSocket key of its config).",
            show_envvar=True,
        ),
    ] = DEFAULT_CONTROL_SOCKET,
    api: Annotated[
        str | None,
        typer.Option(
            "--api",
            envvar=API_ENV,
            help="Talk to a daemon's TCP API (its apiListen) instead of the socket: "
            "http://HOST:PORT or https://HOST:PORT. The token comes from --api-token-file "
            f"or ${TOKEN_ENV}.",
            show_envvar=True,
            show_default=False,
        ),
    ] = None,
    api_token_file: Annotated[
        Path | None,
        typer.Option(
            "--api-token-file",
            help=f"File holding the API token (default: ${TOKEN_ENV}).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    api_ca: Annotated[
        Path | None,
        typer.Option(
            "--api-ca",
            help="CA certificate (PEM) to verify an https:// --api with, e.g. the daemon's "
            "self-signed apiTlsCertificate. Verification is always on.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_cb, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    if ctx.resilient_parsing:  # shell completion: no files, no errors
        ctx.obj = State(socket)
        return
    token = None
    if api:
        try:
            check_api_url(api)
            token = read_token_file(api_token_file) if api_token_file else token_from_env()
        except ClientError as e:
            _fail(e.message)
    ctx.obj = State(socket, api or None, token, api_ca)


def _run(as_json: bool, fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except (CtlError, ClientError) as e:
        _fail(e.message, as_json, e.payload)


# --------------------------------------------------------------------------- commands


@app.command("new-mesh", epilog="Example: smegctl new-mesh --wgport 51820 --role peer")
def new_mesh(
    ctx: typer.Context,
    wgport: WgPortOpt = None,
    endpoint: EndpointOpt = None,
    role: RoleOpt = None,
    keepalive: KeepaliveOpt = None,
    advertise_routes: AdvRoutesOpt = None,
    advertise_defaults: AdvDefaultsOpt = None,
    invite_policy: Annotated[
        InvitePolicy | None,
        typer.Option(
            "--invite-policy",
            help="Who may admit new nodes: admins, peers or members (default: peers; "
            "clients cannot invite). This node is the mesh's first admin.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a new mesh with this node as its first member (and admin) and print its id."""
    body = _mesh_opts(wgport, endpoint, role, keepalive, advertise_routes, advertise_defaults)
    if invite_policy is not None:
        body["invite_policy"] = invite_policy.value

    def go() -> None:
        res = _client(ctx, timeout=60).json("POST", "/v1/meshes", json_body=body)
        _print_json(res) if as_json else typer.echo(res["mesh_id"])

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
        typer.Option("--ttl", help="How long the token is valid: e.g. 90s, 30m, 2h, 1d, 1h30m."),
    ] = "24h",
    uses: Annotated[
        int, typer.Option("--uses", min=1, help="How many nodes may join with the token.")
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
    """
    ttl_s = parse_duration(ttl)

    def go() -> None:
        mid = _meshid(ctx, meshid)
        res = _client(ctx).json(
            "POST",
            f"/v1/meshes/{_seg(mid)}/invites",
            json_body={"ttl_s": ttl_s, "uses": uses, "strict": strict},
        )
        _print_json(res) if as_json else typer.echo(res["token"])

    _run(as_json, go)


@app.command("join-mesh", epilog="Example: smegctl join-mesh --token TOKEN --role client")
def join_mesh(
    ctx: typer.Context,
    token: Annotated[
        str,
        typer.Option("--token", "-t", help="Invitation token (smegctl invite on a member)."),
    ],
    wgport: WgPortOpt = None,
    endpoint: EndpointOpt = None,
    role: RoleOpt = None,
    keepalive: KeepaliveOpt = None,
    advertise_routes: AdvRoutesOpt = None,
    advertise_defaults: AdvDefaultsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Join a mesh with an invitation token and print the mesh id."""
    body = _mesh_opts(wgport, endpoint, role, keepalive, advertise_routes, advertise_defaults)
    body["token"] = token

    def go() -> None:
        res = _client(ctx, timeout=120).json("POST", "/v1/join", json_body=body)
        _print_json(res) if as_json else typer.echo(res["mesh_id"])

    _run(as_json, go)


@app.command("leave-mesh", epilog="Example: smegctl leave-mesh --meshid MESH")
def leave_mesh(ctx: typer.Context, meshid: OptMeshIdOpt = None, as_json: JsonOpt = False) -> None:
    """Leave a mesh: tell the other members and remove its WireGuard interface."""

    def go() -> None:
        mid = _meshid(ctx, meshid)
        res = _client(ctx, timeout=60).json("DELETE", f"/v1/meshes/{_seg(mid)}")
        _print_json({**res, "mesh_id": mid}) if as_json else typer.echo(f"left {mid}")

    _run(as_json, go)


@app.command("list-meshes", epilog="Example: smegctl list-meshes --json")
def list_meshes(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the meshes this node is in."""

    def go() -> None:
        res = _client(ctx).json("GET", "/v1/meshes")
        if as_json:
            _print_json(res)
            return
        if not res:
            typer.echo("not in any mesh (create one with: smegctl new-mesh)")
            return
        t = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("MESH", "INTERFACE", "ROLE", "ADDRESS", "PREFIX", "NODES"):
            t.add_column(col, overflow="fold", min_width=len(col))
        for m in res:
            t.add_row(
                m["mesh_id"],
                m.get("interface") or "-",
                m["role"],
                m["overlay_address"],
                m["prefix"],
                str(m["node_count"]),
            )
        _console().print(t)

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
        res = _client(ctx).json("GET", f"/v1/meshes/{_seg(_meshid(ctx, meshid))}")
        if as_json:
            _print_json(res)
            return
        now = time.time()
        _console().print(
            f"[bold]{res['mesh_id']}[/bold]  prefix {res['prefix']}"
            + (f"  interface {res['interface']}" if res.get("interface") else "")
        )
        t = Table(box=None, pad_edge=False, header_style="bold")
        for col in (
            "",
            "ALIAS",
            "ROLE",
            "ADDRESS",
            "ENDPOINT",
            "LAST SEEN",
            "HANDSHAKE",
            "RX / TX",
            "KEY",
        ):
            t.add_column(col, overflow="fold", min_width=min(len(col), 9) or 1)
        for n in res["nodes"]:
            role = n["role"]
            if role == "client" and n.get("assigned_peer"):
                role += f" (via {n['assigned_peer'][:8]})"
            alias = n.get("alias") or "-"
            if n.get("alias_conflict"):
                alias += " (clash)"
            if n.get("admin"):
                role += " ADMIN"
            t.add_row(
                "*" if n.get("is_self") else "",
                alias,
                role,
                n["overlay_address"],
                n.get("wg_endpoint") or "-",
                _ago(n.get("last_seen"), now),
                _dur(n.get("handshake_age_s")),
                (
                    f"{_bytes(n.get('rx_bytes', 0))} / {_bytes(n.get('tx_bytes', 0))}"
                    if n.get("wg_peer")
                    else "-"
                ),
                n["public_key"][:12] + "…",
            )
        _console().print(t)
        me = next((n for n in res["nodes"] if n.get("is_self")), None)
        if me is not None and me.get("alias_conflict"):
            _console().print(
                f"[yellow]alias {me.get('alias')!r} is also claimed by another node, which "
                "keeps it: choose another with put-alias[/yellow]"
            )
        if show_all and res.get("evicted"):
            et = Table(title="evicted", box=None, header_style="bold")
            for col in ("KEY", "ADDRESS", "BY", "WHEN", "CASCADE"):
                et.add_column(col, overflow="fold")
            for e in res["evicted"]:
                et.add_row(
                    e["public_key"][:12] + "…",
                    e["overlay_address"],
                    e["by"][:12] + "…",
                    _ago(e["time"], now),
                    "yes" if e["cascade"] else "no",
                )
            _console().print(et)
        if res.get("routes"):
            rt = Table(title="routes from this node", box=None, header_style="bold")
            for col in ("DESTINATION", "VIA", "PATH (meshes)", "LENGTH", "ALTERNATIVES"):
                rt.add_column(col, overflow="fold")
            for r in res["routes"]:
                rt.add_row(
                    r["destination"],
                    r.get("gateway_alias") or r["gateway"][:12] + "…",
                    " → ".join(r.get("path") or []) or "-",
                    str(r.get("path_length", "")),
                    str(len(r.get("alternatives") or [])),
                )
            _console().print(rt)

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
    fmt: Annotated[GraphFormat, typer.Option("--format", "-f", help="Output format.")] = (
        GraphFormat.dot
    ),
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to FILE instead of stdout.", dir_okay=False),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Draw the mesh (nodes, roles, clients under their peers, bridges, routes)."""

    def go() -> None:
        params = {"format": fmt.value}
        if meshid:
            params["meshid"] = check_mesh_id(meshid)
        data = _client(ctx, timeout=60).request("GET", "/v1/graph", params=params).content
        if output is not None:
            try:
                output.write_bytes(data)
            except OSError as e:
                raise CtlError(f"cannot write {output}: {e.strerror or e}") from None
            if as_json:
                _print_json({"format": fmt.value, "output": str(output), "bytes": len(data)})
            return
        if as_json:
            if fmt is GraphFormat.png:
                _print_json(
                    {
                        "format": "png",
                        "encoding": "base64",
                        "data": base64.b64encode(data).decode(),
                    }
                )
            else:
                _print_json({"format": fmt.value, "data": data.decode("utf-8", "replace")})
            return
        if fmt is GraphFormat.png and sys.stdout.isatty():
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
        res = _client(ctx).json("GET", f"/v1/meshes/{_seg(mid)}/query", params={"q": query})
        _print_json(res["result"])

    _run(as_json, go)


def _ok(ctx: typer.Context, as_json: bool, method: str, url: str, body: Any, msg: str) -> None:
    def go() -> None:
        res = _client(ctx).json(method, url, json_body=body)
        _print_json(res) if as_json else typer.echo(msg)

    _run(as_json, go)


@app.command("put-alias", epilog="Example: smegctl put-alias --meshid MESH --alias web1")
def put_alias(
    ctx: typer.Context,
    alias: Annotated[
        str,
        typer.Option(
            "--alias",
            help="DNS label (letters, digits, '-'): served as ALIAS.MESH.smeg. "
            "Stored in lower case.",
        ),
    ],
    meshid: OptMeshIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set this node's alias in a mesh, and print the alias as stored (lower case)."""

    def go() -> None:
        mid = _meshid(ctx, meshid)
        res = _client(ctx).json("PUT", f"/v1/meshes/{_seg(mid)}/alias", json_body={"alias": alias})
        stored = str(res.get("alias", alias.lower()))
        if as_json:
            _print_json({**res, "mesh_id": mid, "alias": stored})
            return
        note = f" (stored in lower case; you gave {alias!r})" if stored != alias else ""
        typer.echo(f"alias of this node in {mid}: {stored}{note}")

    _run(as_json, go)


@app.command(
    "put-description",
    epilog="Example: smegctl put-description --meshid MESH --description 'rack 3, eu-west'",
)
def put_description(
    ctx: typer.Context,
    description: Annotated[str, typer.Option("--description", help="Free text.")],
    meshid: OptMeshIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set this node's description in a mesh."""
    _ok_mesh(
        ctx,
        as_json,
        meshid,
        "PUT",
        "description",
        {"description": description},
        "description of this node in {mesh} set",
    )


@app.command(
    "set-service", epilog="Example: smegctl set-service --meshid MESH --service http --value 80"
)
def set_service(
    ctx: typer.Context,
    service: Annotated[str, typer.Option("--service", help="Service name.")],
    value: Annotated[str, typer.Option("--value", help="Service value.")],
    meshid: OptMeshIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a service (key/value) on this node in a mesh."""
    _ok_mesh(
        ctx,
        as_json,
        meshid,
        "PUT",
        f"services/{_seg(_service_key(service, as_json))}",
        {"value": value},
        f"service {service} set in {{mesh}}",
    )


@app.command(
    "delete-service", epilog="Example: smegctl delete-service --meshid MESH --service http"
)
def delete_service(
    ctx: typer.Context,
    service: Annotated[str, typer.Option("--service", help="Service name.")],
    meshid: OptMeshIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove a service of this node in a mesh."""
    _ok_mesh(
        ctx,
        as_json,
        meshid,
        "DELETE",
        f"services/{_seg(_service_key(service, as_json))}",
        None,
        f"service {service} deleted in {{mesh}}",
    )


@app.command(
    "watch",
    epilog="Examples: smegctl watch;  smegctl watch --meshid MESH --json | jq .type",
)
def watch(
    ctx: typer.Context,
    meshid: Annotated[
        str | None,
        typer.Option("--meshid", "-m", help="Only this mesh (default: all meshes)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per event and line (JSON Lines).")
    ] = False,
) -> None:
    """Print the node's events as they happen: members joining, leaving, pruned, changed...

    Reconnects after a lost connection, resuming where it stopped; a
    [bold]stream.dropped[/bold] event says how many events were missed. Ctrl-C ends it.
    """
    from smegmesh.cli import watch as w

    state = ctx.find_object(State)
    sock = state.socket if state else DEFAULT_CONTROL_SOCKET
    if meshid:  # a typo would otherwise wait for ever in silence
        _run(as_json, _client(ctx).request, "GET", f"/v1/meshes/{_seg(meshid)}")
    try:
        w.follow(
            w.unix_stream(sock),
            meshid=meshid,
            as_json=as_json,
            error_of=lambda r: _error_of(r)[0],
            where=sock,
        )
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    except BrokenPipeError:  # e.g. | head: no flush error at exit
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    except w.StreamError as e:
        _fail(str(e), as_json)
    except (httpx.TransportError, OSError):
        try:
            Client(sock).request("GET", "/v1/health", timeout=5)
        except CtlError as e:
            _fail(e.message, as_json)
        _fail(f"cannot open the event stream of smegd at {sock}", as_json)


def _seg(s: str) -> str:
    """Quote a URL path segment."""
    return quote(s, safe="")


def _ok_mesh(
    ctx: typer.Context,
    as_json: bool,
    meshid: str | None,
    method: str,
    sub: str,
    body: Any,
    msg: str,
) -> None:
    """Like ``_ok`` for ``/v1/meshes/{mesh}/SUB``, the mesh from ``--meshid`` or the only one;
    ``{mesh}`` in ``msg`` is replaced by its id."""

    def go() -> None:
        mid = _meshid(ctx, meshid)
        res = _client(ctx).json(method, f"/v1/meshes/{_seg(mid)}/{sub}", json_body=body)
        _print_json(res) if as_json else typer.echo(msg.replace("{mesh}", mid))

    _run(as_json, go)


def _service_key(key: str, as_json: bool) -> str:
    try:
        return check_service_key(key)
    except ClientError as e:
        _fail(e.message, as_json)


@app.command(
    "dns-help",
    epilog="Example: smegctl dns-help --listen 127.0.0.1:5353",
)
def dns_help(
    listen: Annotated[
        str, typer.Option("--listen", help="The daemon's dnsListen address (host:port).")
    ] = "127.0.0.1:5353",
    as_json: Annotated[
        bool, typer.Option("--json", help="The settings as JSON (for scripts).")
    ] = False,
) -> None:
    """How to point systemd-resolved, dnsmasq or resolv.conf at smegd's DNS for `smeg.`."""
    from smegmesh.dns.help import resolver_help, resolver_settings

    try:
        if as_json:
            typer.echo(json.dumps(resolver_settings(listen), indent=2))
        else:
            typer.echo(resolver_help(listen))
    except ValueError as e:
        sys.stderr.write(f"smegctl: --listen: {e}\n")
        raise typer.Exit(EXIT_ERROR) from None


@app.command(
    "ui",
    epilog="Example: smegctl ui --open (then open the printed URL; Ctrl-C stops it)",
)
def ui(
    ctx: typer.Context,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Loopback port (0: a free one).")
    ] = 0,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the dashboard in a browser.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """The web dashboard on 127.0.0.1, forwarding to smegd's socket (one-time login URL)."""
    from smegmesh.cli.ui import OneTimeToken, loopback_socket, serve

    c = _client(ctx, timeout=10.0)
    if not isinstance(c, Client):  # --api: that daemon serves its own dashboard
        _fail(f"with --api, open the daemon's own dashboard: {c.url.rstrip('/')}/ui/", as_json)
    _run(as_json, c.json, "GET", "/v1/health")
    try:
        sock = loopback_socket(port)
    except OSError as e:
        _fail(f"--port {port}: cannot listen on 127.0.0.1: {e.strerror or e}", as_json)
    token = OneTimeToken()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/ui/login?token={token.value}"
    if as_json:
        typer.echo(json.dumps({"url": url}))  # one line: a script reads it while we serve
    else:
        typer.echo(f"Dashboard of the smegd at {c.socket}:\n  {url}")
        typer.echo("(the link signs in once; Ctrl-C stops)")
    sys.stdout.flush()
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    serve(c.socket, sock, token)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.stderr.write("smegctl: interrupted\n")
        sys.exit(130)
    except Exception as e:  # last resort: never show a traceback
        sys.stderr.write(f"smegctl: unexpected error: {type(e).__name__}: {e}\n")
        sys.exit(EXIT_ERROR)


# Commands in their own modules register themselves on ``app`` when imported.
from smegmesh.cli import authority as _authority  # noqa: E402
from smegmesh.cli import devices as _devices  # noqa: E402
from smegmesh.cli import status as _status  # noqa: E402

_authority.register(app, sys.modules[__name__])
_devices.register(app, sys.modules[__name__])
_ = _status

if __name__ == "__main__":
    # Run the canonical module's app: ``python -m`` executes this file as
    # ``__main__``, a second copy, whereas command modules register on
    # ``smegmesh.cli.main.app``.
    from smegmesh.cli.main import main as _main

    _main()
