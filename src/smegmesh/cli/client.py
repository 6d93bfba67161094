"""How smegctl talks to smegd: its unix socket (:class:`SocketClient`) or, with
``smegctl --api URL``, a daemon's TCP API (:class:`RemoteClient`).

The token comes from ``--api-token-file FILE`` or else ``$SMEG_API_TOKEN``;
TLS (``https://``) is verified against the system trust store, or against
``--api-ca FILE`` for a self-signed certificate. Every failure is one line a
person can act on: a wrong token (401), a host that does not answer, a
certificate that does not verify, a redirect (which smegd never sends).

Also here: :func:`mesh_id_of`, which lets ``--meshid`` be left out when the
node is in exactly one mesh, and the checks of ids before they go into a URL.
"""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from smegmesh.core.addressing import InvalidMeshId, shown, validate_mesh_id
from smegmesh.core.record import SERVICE_KEY_RE
from smegmesh.daemon.config.files import MAX_TOKEN_FILE_BYTES
from smegmesh.daemon.defaults import DEFAULT_CONFIG_PATH

__all__ = [
    "MAX_TOKEN_FILE_BYTES",
    "SERVICE_KEY_RULE",
    "SOCKET_ENV",
    "TOKEN_ENV",
    "ClientError",
    "RemoteClient",
    "SocketClient",
    "Transport",
    "check_api_url",
    "check_mesh_id",
    "check_service_key",
    "error_of",
    "mesh_id_of",
    "read_token_file",
    "redirect_error",
    "seg",
    "token_from_env",
]

TOKEN_ENV = "SMEG_API_TOKEN"
SOCKET_ENV = "SMEG_SOCKET"


