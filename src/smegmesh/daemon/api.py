"""The local REST API of ``smegd`` (FastAPI), and helpers to serve it.

``create_app(service)`` builds the app over a :class:`NodeService`. It is served
on the control unix socket (no token; the socket's mode 0600 is the access
control) and, if ``apiListen`` is configured, on TCP with a bearer token.

Before any route runs, an outer guard (:class:`_Guard`) checks the bearer
token from the request's headers (every path but ``/v1/health``, including the
OpenAPI pages) and the body's size: a request without the token is answered
401 before a byte of its body is read, and a body over ``max_body`` bytes is
refused 413 (from its ``Content-Length`` at once, or as soon as a chunked body
passes the limit), so no request can make the daemon buffer more than that.

Every error is JSON ``{"error": {"code": ..., "message": ...}}``: service errors
with their status, validation errors 422 naming the field, unknown routes 404 (a
trailing slash too: the API never redirects), and anything unexpected 500 with
code ``internal`` (logged, no traceback sent).
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from fastapi import FastAPI

from smegmesh.daemon.api_authority import add_authority_routes
from smegmesh.daemon.api_devices import add_device_routes
from smegmesh.daemon.api_events import add_event_routes
from smegmesh.daemon.api_guard import _App, _CatchAll, add_error_handlers
from smegmesh.daemon.api_models import (
    ErrorResponse,
)
from smegmesh.daemon.api_proto import add_proto_routes
from smegmesh.daemon.api_routes import add_mesh_routes, add_node_routes, add_status_routes
from smegmesh.daemon.api_serve import ApiServer, serve_tcp, serve_unix
from smegmesh.daemon.config import VERSION
from smegmesh.daemon.service import NodeService
from smegmesh.daemon.ui import mount_ui

__all__ = [
    "MAX_BODY_BYTES_TCP",
    "MAX_BODY_BYTES_UNIX",
    "ApiServer",
    "create_app",
    "serve_tcp",
    "serve_unix",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest request body on the TCP API (the largest legal one is a few KB).
MAX_BODY_BYTES_TCP = 64 * 1024
#: Largest request body on the unix socket (generous: only a local bug could exceed it).
MAX_BODY_BYTES_UNIX = 1024 * 1024

_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "Error"},
    "5XX": {"model": ErrorResponse, "description": "Error"},
}


def create_app(
    service: NodeService, token: str | None = None, *, max_body: int | None = None
) -> FastAPI:
    """Build the API over ``service``; with ``token`` every route needs ``Bearer <token>``.

    With a token (the TCP API) only ``/v1/health`` answers without it, and
    then with the status alone. Bodies over ``max_body`` bytes are refused
    (default: :data:`MAX_BODY_BYTES_TCP` with a token, else
    :data:`MAX_BODY_BYTES_UNIX`).
    """
    if max_body is None:
        max_body = MAX_BODY_BYTES_TCP if token else MAX_BODY_BYTES_UNIX
    app = _App(
        token=token,
        max_body=max_body,
        title="smegd",
        summary="Local API of the smegmesh daemon",
        version=VERSION,
        responses=_ERRORS,
        # .../invites/ (an empty id) is a 404 in JSON, not a 307 a client takes for success
        redirect_slashes=False,
    )
    app.add_middleware(_CatchAll)
    if token:
        # the dashboard at /ui/; its session cookie passes the guard
        app._guard.ui_sessions = mount_ui(app, token)
    add_error_handlers(app)
    add_mesh_routes(app, service)
    add_authority_routes(app, service)
    add_device_routes(app, service)
    add_node_routes(app, service)
    add_event_routes(app, service)
    add_status_routes(app, service)
    add_proto_routes(app, service)
    return app
