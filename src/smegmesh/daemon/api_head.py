"""HEAD answered as GET without the body (RFC 9110 9.3.2), for smegd's HTTP listeners.

FastAPI's GET routes (``@app.get``, ``add_api_route(methods=["GET"])``) take
no HEAD: a probe (``curl -I``, a load balancer's health check) got 405. Starlette's
own ``Route`` adds HEAD to a GET route, and so does :class:`HeadAsGet` to every
route of an app, outermost: the app sees a GET (the token guard and every error
as for a GET), the server gets its status and headers (``Content-Length``
too) and an empty body. An answer that would not end (the event stream) ends
with its headers: anything the app sends after is dropped, and it is told the
client is gone. A 405 names HEAD in ``Allow`` wherever it names GET.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HeadAsGet"]

_END = {"type": "http.response.body", "body": b"", "more_body": False}


class HeadAsGet:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("method") != "HEAD":
            await self.app(scope, receive, _allow_head(send))
            return
        done = False

        async def _send(message: Message) -> None:
            nonlocal done
            if done or message["type"] != "http.response.start":
                return  # the body (or what comes after its end): a HEAD answer has none
            await _allow_head(send)(message)
            done = True
            await send(_END)

        async def _receive() -> Message:
            if done:
                return {"type": "http.disconnect"}
            return await receive()

        await self.app({**scope, "method": "GET"}, _receive, _send)


def _allow_head(send: Send) -> Send:
    """``send``, adding HEAD to the ``Allow`` of a 405 that names GET."""

    async def _send(message: Message) -> None:
        if message["type"] == "http.response.start" and message.get("status") == 405:
            headers = [
                (k, _with_head(v) if k.lower() == b"allow" else v)
                for k, v in message.get("headers", ())
            ]
            message = {**message, "headers": headers}
        await send(message)

    return _send


def _with_head(allow: bytes) -> bytes:
    methods = [m.strip() for m in allow.split(b",") if m.strip()]
    if b"GET" in methods and b"HEAD" not in methods:
        methods.append(b"HEAD")
    return b", ".join(methods)