class ClientError(Exception):
    """Raised here; ``cli.main`` reports it as ``smegctl: <message>``."""

    def __init__(self, message: str, payload: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.payload = payload


def error_of(resp: httpx.Response) -> tuple[str, dict[str, Any] | None]:
    """The daemon's one-line error message (and its JSON body) from an error answer."""
    try:
        body = resp.json()
        return str(body["error"]["message"]), body
    except (ValueError, KeyError, TypeError):
        text = " ".join(resp.text.split())[:200]
        return f"smegd answered HTTP {resp.status_code}: {text or resp.reason_phrase}", None


def redirect_error(resp: httpx.Response, where: str) -> str:
    """The error for a 3xx answer: smegd never redirects (a proxy, or not smegd), and
    smegctl follows no redirect."""
    to = resp.headers.get("location")
    to_s = f" to {shown(to, 200)}" if to else ""
    return (
        f"{where} answered HTTP {resp.status_code}, a redirect{to_s}: smegd never redirects "
        "and smegctl follows none (is this smegd's address?)"
    )


def web_page_error(resp: httpx.Response, where: str) -> str | None:
    """The error for an HTML page (another web server at that address): smegd's errors
    are JSON, and a page's markup read out as smegd's message helps no one."""
    kind = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("text/html", "application/xhtml+xml"):
        return None
    return (
        f"{where} answered HTTP {resp.status_code} {resp.reason_phrase} with a web page "
        f"({kind}), not as smegd answers: is this smegd's address?"
    )


def failure_of(
    resp: httpx.Response,
    where: str,
    error: Callable[[httpx.Response], tuple[str, dict[str, Any] | None]] = error_of,
) -> tuple[str, dict[str, Any] | None] | None:
    """Why an answer is no success, as ``error_of`` says it: ``error(resp)`` for
    4xx and 5xx (the body read first, a streamed answer's too), the redirect's
    error for 3xx (smegd never redirects); None for a success."""
    if resp.status_code >= 400:
        resp.read()
        page = web_page_error(resp, where)
        return (page, None) if page is not None else error(resp)
    if resp.status_code >= 300:
        return redirect_error(resp, where), None
    return None


def read_token_file(path: Path, flag: str = "--api-token-file") -> str:
    """The token in ``path`` (surrounding white space removed); ``flag`` names it in errors."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as e:
        raise ClientError(f"{flag}: cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_TOKEN_FILE_BYTES:
        raise ClientError(f"{flag}: {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes")
    token = raw.decode("utf-8", "replace").strip()
    if not token or any(c.isspace() for c in token):
        raise ClientError(f"{flag}: {path} must hold one token on one line")
    return token


def check_api_url(url: str) -> str:
    """``http[s]://host[:port]`` without a path; the normalised base URL."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        _ = parts.port  # raises on a bad port
    except ValueError as e:
        raise ClientError(f"--api: invalid URL {url!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ClientError(f"--api: {url!r} is not an http:// or https:// URL with a host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ClientError(f"--api: {url!r}: give only scheme, host and port")
    return f"{parts.scheme}://{parts.netloc}"


def _not_a_socket(path: str) -> str | None:
    """What is wrong with ``path`` when it cannot be a socket at all (not just absent)."""
    if not path:
        return f"the path of smegd's control socket is empty (--socket or ${SOCKET_ENV})"
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISSOCK(mode):
        return None
    kind = (
        "a directory"
        if stat.S_ISDIR(mode)
        else "a regular file"
        if stat.S_ISREG(mode)
        else "a special file"
    )
    return f"{path} is {kind}, not a unix socket (give smegd's controlSocket)"


class SocketClient:
    """HTTP over the daemon's unix socket."""

    def __init__(self, socket: str, timeout: float = 30.0) -> None:
        self.socket = socket
        self.timeout = timeout

    @property
    def where(self) -> str:
        """The daemon, as error messages name it."""
        return self.socket

    def http(self, timeout: httpx.Timeout) -> httpx.Client:
        """An ``httpx.Client`` to the daemon (for a stream: ``smegctl watch``)."""
        transport = httpx.HTTPTransport(uds=self.socket)
        return httpx.Client(transport=transport, base_url="http://smegd", timeout=timeout)

    def answer_error(self, resp: httpx.Response) -> str:
        """The one-line message of an error answer."""
        return error_of(resp)[0]

    def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        t = httpx.Timeout(timeout or self.timeout, connect=5.0)
        try:
            with self.http(t) as c:
                resp = c.request(method, url, json=json_body, params=params)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as e:
            if isinstance(e.__cause__ or e.__context__, PermissionError) or "ermission" in str(e):
                raise ClientError(
                    f"permission denied on {self.socket} (run as root, or as a member of "
                    "the socket's group)"
                ) from None
            raise ClientError(
                _not_a_socket(self.socket)
                or f"cannot reach smegd at {self.socket} (is it running? start it with: "
                f"smegd {DEFAULT_CONFIG_PATH})"
            ) from None
        except PermissionError:
            raise ClientError(f"permission denied on {self.socket} (run as root)") from None
        except httpx.TimeoutException:
            raise ClientError(f"smegd at {self.socket} did not answer within {t.read:g}s") from None
        except httpx.HTTPError as e:
            raise ClientError(f"talking to smegd at {self.socket} failed: {e}") from None
        failed = failure_of(resp, self.socket)
        if failed is not None:
            raise ClientError(*failed)
        return resp

    def json(self, method: str, url: str, **kw: Any) -> Any:
        resp = self.request(method, url, **kw)
        try:
            return resp.json()
        except ValueError:
            raise ClientError("smegd sent an answer that is not JSON") from None


def _cert_failure(e: httpx.ConnectError) -> bool:
    """Whether the TLS handshake failed on the server's certificate."""
    cause = e.__cause__ or e.__context__
    return isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE" in str(e)


def _speaks_plain_http(url: str) -> bool:
    """Whether ``url``'s server answers a plain HTTP request (2 s at most).

    Asked after a TLS handshake failed other than on a certificate: OpenSSL
    names a plain-text answer differently from version to version
    (``WRONG_VERSION_NUMBER``, ``RECORD_LAYER_FAILURE``, ...).
    """
    try:
        with httpx.Client(timeout=2.0) as c:
            c.get(url.rstrip("/") + "/")
    except httpx.HTTPError:
        return False
    return True


class RemoteClient:
    """HTTP(S) to a daemon's ``apiListen``, with its bearer token. Same interface as
    :class:`SocketClient`."""

    def __init__(
        self,
        url: str,
        token: str | None,
        ca_file: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = check_api_url(url)
        self.token = token
        self.ca_file = ca_file
        self.timeout = timeout

    def _fail(self, message: str, payload: dict[str, Any] | None = None) -> ClientError:
        return ClientError(message, payload)

    @property
    def where(self) -> str:
        """The daemon, as error messages name it."""
        return self.url

    def http(self, timeout: httpx.Timeout) -> httpx.Client:
        """An ``httpx.Client`` to the daemon: its URL, the token, TLS checked against
        ``--api-ca`` (``ClientError`` if that file is unusable)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(
            base_url=self.url, timeout=timeout, verify=self._verify(), headers=headers
        )

    def answer_error(self, resp: httpx.Response) -> str:
        """The one-line message of an error answer (401: what was wrong with the token)."""
        if resp.status_code == 401:
            how = (
                "the token was refused"
                if self.token
                else f"no token given (set {TOKEN_ENV} or --api-token-file FILE)"
            )
            return f"smegd at {self.url} answered 401 Unauthorized: {how}"
        return error_of(resp)[0]

    def _error_of(self, resp: httpx.Response) -> tuple[str, dict[str, Any] | None]:
        """``error_of``, but a 401 says what was wrong with the token (no body)."""
        return (self.answer_error(resp), None) if resp.status_code == 401 else error_of(resp)

    def _verify(self) -> ssl.SSLContext | bool:
        if not self.url.startswith("https:"):
            return True
        try:
            if self.ca_file is not None:
                return ssl.create_default_context(cafile=str(self.ca_file))
            return ssl.create_default_context()
        except (OSError, ssl.SSLError) as e:
            raise self._fail(
                f"--api-ca: cannot use {self.ca_file}: {getattr(e, 'strerror', None) or e}"
            ) from None

    def _connect_failure(self, e: httpx.ConnectError) -> ClientError:
        """What a failed connection means: a certificate, plain HTTP behind https://, or none."""
        if _cert_failure(e):
            return self._fail(
                f"TLS certificate of {self.url} does not verify ({_short(e)}); "
                "for a self-signed certificate pass --api-ca FILE"
            )
        if self.url.startswith("https:") and (
            isinstance(e.__cause__ or e.__context__, ssl.SSLError) or "SSL" in str(e)
        ):
            plain = "http:" + self.url.removeprefix("https:")
            if _speaks_plain_http(plain):  # asked: OpenSSL's words for it vary
                return self._fail(
                    f"{self.url} does not speak TLS (an API without apiTlsCertificate?): "
                    f"try {plain}"
                )
            return self._fail(f"TLS handshake with {self.url} failed: {_short(e)}")
        return self._fail(f"cannot reach smegd at {self.url}: {_short(e)}")

    def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        t = httpx.Timeout(timeout or self.timeout, connect=10.0)
        try:
            with self.http(t) as c:
                resp = c.request(method, url, json=json_body, params=params)
        except httpx.ConnectError as e:
            raise self._connect_failure(e) from None
        except httpx.TimeoutException:
            raise self._fail(f"smegd at {self.url} did not answer within {t.read:g}s") from None
        except httpx.RemoteProtocolError as e:
            if self.url.startswith("http:"):  # a TLS server closes a plain-text request
                tls = "https:" + self.url.removeprefix("http:")
                raise self._fail(
                    f"smegd at {self.url} closed the connection without an answer "
                    f"({_short(e)}); if its API serves TLS (apiTlsCertificate), try {tls}"
                ) from None
            raise self._fail(f"talking to smegd at {self.url} failed: {_short(e)}") from None
        except httpx.HTTPError as e:
            raise self._fail(f"talking to smegd at {self.url} failed: {_short(e)}") from None
        failed = failure_of(resp, self.url, self._error_of)
        if failed is not None:
            raise self._fail(*failed)
        return resp

    def json(self, method: str, url: str, **kw: Any) -> Any:
        resp = self.request(method, url, **kw)
        try:
            return resp.json()
        except ValueError:
            raise self._fail("smegd sent an answer that is not JSON") from None


def _short(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


# --------------------------------------------------------------------------- ids


def check_mesh_id(mesh_id: str) -> str:
    """``mesh_id`` if valid, else :class:`ClientError` about the input (never about URLs)."""
    try:
        return validate_mesh_id(mesh_id)
    except InvalidMeshId as e:
        raise ClientError(str(e)) from None


#: What SERVICE_KEY_RE allows, in words (the error below, and --service's help).
SERVICE_KEY_RULE = "1-64 characters of letters, digits and . _ -"


def check_service_key(key: str) -> str:
    if SERVICE_KEY_RE.fullmatch(key) is None:
        raise ClientError(f"invalid service name {shown(key)}: {SERVICE_KEY_RULE}")
    return key


def mesh_id_of(client: Any, given: str | None) -> str:
    """``given`` (checked), or the node's only mesh; an error listing them otherwise."""
    if given is not None:
        return check_mesh_id(given)
    meshes = [str(m["mesh_id"]) for m in client.json("GET", "/v1/meshes")]
    if len(meshes) == 1:
        return meshes[0]
    if not meshes:
        raise ClientError("this node is in no mesh (create one with: smegctl new-mesh)")
    raise ClientError(
        f"this node is in {len(meshes)} meshes; choose one with --meshid: " + ", ".join(meshes)
    )


def seg(s: str) -> str:
    """Quote a URL path segment."""
    return quote(s, safe="")


def token_from_env() -> str | None:
    tok = os.environ.get(TOKEN_ENV, "").strip()
    return tok or None


#: Either way of talking to smegd: the same ``request``/``json`` interface.
Transport = SocketClient | RemoteClient
