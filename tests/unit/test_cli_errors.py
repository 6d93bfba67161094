"""smegctl's answers to a user's mistakes, checked before it talks to smegd.

With ``--json`` every error is JSON on stdout, ``{"error": {"code", "message"}}``,
usage errors included (exit 2), so that a script reads one shape whatever went
wrong; the message on stderr names the flag that was wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smegmesh.cli.main import app

runner = CliRunner()

#: No daemon answers here: a usage error must come before any call.
NO_SOCKET = "/nonexistent/smegd.sock"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["invite", "--meshid", "m", "--ttl", "soon"], "--ttl"),
        (["invite", "--meshid", "m", "--ttl", "0"], "--ttl"),
        (["invite", "--meshid", "m", "--uses", "0"], "--uses"),
        (["new-mesh", "--wgport", "70000"], "--wgport"),
        (["new-mesh", "--role", "admin"], "--role"),
        (["admin", "promote", "node"], "action"),
        (["get-mesh", "--bogus"], "--bogus"),
        (["put-alias", "--meshid", "m"], "--alias"),
    ],
)
def test_a_usage_error_with_json_is_json_on_stdout(args: list[str], flag: str) -> None:
    """Before, stdout was empty (click's box on stderr only): a script with --json
    had nothing to parse."""
    r = runner.invoke(app, ["--socket", NO_SOCKET, *args, "--json"])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "usage" and flag in err["message"], err
    # without --json: nothing on stdout, the usual message on stderr
    r = runner.invoke(app, ["--socket", NO_SOCKET, *args])
    assert (r.exit_code, r.stdout) == (2, "") and flag in r.stderr


def test_a_bad_ttl_names_the_flag() -> None:
    """It said "Invalid value: must be longer than 0 seconds", naming no flag."""
    for ttl, why in (("0", "longer than 0 seconds"), ("1y", "not a duration")):
        r = runner.invoke(app, ["--socket", NO_SOCKET, "invite", "-m", "m", "--ttl", ttl])
        assert r.exit_code == 2 and "'--ttl'" in r.stderr and why in r.stderr, r.stderr


def test_dns_help_bad_listen_with_json() -> None:
    """It wrote the error on stderr only, whatever --json said."""
    args = ["--socket", NO_SOCKET, "dns-help", "--listen", "[::1]:99999", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "usage", err
    assert err["message"].startswith("--listen: port must be an integer"), err
    assert r.stderr == f"smegctl: {err['message']}\n"


@pytest.mark.parametrize("listen", ["bogus", "bogus:53", "localhost:5353"])
def test_dns_help_listen_must_be_an_address(listen: str) -> None:
    """--listen bogus gave resolvectl, dnsmasq and unbound lines with host "bogus",
    port 53, which none of them takes: they need the address DNS listens on."""
    r = runner.invoke(app, ["--socket", NO_SOCKET, "dns-help", "--listen", listen, "--json"])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    err = json.loads(r.stdout)["error"]
    host = listen.split(":")[0]
    assert err["code"] == "usage", err
    assert err["message"].startswith(f"--listen: {host!r} is not an IP address"), err
    for ok in ("127.0.0.1:5353", "[::1]:5300", "::1", "[fe80::1%eth0]:53", "0.0.0.0:53"):
        r = runner.invoke(app, ["--socket", NO_SOCKET, "dns-help", "--listen", ok])
        assert r.exit_code == 0, (ok, r.stderr)


def test_revoke_invite_with_an_empty_id_is_a_usage_error() -> None:
    """An empty TOKEN-ID made the URL .../invites/, which smegd redirects (307):
    smegctl said "smegd sent an answer that is not JSON"."""
    r = runner.invoke(app, ["--socket", NO_SOCKET, "revoke-invite", "-m", "m", "", "--json"])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "usage" and "TOKEN-ID" in err["message"], err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token", ""], "--token: the invitation token is empty"),
        (["--token", "  "], "--token: the invitation token is empty"),
        (["-t", "x", "--token-file", "/dev/null"], "give only one of --token and --token-file"),
        ([], "give the invitation as --token TOKEN, --token - or --token-file FILE"),
    ],
)
def test_join_mesh_token_flags_are_usage_errors(args: list[str], message: str) -> None:
    """--token '' went to smegd, which said "token: String should have at least 1
    character"; --token with --token-file said to give one of the three ways."""
    r = runner.invoke(app, ["--socket", NO_SOCKET, "join-mesh", *args, "--json"])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    err = json.loads(r.stdout)["error"]
    assert err == {"code": "usage", "message": message}, err
    r = runner.invoke(app, ["--socket", NO_SOCKET, "join-mesh", *args])
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"smegctl: {message}\n")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("", "the path of smegd's control socket is empty (--socket or $SMEG_SOCKET)"),
        ("file", "{p} is a regular file, not a unix socket (give smegd's controlSocket)"),
        ("dir", "{p} is a directory, not a unix socket (give smegd's controlSocket)"),
    ],
)
def test_a_socket_path_that_cannot_be_a_socket_says_so(
    tmp_path: Path, make: str, message: str
) -> None:
    """An empty --socket, or one naming a regular file, was "cannot reach smegd at
    ... (is it running?...)": starting smegd would not have helped."""
    p = tmp_path / "smegd.sock"
    if make == "file":
        p.write_text("not a socket")
    elif make == "dir":
        p.mkdir()
    sock = str(p) if make else ""
    r = runner.invoke(app, ["--socket", sock, "list-meshes", "--json"])
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert json.loads(r.stdout)["error"]["message"] == message.format(p=p), r.stdout


