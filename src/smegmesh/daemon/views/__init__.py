"""Read-only views of meshes: the JSON detail, JMESPath queries, graphs, input checks.

Everything here is a pure function of its arguments (mesh records, WireGuard
counters, failure-detector state, the clock), except the Graphviz rendering.
The daemon gathers the inputs and calls these. One module per concern:

* :mod:`.detail`: :func:`mesh_detail` builds the
  :class:`~smegmesh.daemon.api_models.MeshDetail` served by
  ``GET /v1/meshes/{id}`` and queried by ``query-mesh`` (``docs/QUERY.md``);
* :mod:`.query`: :func:`run_query` evaluates a bounded JMESPath expression
  over that JSON document;
* :mod:`.graph_plan` (layout), :mod:`.graph_dot` (:func:`graph_dot`, meshes
  as Graphviz DOT) and :mod:`.graph_render` (:func:`render_graph`, SVG/PNG);
* :mod:`.validate`: the ``validate_*`` helpers check user input against the
  record limits of :mod:`smegmesh.core.record`, and the alias messages (the
  ownership rule itself is :mod:`smegmesh.core.aliases`).
"""

from __future__ import annotations

from smegmesh.daemon.views.common import RouteUse
from smegmesh.daemon.views.detail import (
    evicted_node,
    evicted_self,
    mesh_detail,
    model_json,
    model_json_bytes,
)
from smegmesh.daemon.views.graph_dot import graph_dot
from smegmesh.daemon.views.graph_plan import GraphMesh
from smegmesh.daemon.views.graph_render import (
    RENDER_TIMEOUT_S,
    render_graph,
    render_graph_async,
)
from smegmesh.daemon.views.query import MAX_QUERY_LEN, MAX_QUERY_SECONDS, run_query
from smegmesh.daemon.views.validate import (
    alias_conflict,
    alias_owners,
    check_alias_free,
    name_owners,
    validate_alias,
    validate_description,
    validate_service,
)

__all__ = [
    "MAX_QUERY_LEN",
    "MAX_QUERY_SECONDS",
    "RENDER_TIMEOUT_S",
    "GraphMesh",
    "RouteUse",
    "alias_conflict",
    "alias_owners",
    "check_alias_free",
    "evicted_node",
    "evicted_self",
    "graph_dot",
    "mesh_detail",
    "model_json",
    "model_json_bytes",
    "name_owners",
    "render_graph",
    "render_graph_async",
    "run_query",
    "validate_alias",
    "validate_description",
    "validate_service",
]
