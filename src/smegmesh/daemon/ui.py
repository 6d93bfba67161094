"""The web dashboard (``/ui/``): login, sessions, and the page's assets.

Served by ``smegd`` on the TCP API (``apiListen``) and by ``smegctl ui`` on a
loopback port (see :mod:`smegmesh.cli.ui`). The page itself is static
(``static/ui/``: HTML, CSS, JS and the vendored Cytoscape.js, no build step) and
talks to the ordinary ``/v1`` API with a session cookie.

Sessions: ``POST /ui/login`` with the API token (a form field) creates a random
session id held here, sent as an ``HttpOnly``, ``SameSite=Strict`` cookie
(``Secure`` over TLS), valid for :data:`SESSION_TTL_S`; at most
:data:`MAX_SESSIONS` exist (the oldest is dropped). The API accepts a session
in place of the bearer token (:func:`authorized`) only with both halves: the
cookie and the session's key in the ``X-Smeg-CSRF`` header, on every request
(the event stream, which ``EventSource`` opens without headers, may carry the
key as ``?session=``). The key is given once, in the answer to the login
itself, and the page keeps it in its origin's ``localStorage``.

Why both: a browser sends a cookie to every port of a host, so a page of
another local user's server on another port of ``127.0.0.1`` got the cookie
of ``smegctl ui`` (and of a loopback ``apiListen``), and with it alone the
dashboard page, whose HTML held the key, and so the whole API. Storage is kept
per origin (scheme, host and port): the other port never sees the key.
"""

from __future__ import annotations

import hmac
import html
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

__all__ = [
    "CSRF_HEADER",
    "MAX_SESSIONS",
    "SESSION_COOKIE",
    "SESSION_PARAM",
    "SESSION_TTL_S",
    "SessionStore",
    "authorized",
    "create_ui_app",
    "mount_ui",
]

SESSION_COOKIE = "smeg_ui"
#: The header with the session's key (named for its first use: CSRF).
CSRF_HEADER = "x-smeg-csrf"
#: The query parameter with the session's key, on the event stream only.
SESSION_PARAM = "session"
EVENTS_PATH = "/v1/events"
#: Sessions held at once; logging in beyond this drops the oldest.
MAX_SESSIONS = 64
#: Lifetime of a session (seconds).
SESSION_TTL_S = 12 * 3600
#: Largest login form accepted (bytes); the token is well under this.
MAX_FORM_BYTES = 4096
STATIC_DIR = Path(__file__).parent / "static" / "ui"
_MEDIA = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".html": "text/html; charset=utf-8",
}
#: Headers on every page and asset: nothing from elsewhere, no framing, no referrer
#: (the one-time login URL of ``smegctl ui`` carries a token).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class Session:
    sid: str
    csrf: str
    expires: float


class SessionStore:
    """Sessions of the dashboard, bounded in number and lifetime."""

    def __init__(
        self,
        max_sessions: int = MAX_SESSIONS,
        ttl_s: float = SESSION_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def clear(self) -> None:
        """End every session (the API token changed: sessions opened with the old one)."""
        self._sessions.clear()

    def _expire(self) -> None:
        now = self.clock()
        for sid in [s.sid for s in self._sessions.values() if s.expires <= now]:
            del self._sessions[sid]

    def create(self) -> Session:
        self._expire()
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(24), self.clock() + self.ttl_s)
        self._sessions[s.sid] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        if not sid or len(sid) > 128:
            return None
        s = self._sessions.get(sid)
        if s is None:
            return None
        if s.expires <= self.clock():
            del self._sessions[sid]
            return None
        return s

    def drop(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)


def session_of(request: Request, store: SessionStore | None) -> Session | None:
    if store is None:
        return None
    return store.get(request.cookies.get(SESSION_COOKIE))


def session_allows(request: Request, store: SessionStore | None) -> bool:
    """A valid session cookie and the session's key, on every request (module docstring)."""
    s = session_of(request, store)
    if s is None:
        return False
    got = request.headers.get(CSRF_HEADER)
    if got is None and request.method == "GET" and request.url.path == EVENTS_PATH:
        got = request.query_params.get(SESSION_PARAM)
    return got is not None and hmac.compare_digest(got.encode(), s.csrf.encode())


def authorized(request: Request) -> bool:
    """True if ``request`` carries a valid dashboard session (see module docstring).

    The TCP API's bearer check calls this when the bearer token is missing or
    wrong; the store is the one :func:`mount_ui` put on the app.
    """
    return session_allows(request, getattr(request.app.state, "ui_sessions", None))


# --------------------------------------------------------------------------- pages


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _headers(resp: Response) -> Response:
    resp.headers.update(SECURITY_HEADERS)
    return resp