@pytest.mark.parametrize("command", ["set-service", "delete-service"])
def test_service_help_gives_the_allowed_characters(command: str) -> None:
    """--service's help said "Service name." only; a wrong one was refused after the fact."""
    r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert r.exit_code == 0, r.stderr
    assert "1-64 characters of letters, digits and . _ -" in r.stdout, r.stdout
    if command == "set-service":  # what smegd refuses in a value
        assert "no control characters" in r.stdout, r.stdout


@pytest.mark.parametrize("meshid", ["../x", "a/b", "BAD", ""])
def test_watch_checks_its_mesh_id_like_every_command(meshid: str) -> None:
    """``watch --meshid ../x`` said "not found: the request names no resource smegd
    knows" (the id was put in a URL unchecked), and ``--meshid ''`` watched every mesh."""
    r = runner.invoke(app, ["--socket", NO_SOCKET, "watch", "--meshid", meshid])
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"smegctl: invalid mesh id '{meshid}': "), r.stderr
    r = runner.invoke(app, ["--socket", NO_SOCKET, "watch", "--meshid", meshid, "--json"])
    assert json.loads(r.stdout)["error"]["message"].startswith("invalid mesh id"), r.stdout


@pytest.mark.parametrize("as_json", [False, True])
def test_text_that_is_not_utf8_is_named(
    as_json: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Latin-1 'café' (byte 0xe9; Python hands it on as '\\udce9') said "unexpected
    error: UnicodeEncodeError: 'utf-8' codec can't encode character '\\udce9' in
    position 3: surrogates not allowed"."""
    from smegmesh.cli.main import main

    cafe = b"caf\xe9".decode("utf-8", "surrogateescape")
    args = ["put-description", "-m", "m", "--description", cafe] + ["--json"] * as_json
    monkeypatch.setattr("sys.argv", ["smegctl", "--socket", NO_SOCKET, *args])
    with pytest.raises(SystemExit) as ei:
        main()
    assert ei.value.code == 2
    out, err = capsys.readouterr()
    msg = "'caf\\xe9' is not UTF-8 text (byte 0xe9): smegctl and smegd take UTF-8 only"
    assert err == f"smegctl: {msg}\n"
    if as_json:
        assert json.loads(out) == {"error": {"code": "usage", "message": msg}}
    else:
        assert out == ""


@pytest.mark.parametrize(
    ("args", "want"),
    [
        (["new-mesh", "--role", "admin"], "'admin' is not one of 'peer', 'client'."),
        (["admin", "promote", "node"], "'promote' is not one of 'add', 'remove'."),
        (
            ["set-invite-policy", "everyone"],
            "'everyone' is not one of 'admins', 'peers', 'members'.",
        ),
    ],
)
def test_a_bad_choice_says_so_without_pydantics_words(args: list[str], want: str) -> None:
    """It said "Invalid value for '--role': Value error, 'admin' is not one of ...":
    the words of the validation library under the CLI, not smegctl's."""
    r = runner.invoke(app, ["--socket", NO_SOCKET, *args, "--json"])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    msg = json.loads(r.stdout)["error"]["message"]
    assert msg.endswith(": " + want) and "Value error" not in msg, msg
    assert "Value error" not in r.stderr, r.stderr
