"""smegctl's answers to a user's mistakes, checked before it talks to smegd.

With ``--json`` every error is JSON on stdout, ``{"error": {"code", "message"}}``,
usage errors included (exit 2), so that a script reads one shape whatever went
wrong; the message on stderr names the flag that was wrong.
"""

from __future__ import annotations

from typer.testing import CliRunner

from smegmesh.cli.main import app

runner = CliRunner()

#: No daemon answers here: a usage error must come before any call.
NO_SOCKET = "/nonexistent/smegd.sock"


def test_a_bad_ttl_names_the_flag() -> None:
    """It said "Invalid value: must be longer than 0 seconds", naming no flag."""
    for ttl, why in (("0", "longer than 0 seconds"), ("1y", "not a duration")):
        r = runner.invoke(app, ["--socket", NO_SOCKET, "invite", "-m", "m", "--ttl", ttl])
        assert r.exit_code == 2 and "'--ttl'" in r.stderr and why in r.stderr, r.stderr
