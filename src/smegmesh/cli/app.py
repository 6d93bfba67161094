"""The ``smegctl`` Typer app: its global options, shared flags, and how commands reach smegd.

Commands live in their own modules (:mod:`.commands`, :mod:`.commands_node`,
:mod:`.status`, :mod:`.authority`, :mod:`.devices`) and register on
:data:`app` when :mod:`smegmesh.cli.main` imports them. Every command has
``--json`` for machine output on stdout, errors too (``{"error": {"code",
"message"}}``, usage errors with code ``usage`` and exit 2); errors are one line on
stderr (``smegctl: ...``) and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from typer._click import ClickException, Context  # typer's own click (it vendors one)
from typer._click.core import ParameterSource
from typer.core import TyperGroup

from smegmesh.cli.client import (
    SOCKET_ENV,
    TOKEN_ENV,
    ClientError,
    RemoteClient,
    SocketClient,
    Transport,
    check_api_url,
    check_service_key,
    mesh_id_of,
    read_token_file,
    seg,
    token_from_env,
)
from smegmesh.cli.output import _fail, _print_json, die_of_sigpipe, error_json
from smegmesh.cli.smegd import Smegd
from smegmesh.daemon.defaults import DEFAULT_CONTROL_SOCKET, VERSION

__all__ = [
    "API_ENV",
    "JsonOpt",
    "MeshIdOpt",
    "OptMeshIdOpt",
    "State",
    "app",
    "choices",
    "mesh_call",
]

API_ENV = "SMEG_API"
#: The old name of the one error type of smegctl (see :class:`ClientError`).
CtlError = ClientError

_ARGV = "smegctl.argv"


class _Group(TyperGroup):
    """smegctl's click group: a usage error (a bad or missing flag or value, click's or a
    command's ``typer.BadParameter``) is also JSON on stdout when the command line has
    ``--json``, in the shape of every other error (code ``usage``, exit 2).

    Output to a pipe whose reader went away ends smegctl as SIGPIPE
    (:func:`~smegmesh.cli.output.die_of_sigpipe`), here where it is written
    (the help and ``--version`` while parsing, a command's output while
    invoking): typer would take it for a failure (status 1).
    """

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGV] = list(args)
        try:
            return super().parse_args(ctx, args)
        except ClickException as e:
            _usage_json(ctx, e)
            raise
        except BrokenPipeError:
            die_of_sigpipe()

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClickException as e:
            _usage_json(ctx, e)
            raise
        except BrokenPipeError:
            die_of_sigpipe()


def _usage_json(ctx: Context, e: ClickException) -> None:
    """``e`` as JSON on stdout if ``--json`` was given (before any ``--``); click then
    writes its own message on stderr and exits with ``e.exit_code``. Typer checks
    values with pydantic, whose "Value error, " no user needs to read: it goes."""
    e.message = e.message.replace("Value error, ", "")
    argv: list[str] = ctx.meta.get(_ARGV, [])
    if "--json" in argv[: argv.index("--") if "--" in argv else len(argv)]:
        _print_json(error_json(e.format_message(), e.exit_code))


app = typer.Typer(
    name="smegctl",
    cls=_Group,
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


def choices(name: str, literal: Any) -> type[StrEnum]:
    """A ``StrEnum`` of the values of ``literal`` (the API's type): Typer shows and checks them."""
    return StrEnum(name, {v: v for v in get_args(literal)})  # type: ignore[return-value]


class State:
    """The global options, as ``ctx.obj`` of every command.

    ``--api`` and its token are checked when a command first talks to the
    daemon (:func:`_client`), not as they are parsed: the command's ``--json``
    is known then, so their errors are JSON on stdout too.
    """

    def __init__(
        self,
        socket: str,
        api: str | None = None,
        api_token_file: Path | None = None,
        api_ca: Path | None = None,
    ) -> None:
        self.socket = socket
        self.api = api
        self.api_token_file = api_token_file
        self.api_ca = api_ca
        self._token: tuple[str | None] | None = None

    def api_token(self) -> str | None:
        """The token for ``--api``: ``--api-token-file``, else ``$SMEG_API_TOKEN`` (read once)."""
        if self._token is None:
            f = self.api_token_file
            self._token = (read_token_file(f) if f else token_from_env(),)
        return self._token[0]


def _client(ctx: typer.Context, timeout: float = 30.0) -> Transport:
    """How to reach the daemon the global options name; ``ClientError`` if they are bad."""
    state = ctx.find_object(State)
    if state is not None and state.api:  # --api URL: the daemon's TCP API
        url = check_api_url(state.api)
        return RemoteClient(url, state.api_token(), state.api_ca, timeout)
    return SocketClient(state.socket if state else DEFAULT_CONTROL_SOCKET, timeout=timeout)


def _client_or_fail(ctx: typer.Context, as_json: bool, timeout: float = 30.0) -> Transport:
    """:func:`_client` for a command that uses it outside :func:`_run`."""
    try:
        return _client(ctx, timeout)
    except ClientError as e:
        _fail(e.message, as_json, e.payload)


def _smegd(ctx: typer.Context, timeout: float = 30.0) -> Smegd:
    """The typed API of the daemon the global options name."""
    return Smegd(_client(ctx, timeout))


def _meshid(ctx: typer.Context, meshid: str | None) -> str:
    """``--meshid`` checked, or the node's only mesh when it was left out."""
    return mesh_id_of(_client(ctx), meshid)


_seg = seg

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
            f"or ${TOKEN_ENV}. A --socket on the command line overrides ${API_ENV}.",
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
    if ctx.get_parameter_source("api") is ParameterSource.ENVIRONMENT and (
        ctx.get_parameter_source("socket") is ParameterSource.COMMANDLINE
    ):
        api = None  # --socket given on the command line beats $SMEG_API
    ctx.obj = State(socket, api or None, api_token_file, api_ca)


def _run(as_json: bool, fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except ClientError as e:
        _fail(e.message, as_json, e.payload)


def _ok_mesh(
    ctx: typer.Context,
    as_json: bool,
    meshid: str | None,
    method: str,
    sub: str,
    body: Any,
    msg: str,
) -> None:
    """:func:`mesh_call` printing ``msg`` (``{mesh}`` replaced by the mesh id)."""
    mesh_call(
        ctx,
        meshid,
        as_json,
        method,
        sub,
        lambda _res, mid: typer.echo(msg.replace("{mesh}", mid)),
        body=body,
    )


def mesh_call(
    ctx: typer.Context,
    meshid: str | None,
    as_json: bool,
    method: str,
    sub: str,
    human: Callable[[Any, str], None],
    *,
    answer: Any = Any,
    body: dict[str, Any] | None = None,
) -> None:
    """The shape of most commands: one request to ``/v1/meshes/{mesh}/SUB`` (the mesh from
    ``--meshid`` or the only one); with ``--json`` the answer as received, else
    ``human(answer, mesh_id)`` with the answer validated as ``answer`` (an API model)."""

    def go() -> None:
        mid = _meshid(ctx, meshid)
        res = _smegd(ctx).call(answer, method, f"/v1/meshes/{seg(mid)}/{sub}", body=body)
        _print_json(res.raw) if as_json else human(res.data, mid)

    _run(as_json, go)


def _service_key(key: str, as_json: bool) -> str:
    try:
        return check_service_key(key)
    except ClientError as e:
        _fail(e.message, as_json)
