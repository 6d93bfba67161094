"""smegctl's own checks of its options and arguments, made before it talks to smegd.

A bad ``--api`` (or token file) is an error like any other, JSON on stdout with
``--json``; arguments that do not go together are a usage error (exit 2).
``watch`` over ``--api``: tests/proc/test_watch_api.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from api_fake import StubHandler, free_port, served_tcp, stub_http
from smegmesh.cli.main import app
from smegmesh.testbed.loopback import short_tmpdir

runner = CliRunner()

TOKEN = "0123456789abcdef0123456789abcdef"


# --------------------------------------------------------------------------- --json errors


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--api", "ftp://x", "list-meshes"], {}, "--api: 'ftp://x' is not an http"),
        (["list-meshes"], {"SMEG_API": "http://h/v1"}, "--api: 'http://h/v1': give only"),
        (
            ["--api", "DEAD", "--api-token-file", "/nonexistent/token", "status"],
            {},
            "--api-token-file: cannot read /nonexistent/token: ",
        ),
        (["--api", "ftp://x", "watch"], {}, "--api: 'ftp://x' is not an http"),
        (["--api", "ftp://x", "ui"], {}, "--api: 'ftp://x' is not an http"),
        (["--api", "ftp://x", "dns-help"], {}, "--api: 'ftp://x' is not an http"),
    ],
)
def test_a_bad_api_option_is_a_json_error_with_json(
    args: list[str], env: dict[str, str], message: str
) -> None:
    """--api and its token were checked as the global options were parsed, before
    the command's --json: a bad one printed nothing on stdout, and a script's
    ``json.loads(stdout)`` failed. Now the error is JSON on stdout as for any
    other (and one line on stderr, as without --json)."""
    args = [f"http://127.0.0.1:{free_port()}" if a == "DEAD" else a for a in args]
    env = {"SMEG_API": "", "SMEG_API_TOKEN": "", **env}
    r = runner.invoke(app, [*args, "--json"], env=env)
    assert r.exit_code == 1, (r.stdout, r.stderr)
    doc = json.loads(r.stdout)
    assert doc["error"]["message"].startswith(message), doc
    assert r.stderr == f"smegctl: {doc['error']['message']}\n"
    r = runner.invoke(app, args, env=env)
    assert (r.exit_code, r.stdout) == (1, "") and r.stderr.startswith(f"smegctl: {message}")


def test_a_bad_api_option_does_not_matter_to_a_command_that_does_not_use_it() -> None:
    r = runner.invoke(app, ["--api", "ftp://x", "dns-help", "--listen", "127.0.0.1:53"])
    assert r.exit_code == 0 and "127.0.0.1" in r.stdout, r.stderr


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("args", [["db1"], ["db1", "node-key", "--release"]])
def test_reserve_alias_without_node_or_release_is_a_usage_error(args: list[str]) -> None:
    """NODE or --release, not both nor neither: a usage error, exit 2 as for any
    other (cli/output.py: EXIT_USAGE), not 1, which says the daemon failed."""
    r = runner.invoke(app, ["reserve-alias", "--meshid", "m", *args])
    assert (r.exit_code, r.stdout) == (2, ""), r.stderr
    assert r.stderr == "smegctl: give NODE to reserve the alias, or --release to release it\n"
    r = runner.invoke(app, ["reserve-alias", "--meshid", "m", *args, "--json"])
    assert r.exit_code == 2 and "NODE" in json.loads(r.stdout)["error"]["message"]


# --------------------------------------------------------------------------- odd answers


class _Redirect(StubHandler):
    """Answers every request 307 (as a proxy, or FastAPI's slash redirect, would)."""

    def do_GET(self) -> None:
        self.send_response(307)
        self.send_header("Location", "https://elsewhere.example/v1/meshes")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.mark.parametrize("command", ["list-meshes", "watch"])
@pytest.mark.parametrize("via", ["socket", "api"])
def test_a_redirect_is_an_error_not_an_answer(
    via: str, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any status below 400 was taken for success: a 307 came out as "smegd sent
    an answer that is not JSON", and watch took it for an empty stream and
    reconnected for ever."""
    from smegmesh.cli import watch

    def no_retry(_: float) -> None:
        raise AssertionError("watch retried a redirect")

    monkeypatch.setattr(watch.time, "sleep", no_retry)
    unix = short_tmpdir() / "s.sock" if via == "socket" else None
    with stub_http(_Redirect, unix=unix) as where:
        option = "--api" if unix is None else "--socket"
        r = runner.invoke(app, [option, where, command, "--json"], env={"SMEG_API_TOKEN": ""})
    assert r.exit_code == 1, (r.stdout, r.stderr, r.exception)
    msg = json.loads(r.stdout)["error"]["message"]
    assert "HTTP 307" in msg and "https://elsewhere.example/v1/meshes" in msg, msg
    assert "not JSON" not in msg


def test_https_to_a_plain_http_api_says_to_use_http() -> None:
    """It said "cannot reach smegd at https://...: [SSL: WRONG_VERSION_NUMBER] wrong
    version number (_ssl.c:1006)"."""
    with served_tcp(TOKEN) as (base, _):
        url = base.replace("http://", "https://")
        r = runner.invoke(
            app, ["--api", url, "list-meshes", "--json"], env={"SMEG_API_TOKEN": TOKEN}
        )
    assert r.exit_code == 1, (r.stdout, r.stderr)
    msg = json.loads(r.stdout)["error"]["message"]
    assert msg == f"{url} does not speak TLS (an API without apiTlsCertificate?): try {base}"


def test_https_to_a_plain_http_api_says_so_whatever_openssl_calls_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hint looked for OpenSSL's words for a plain-text answer, which change
    from version to version: with other words, the user was told the
    certificate did not verify and to pass --api-ca. The server is asked now."""
    import ssl

    real = httpx.HTTPTransport.handle_request

    def other_words(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        try:
            return real(self, request)
        except httpx.ConnectError:
            if request.url.scheme != "https":
                raise
            cause = ssl.SSLError(1, "[SSL] some new name for it (_ssl.c:1000)")
            raise httpx.ConnectError(str(cause), request=request) from cause

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", other_words)
    with served_tcp(TOKEN) as (base, _):
        url = base.replace("http://", "https://")
        r = runner.invoke(
            app, ["--api", url, "list-meshes", "--json"], env={"SMEG_API_TOKEN": TOKEN}
        )
    assert r.exit_code == 1, (r.stdout, r.stderr)
    msg = json.loads(r.stdout)["error"]["message"]
    assert msg == f"{url} does not speak TLS (an API without apiTlsCertificate?): try {base}"


def test_http_to_a_tls_api_says_to_try_https(tmp_path: Path) -> None:
    """It said "talking to smegd at http://...: Server disconnected without sending
    a response." (the TLS server closes a plain-text request), naming nothing a
    user could act on."""
    from tls_helpers import self_signed

    with served_tcp(TOKEN, tls=self_signed(tmp_path)) as (base, _):
        url = base.replace("https://", "http://")
        r = runner.invoke(
            app, ["--api", url, "list-meshes", "--json"], env={"SMEG_API_TOKEN": TOKEN}
        )
    assert r.exit_code == 1, (r.stdout, r.stderr)
    msg = json.loads(r.stdout)["error"]["message"]
    assert msg.endswith(f"try {base}"), msg


class _WebPage(StubHandler):
    """Another web server on the port given: an HTML error page (as python -m http.server)."""

    def do_GET(self) -> None:
        page = b"<!DOCTYPE HTML>\n<html><head><title>Error response</title></head>" + b" " * 300
        self.send_response(404)
        self.send_header("Content-Type", "text/html;charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)


@pytest.mark.parametrize("via", ["socket", "api"])
def test_an_html_page_is_not_read_out_as_smegds_error(via: str) -> None:
    """It said "smegd answered HTTP 404: <!DOCTYPE HTML> <html lang=...": the page's
    markup, as if smegd had said it, with no hint that the address is wrong."""
    unix = short_tmpdir() / "s.sock" if via == "socket" else None
    with stub_http(_WebPage, unix=unix) as where:
        option = "--api" if unix is None else "--socket"
        r = runner.invoke(app, [option, where, "list-meshes"], env={"SMEG_API_TOKEN": "x" * 16})
    assert r.exit_code == 1, (r.stdout, r.stderr, r.exception)
    assert r.stderr == (
        f"smegctl: {where} answered HTTP 404 Not Found with a web page (text/html), "
        "not as smegd answers: is this smegd's address?\n"
    ), r.stderr


def test_socket_on_the_command_line_beats_smeg_api_in_the_environment() -> None:
    """With SMEG_API exported, `smegctl --socket OTHER status` talked to SMEG_API's
    daemon: a flag given on the command line lost to an environment variable."""
    from api_fake import served_unix

    dead = f"http://127.0.0.1:{free_port()}"
    with served_unix() as (sock, svc):
        svc.meshes.clear()
        env = {"SMEG_API": dead, "SMEG_API_TOKEN": "x" * 16}
        r = runner.invoke(app, ["--socket", str(sock), "list-meshes", "--json"], env=env)
        assert (r.exit_code, json.loads(r.stdout)) == (0, []), (r.stdout, r.stderr)
        # without --socket, SMEG_API is used (and here nobody answers there)
        r = runner.invoke(app, ["list-meshes"], env=env)
        assert r.exit_code == 1 and f"cannot reach smegd at {dead}" in r.stderr, r.stderr
        # --api given on the command line wins over --socket, as it always did
        r = runner.invoke(app, ["--socket", str(sock), "--api", dead, "list-meshes"], env=env)
        assert r.exit_code == 1 and dead in r.stderr, r.stderr
