"""``smegctl``: command-line client of the local ``smegd`` API (unix socket).

A thin client: every command is one HTTP request to the daemon's ``/v1`` API over
its control socket (``--socket``, then ``$SMEG_SOCKET``, then
``/run/smegmesh/smegd.sock``). Every command has ``--json`` for machine output
on stdout. Errors are one line on stderr (``smegctl: ...``) and a non-zero exit
status; never a traceback.

The parts: :mod:`.app` (the Typer app, global options, shared flags),
:mod:`.client` (transports) and :mod:`.smegd` (the typed API over them),
:mod:`.output` and :mod:`.tables` (formatting), and the commands, which
register on the app in the order ``smegctl --help`` lists them:
:mod:`.commands`, :mod:`.commands_node`, :mod:`.status`, :mod:`.authority`,
:mod:`.devices`.
"""

from __future__ import annotations

import sys

from rich.console import Console

from smegmesh.cli import authority as _authority
from smegmesh.cli import commands as _commands
from smegmesh.cli import commands_node as _commands_node
from smegmesh.cli import devices as _devices
from smegmesh.cli import status as _status
from smegmesh.cli.app import app
from smegmesh.cli.output import (
    EXIT_ERROR,
    EXIT_USAGE,
    _print_json,
    die_of_sigpipe,
    error_json,
    parse_duration,
)

__all__ = ["app", "main", "parse_duration"]

#: Modules of commands, in the order ``smegctl --help`` lists their commands.
_MODULES = (_commands, _commands_node, _status, _authority, _devices)
app.registered_commands.sort(
    key=lambda c: _MODULES.index(sys.modules[getattr(c.callback, "__module__", "")])
)


def main() -> None:
    """Console-script entry point. Output to a pipe whose reader went away ends it
    as SIGPIPE ends ``git`` or ``ip`` (``die_of_sigpipe``; also in the app's group)."""
    # rich (our tables, typer's help) ends a write to a closed pipe with
    # SystemExit(1) of its own: its documented hook, for every console of smegctl
    Console.on_broken_pipe = _on_broken_pipe  # type: ignore[method-assign,assignment]
    try:
        _main()
    except BrokenPipeError:  # an error's JSON below, or what was left buffered
        die_of_sigpipe()


def _on_broken_pipe(_console: Console) -> None:
    die_of_sigpipe()


def _main() -> None:
    try:
        app()
    except SystemExit:
        if sys.stdout is not None:
            sys.stdout.flush()  # what is still buffered: a reader gone is told here
        raise
    except BrokenPipeError:
        raise
    except KeyboardInterrupt:
        sys.stderr.write("smegctl: interrupted\n")
        sys.exit(130)
    except UnicodeEncodeError as e:
        message = _not_utf8(e)
        if message is None:
            sys.stderr.write(f"smegctl: unexpected error: {type(e).__name__}: {e}\n")
            sys.exit(EXIT_ERROR)
        if "--json" in sys.argv[1:]:
            _print_json(error_json(message, EXIT_USAGE))
        sys.stderr.write(f"smegctl: {message}\n")
        sys.exit(EXIT_USAGE)
    except Exception as e:  # last resort: never show a traceback
        sys.stderr.write(f"smegctl: unexpected error: {type(e).__name__}: {e}\n")
        sys.exit(EXIT_ERROR)


def _not_utf8(e: UnicodeEncodeError) -> str | None:
    """What to say when text given on the command line was not UTF-8: Python passes its
    bytes on as lone surrogates (U+DC80-U+DCFF), which no request can carry."""
    bad = e.object[e.start : e.end] if isinstance(e.object, str) else ""
    if not bad or not all("\udc80" <= c <= "\udcff" for c in bad):
        return None
    byte = ord(bad[0]) - 0xDC00
    arg = next((a for a in sys.argv[1:] if bad[0] in a), None)
    shown = (
        arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") if arg else ""
    )
    what = f"'{shown[:60]}'" if arg else "text given"
    return f"{what} is not UTF-8 text (byte 0x{byte:02x}): smegctl and smegd take UTF-8 only"


if __name__ == "__main__":
    main()
