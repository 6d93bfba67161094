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

from smegmesh.cli import authority as _authority
from smegmesh.cli import commands as _commands
from smegmesh.cli import commands_node as _commands_node
from smegmesh.cli import devices as _devices
from smegmesh.cli import status as _status
from smegmesh.cli.app import app
from smegmesh.cli.output import EXIT_ERROR, parse_duration

__all__ = ["app", "main", "parse_duration"]

#: Modules of commands, in the order ``smegctl --help`` lists their commands.
_MODULES = (_commands, _commands_node, _status, _authority, _devices)
app.registered_commands.sort(
    key=lambda c: _MODULES.index(sys.modules[getattr(c.callback, "__module__", "")])
)


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


if __name__ == "__main__":
    main()
