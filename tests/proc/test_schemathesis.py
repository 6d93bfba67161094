"""Schemathesis against a real ``smegd`` over its TCP API (bearer token).

The schema is the OpenAPI document the running daemon serves (checked equal to
the one built from the code, from which the test cases are generated at
collection time). Every operation gets bounded, generated requests, positive and
negative; the checks: no 5xx, responses conform to the schema (status code,
content type, body), and invalid input is rejected. Path parameters are
sometimes replaced by the id of a real mesh the daemon is in, so the generated
requests reach the daemon's code and not only its 404.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from api_fake import FakeNodeService
from smegmesh.daemon.api import create_app
from smegmesh.testbed.loopback import API_TOKEN, Cluster, create_mesh

pytestmark = pytest.mark.timeout(240)

SPEC: dict[str, Any] = create_app(FakeNodeService(), token=API_TOKEN).openapi()
schema = schemathesis.openapi.from_dict(SPEC)
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    unsupported_method,
    response_schema_conformance,
    negative_data_rejection,
]
#: Ids of real meshes of the daemon under test (filled by the fixture).
REAL_MESHES: list[str] = ["placeholder-mesh-id"]


@schema.hook("flatmap_path_parameters")
def _real_mesh_ids(ctx: Any, params: dict[str, Any] | None) -> Any:
    if not params or not any(k in params for k in ("mesh_id", "meshid")):
        return st.just(params)

    def swap(real: str | None) -> dict[str, Any]:
        if real is None:
            return params
        return {k: real if k in ("mesh_id", "meshid") else v for k, v in params.items()}

    return st.one_of(st.none(), st.sampled_from(REAL_MESHES)).map(swap)


@pytest.fixture(scope="module")
def daemon_url() -> Iterator[str]:
    c = Cluster()
    try:
        a, b = c.add(1, api_listen=True, wait=False) + c.add(1, wait=False)
        c.wait_ready()
        REAL_MESHES[:] = [create_mesh(a, [b]), create_mesh(a, [])]
        base = f"http://[::1]:{a.api_port}"
        served = httpx.get(f"{base}/openapi.json", headers=AUTH, timeout=10).json()
        assert served == SPEC, "the daemon serves a different OpenAPI document"
        yield base
        assert a.ready() and b.ready()
        assert not c.tracebacks(), [d.log()[-4000:] for d in c.daemons]
    finally:
        c.close()


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_conforms(case: schemathesis.Case, daemon_url: str) -> None:
    if case.path == "/v1/events":
        _check_event_stream(case, daemon_url)
        return
    leave = case.method == "DELETE" and case.path == "/v1/meshes/{mesh_id}"
    if leave and (case.path_parameters or {}).get("mesh_id") in REAL_MESHES:
        # leaving the real meshes would end the interesting part of the run
        case.path_parameters = {"mesh_id": "not-" + REAL_MESHES[0]}
    case.call_and_validate(base_url=daemon_url, headers=AUTH, checks=CHECKS, timeout=60)


def _check_event_stream(case: schemathesis.Case, daemon_url: str) -> None:
    """``/v1/events`` never ends: check its status, media type and first bytes only."""
    import requests

    kw = case.as_transport_kwargs(base_url=daemon_url, headers=AUTH)
    with requests.request(**kw, stream=True, timeout=30) as r:
        assert r.status_code < 500, (r.status_code, r.text[:300])
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("text/event-stream")
            first = next(r.iter_content(chunk_size=None))
            assert first.startswith(b":") or first.startswith(b"id: "), first[:100]
        else:
            assert r.status_code in (400, 401, 404, 405, 422), r.status_code
            assert "error" in r.json(), r.text[:300]
