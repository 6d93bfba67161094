"""smegctl commands of this node in a mesh (alias, description, services), and the tools
around the daemon: the event stream, DNS set-up help, the dashboard."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import httpx
import typer

from smegmesh.cli.app import (
    JsonOpt,
    OptMeshIdOpt,
    _client_or_fail,
    _meshid,
    _ok_mesh,
    _run,
    _seg,
    _service_key,
    _smegd,
    app,
)
from smegmesh.cli.client import SERVICE_KEY_RULE, ClientError, SocketClient, check_mesh_id
from smegmesh.cli.output import EXIT_USAGE, _fail, _print_json, die_of_sigpipe
from smegmesh.cli.smegd import Smegd
from smegmesh.daemon.api_models import StatusResponse
from smegmesh.dns.help import DEFAULT_DNS_LISTEN

__all__ = ["dns_help", "put_alias", "ui", "watch"]

ServiceOpt = Annotated[
    str, typer.Option("--service", help=f"Service name: {SERVICE_KEY_RULE} (e.g. http).")
]


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
        res = _smegd(ctx).put_alias(mid, alias)
        stored = res.data.alias
        if as_json:
            _print_json({**res.raw, "mesh_id": mid, "alias": stored})
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
    description: Annotated[
        str,
        typer.Option(
            "--description", help="Free text, no control characters, at most 256 bytes of UTF-8."
        ),
    ],
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
    service: ServiceOpt,
    value: Annotated[
        str,
        typer.Option(
            "--value", help="Service value: text, no control characters, at most 256 bytes."
        ),
    ],
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
    service: ServiceOpt,
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

    if meshid is not None:  # checked as every command does, before it goes in a URL
        _run(as_json, check_mesh_id, meshid)
    c = _client_or_fail(ctx, as_json)  # the socket, or --api's URL, token and CA
    if meshid:  # a typo would otherwise wait for ever in silence
        _run(as_json, c.request, "GET", f"/v1/meshes/{_seg(meshid)}")
    try:
        w.follow(
            w.client_stream(c.http),
            meshid=meshid,
            as_json=as_json,
            error_of=c.answer_error,
            where=c.where,
        )
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    except BrokenPipeError:  # e.g. | head: as every command, killed by SIGPIPE (an OSError)
        die_of_sigpipe()
    except w.StreamError as e:
        _fail(str(e), as_json)
    except ClientError as e:  # --api-ca unusable
        _fail(e.message, as_json)
    except (httpx.TransportError, OSError):
        try:  # the one-line reason: no daemon, permissions, a TLS certificate...
            c.request("GET", "/v1/health", timeout=5)
        except ClientError as e:
            _fail(e.message, as_json)
        _fail(f"cannot open the event stream of smegd at {c.where}", as_json)


@app.command(
    "dns-help",
    epilog="Examples: smegctl dns-help;  smegctl dns-help --listen 127.0.0.1:5353",
)
def dns_help(
    ctx: typer.Context,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            help="The daemon's dnsListen address (IP:PORT or [IPv6]:PORT). Default: the "
            f"running smegd's, or {DEFAULT_DNS_LISTEN} when it cannot be reached.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The settings as JSON (for scripts).")
    ] = False,
) -> None:
    """How to point systemd-resolved, dnsmasq or resolv.conf at smegd's DNS for `smeg.`."""
    from smegmesh.dns.help import resolver_help, resolver_settings

    given = listen is not None
    if listen is None:
        listen = _daemon_dns_listen(ctx, as_json)
    try:
        if as_json:
            typer.echo(json.dumps(resolver_settings(listen), indent=2))
        else:
            typer.echo(resolver_help(listen))
    except ValueError as e:
        if not given:  # e.g. a host name in smegd's own dnsListen
            _fail(f"smegd's dnsListen {listen!r}: {e}; give --listen ADDRESS:PORT", as_json)
        _fail(f"--listen: {e}", as_json, code=EXIT_USAGE)


def _daemon_dns_listen(ctx: typer.Context, as_json: bool) -> str:
    """Where the running smegd's DNS listens: its ``dnsListen``.

    It printed the default address whatever the daemon had (walkthrough,
    eighteenth session). A daemon with no DNS is an error; one that cannot be
    reached gives the default, with a note on stderr.
    """
    smegd = Smegd(_client_or_fail(ctx, as_json, timeout=5.0))  # a bad --api is an error
    try:
        st = smegd.call(StatusResponse, "GET", "/v1/status").data
    except ClientError as e:
        sys.stderr.write(
            f"smegctl: note: {e.message}; assuming dnsListen {DEFAULT_DNS_LISTEN} (give --listen)\n"
        )
        return DEFAULT_DNS_LISTEN
    if not st.dns_listen:
        _fail(
            "smegd serves no DNS: set dnsListen in its configuration "
            f'(e.g. dnsListen: "{DEFAULT_DNS_LISTEN}") and restart it',
            as_json,
        )
    return str(st.dns_listen)


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

    c = _client_or_fail(ctx, as_json, timeout=10.0)
    if not isinstance(c, SocketClient):  # --api: that daemon serves its own dashboard
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
