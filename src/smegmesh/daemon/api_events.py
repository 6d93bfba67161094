"""The event stream of the API (``GET /v1/events``, Server-Sent Events)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from smegmesh.daemon.events import KEEPALIVE_S, EventBus, Subscription, TooManySubscribers
from smegmesh.daemon.service import NodeService, ServiceError

__all__ = ["EVENTS_DESCRIPTION", "add_event_routes"]

EVENTS_DESCRIPTION = """\
A `text/event-stream` of this node's lifecycle events. Each message is
`id: <seq>`, `event: <type>` and `data: <json>`; the JSON object is
`{"seq", "time", "type", "mesh", "node", "alias", "detail"}` (`node`: the
member's WireGuard key as in `get-mesh`; `mesh`, `node` and `alias` may be
null). Types: `member.joined`, `member.left`, `member.pruned`,
`member.evicted`, `member.returned`, `member.changed` (detail: which of
alias, description, services, role changed, old and new),
`client.reassigned`, `tunnel.dead`, `tunnel.blackhole`, `route.changed`, `exit.changed`,
`handshake.up`,
`handshake.down`, `wg.peer_added`, `wg.peer_removed`, `mesh.joined`,
`mesh.left`, `config.reloaded`, and `stream.dropped` (`detail.missed`:
events this stream did not get, because the client resumed with a
`Last-Event-ID` older than the buffer of the last 1,024 events, or read too
slowly; its `id` is the last event missed).

Sequence numbers increase per daemon. A client that reconnects with the
`Last-Event-ID` header gets every later event still buffered. `meshid`
keeps the events of that mesh and those of no mesh. A comment line
`: keepalive` comes every 15 s. At most 32 streams at once (503 beyond).
"""


class _EventStream(StreamingResponse):
    """The event stream; its subscription ends with the response, however it ends
    (a client gone before the body starts would otherwise keep its slot)."""

    def __init__(self, sub: Subscription, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sub = sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._sub.close()


def add_event_routes(app: FastAPI, service: NodeService) -> None:
    """``GET /v1/events``: this node's lifecycle events as they happen."""

    @app.get(
        "/v1/events",
        tags=["v1"],
        summary="Lifecycle events as they happen (Server-Sent Events)",
        description=EVENTS_DESCRIPTION,
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    )
    async def events(
        meshid: Annotated[
            str | None,
            Query(min_length=1, max_length=128, description="Only events of this mesh"),
        ] = None,
        last_event_id: Annotated[
            str | None,
            Header(
                alias="Last-Event-ID",
                max_length=20,
                description="Resume after this event (sent by EventSource on reconnect)",
            ),
        ] = None,
    ) -> StreamingResponse:
        bus: EventBus | None = getattr(service, "events", None)
        if bus is None:
            raise ServiceError("unavailable", "this daemon has no event stream", 503)
        last: int | None = None
        if last_event_id is not None and last_event_id.strip():
            try:
                last = int(last_event_id.strip())
            except ValueError:
                raise ServiceError(
                    "invalid_argument",
                    f"Last-Event-ID: {last_event_id[:20]!r} is not an event number",
                    400,
                ) from None
            if last < 0:
                raise ServiceError("invalid_argument", "Last-Event-ID: must be >= 0", 400)
        try:
            sub = bus.subscribe(last_id=last, mesh=meshid)
        except TooManySubscribers as e:
            raise ServiceError("unavailable", str(e), 503) from None

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b": smegd event stream\n\n"
                while True:
                    ev = await sub.get(timeout=KEEPALIVE_S)
                    if ev is None:
                        if sub.closed:
                            return
                        yield b": keepalive\n\n"
                    else:
                        yield ev.sse()
            finally:
                sub.close()

        return _EventStream(
            sub,
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