_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>smegmesh · sign in</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="static/ui.css"></head>
<body class="login-page">
<form class="login" method="post" action="login">
  <h1><span class="logo">◆</span> smegmesh</h1>
  <p class="muted">Enter the API token of this node (<code>apiToken</code> or
  <code>apiTokenFile</code> in <code>smegd.yaml</code>).</p>
  {message}
  <label for="token">API token</label>
  <input id="token" name="token" type="password" autocomplete="current-password" autofocus
   required maxlength="1024">
  <button type="submit">Sign in</button>
</form></body></html>
"""


#: The answer to a login: the session's key, kept by ``static/signin.js`` in this
#: origin's storage before the dashboard opens (never in a page a cookie gets).
_SIGNED_IN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>smegmesh · signed in</title>
<link rel="icon" href="data:,">
<meta name="smeg-session" content="{key}">
<script src="static/signin.js"></script></head>
<body class="login-page"><p>Signed in: <a href="./">open the dashboard</a>.</p></body></html>
"""


def _login_page(message: str = "", status: int = 200) -> Response:
    msg = f'<p class="error" id="login-error" role="alert">{html.escape(message)}</p>'
    body = _LOGIN.format(message=msg if message else "")
    return _headers(HTMLResponse(body, status_code=status))


async def _read_form(request: Request) -> dict[str, str] | None:
    """The urlencoded form of ``request``, or None when it exceeds MAX_FORM_BYTES."""
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > MAX_FORM_BYTES):
        return None
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(data.decode(), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items() if v}


def create_ui_app(
    store: SessionStore,
    check_token: Callable[[str], bool],
    *,
    url_login: bool = False,
) -> Starlette:
    """The ``/ui`` application (mount it at ``/ui``).

    ``check_token`` says whether a token typed on the login page is right.
    ``url_login`` also accepts ``GET login?token=...`` (``smegctl ui``'s
    one-time URL; the long-lived API token never goes into a URL).
    """
    assets = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in _MEDIA}
    index_html = (STATIC_DIR / "index.html").read_text()

    def _start_session(request: Request) -> Response:
        s = store.create()
        page = _SIGNED_IN.format(key=html.escape(s.csrf))
        resp = HTMLResponse(page, headers={"Cache-Control": "no-store"})
        resp.set_cookie(
            SESSION_COOKIE,
            s.sid,
            max_age=int(store.ttl_s),
            path="/",
            httponly=True,
            samesite="strict",
            secure=_secure(request),
        )
        return _headers(resp)

    async def index(request: Request) -> Response:
        s = session_of(request, store)
        if s is None:
            return _headers(RedirectResponse("login", status_code=303))
        return _headers(HTMLResponse(index_html))  # no secret in it (module docstring)

    async def login(request: Request) -> Response:
        if request.method == "GET":
            token = request.query_params.get("token")
            if url_login and token is not None:
                if check_token(token):
                    return _start_session(request)
                return _login_page(
                    "This login link is not valid (already used, or from an older "
                    "smegctl ui): run smegctl ui again.",
                    401,
                )
            return _login_page()
        form = await _read_form(request)
        if form is None:
            return _login_page("The form is too large.", 413)
        token = form.get("token", "")
        if not token:
            return _login_page("Enter the API token.", 400)
        if not check_token(token):
            return _login_page("Wrong token: this is not the API token of this node.", 401)
        return _start_session(request)

    async def logout(request: Request) -> Response:
        if session_allows(request, store):
            store.drop(request.cookies.get(SESSION_COOKIE))
        resp = RedirectResponse("login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return _headers(resp)

    async def static(request: Request) -> Response:
        p = assets.get(request.path_params["name"])
        if p is None:
            return _headers(Response("not found", status_code=404, media_type="text/plain"))
        resp = Response(p.read_bytes(), media_type=_MEDIA[p.suffix])
        return _headers(resp)

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/static/{name}", static, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def mount_ui(app: Any, token: str) -> SessionStore:
    """Serve the dashboard at ``/ui/`` of the TCP API ``app``, logging in with ``token``
    (the app's ``smeg_token`` when it has one: a reload may change it)."""
    store = SessionStore()

    def check(candidate: str) -> bool:
        expected = getattr(app, "smeg_token", None) or token
        return hmac.compare_digest(candidate.encode(), expected.encode())

    app.state.ui_sessions = store
    app.mount("/ui", create_ui_app(store, check), name="ui")
    # the API does not redirect slashes (create_app): the dashboard's /ui does
    app.add_route("/ui", lambda _: RedirectResponse("/ui/", 307), include_in_schema=False)
    return store
