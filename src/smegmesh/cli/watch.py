"""``smegctl watch``: follow the daemon's event stream (``GET /v1/events``).

Prints one line per event (or one JSON object per line with ``--json``). When
the connection drops (the daemon restarts, a read times out) it reconnects with
``Last-Event-ID``: the daemon replays what is still in its buffer and says with
``stream.dropped`` how many events were lost. Ctrl-C ends it quietly (exit 0).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from smegmesh.cli.client import failure_of

__all__ = ["SseParser", "follow"]

#: An event's data larger than this is a broken stream, not an event.
MAX_EVENT_BYTES = 1 << 20
#: The daemon sends a keepalive every 15 s: this much silence means a dead connection.
READ_TIMEOUT_S = 45.0
#: Waits between reconnection attempts (seconds), the last repeated.
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)

OpenStream = Callable[[dict[str, str], dict[str, str]], Any]


class StreamError(Exception):
    """The daemon answered with an error (not a lost connection): give up."""


class SseParser:
    """Incremental Server-Sent Events parser: feed lines, get (id, event, data) messages."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._size = 0
        self._event = "message"
        self._id: str | None = None

    def line(self, line: str) -> tuple[str | None, str, str] | None:
        if line == "":
            if not self._data:
                self._event, self._id = "message", None
                return None
            msg = (self._id, self._event, "\n".join(self._data))
            self._data, self._size, self._event, self._id = [], 0, "message", None
            return msg
        if line.startswith(":"):
            return None  # comment (keepalive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._size += len(value) + 1
            if self._size > MAX_EVENT_BYTES:
                raise StreamError("an event larger than 1 MiB: not a smegd event stream")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None


def events(resp: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON events of an open ``/v1/events`` response."""
    parser = SseParser()
    for line in resp.iter_lines():
        msg = parser.line(line)
        if msg is None:
            continue
        try:
            ev = json.loads(msg[2])
        except ValueError:
            continue
        if isinstance(ev, dict) and isinstance(ev.get("seq"), int):
            yield ev


def _print(ev: dict[str, Any], as_json: bool) -> None:
    if as_json:
        line = json.dumps(ev, separators=(",", ":"))
    else:
        from smegmesh.daemon.events import describe

        t = ev.get("time")
        stamp = time.strftime("%H:%M:%S", time.localtime(t)) if isinstance(t, int | float) else "?"
        line = f"{stamp}  {describe(ev)}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def follow(
    open_stream: OpenStream,
    *,
    meshid: str | None,
    as_json: bool,
    error_of: Callable[[httpx.Response], str],
    where: str,
) -> None:
    """Print events until interrupted; reconnect after a lost connection.

    ``open_stream(params, headers)`` is a context manager giving a streaming
    ``httpx.Response``. Raises :class:`StreamError` on an HTTP error, and
    ``httpx.TransportError`` if the very first connection fails.
    """
    params = {"meshid": meshid} if meshid else {}
    last: int | None = None
    connected_once = False
    failures = 0
    while True:
        headers = {"Accept": "text/event-stream"}
        if last is not None:
            headers["Last-Event-ID"] = str(last)
        try:
            with open_stream(params, headers) as resp:
                # an error, or a redirect (no stream to follow there, ever)
                failed = failure_of(resp, where, lambda r: (error_of(r), None))
                if failed is not None:
                    raise StreamError(failed[0])
                if connected_once and failures:
                    sys.stderr.write(f"smegctl: reconnected to smegd at {where}\n")
                    sys.stderr.flush()
                connected_once, failures = True, 0
                for ev in events(resp):
                    last = ev["seq"]
                    _print(ev, as_json)
        except BrokenPipeError:  # our stdout is gone (| head): the caller ends quietly
            raise
        except (httpx.TransportError, httpx.DecodingError, OSError):
            if not connected_once:
                raise
        # the stream ended (the daemon stopped) or broke: reconnect
        if failures == 0:
            sys.stderr.write(f"smegctl: lost the event stream of {where}; reconnecting\n")
            sys.stderr.flush()
        time.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
        failures += 1


def client_stream(http: Callable[[httpx.Timeout], httpx.Client]) -> OpenStream:
    """``open_stream`` over ``http(timeout)``: the ``http`` of smegctl's transport, the
    daemon's unix socket or, with ``--api``, its TCP API (URL, token, CA)."""

    @contextlib.contextmanager
    def open_stream(params: dict[str, str], headers: dict[str, str]) -> Iterator[httpx.Response]:
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=10.0)
        with (
            http(timeout) as c,
            c.stream("GET", "/v1/events", params=params, headers=headers) as resp,
        ):
            yield resp

    return open_stream
