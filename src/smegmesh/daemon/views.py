"""Read-only views of meshes: the JSON detail, JMESPath queries, graphs, alias rules.

Everything here is a pure function of its arguments (mesh records, WireGuard
counters, failure-detector state, the clock), except :func:`render_graph`,
which runs Graphviz. The daemon gathers the inputs and calls these.

* :func:`mesh_detail` builds the :class:`~smegmesh.daemon.api_models.MeshDetail`
  served by ``GET /v1/meshes/{id}`` and queried by ``query-mesh``
  (documented in ``docs/QUERY.md``);
* :func:`run_query` evaluates a JMESPath expression over that JSON document;
* :func:`graph_dot` draws one or several meshes as Graphviz DOT, and
  :func:`render_graph` turns it into SVG or PNG;
* :func:`alias_owners` / :func:`alias_conflict` settle two nodes claiming one
  alias, and the ``validate_*`` helpers check user input against the record
  limits of :mod:`smegmesh.core.record`.
"""

from __future__ import annotations

import asyncio
import functools
import html
import itertools
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jmespath
import jmespath.exceptions
import jmespath.functions
import jmespath.parser
import jmespath.visitor
from pydantic import BaseModel

from smegmesh.core.addressing import mesh_prefix, node_id_prefix, overlay_address
from smegmesh.core.authority import Authority
from smegmesh.core.authority import alias_owners as core_alias_owners
from smegmesh.core.identity import key_to_text
from smegmesh.core.record import (
    ALIAS_RE,
    MAX_DESCRIPTION_BYTES,
    MAX_SERVICE_VALUE_BYTES,
    MAX_SERVICES,
    SERVICE_KEY_RE,
    NodeRecord,
    Role,
)
from smegmesh.core.wgconfig import PeerStatus
from smegmesh.daemon.api_models import (
    EvictedNode,
    GraphFormat,
    MeshDetail,
    NodeInfo,
    RouteInfo,
    SelectedRoute,
)
from smegmesh.daemon.service import ServiceError, conflict, invalid_argument, unavailable

__all__ = [
    "MAX_QUERY_LEN",
    "RENDER_TIMEOUT_S",
    "GraphMesh",
    "RouteUse",
    "alias_conflict",
    "alias_owners",
    "check_alias_free",
    "graph_dot",
    "mesh_detail",
    "model_json",
    "model_json_bytes",
    "render_graph",
    "render_graph_async",
    "run_query",
    "validate_alias",
    "validate_description",
    "validate_service",
]

#: Longest JMESPath expression accepted (a query, not a program).
MAX_QUERY_LEN = 4096
#: Seconds Graphviz may take to lay out a graph before we give up.
RENDER_TIMEOUT_S = 30.0


class RouteUse(NamedTuple):
    """A routed destination this node uses in ``mesh_id``, sent to ``gateway``.

    A plain ``(destination, mesh_id, gateway, path_length)`` tuple is accepted
    wherever a ``RouteUse`` is (the routing module produces these).
    """

    destination: str
    mesh_id: str
    gateway: bytes
    path_length: int


# --------------------------------------------------------------------------- helpers


def _short(key: bytes) -> str:
    return key_to_text(key)[:8]


def _present(records: Iterable[NodeRecord]) -> dict[bytes, NodeRecord]:
    """Records of the nodes in the mesh (departed ones dropped), by key."""
    return {r.wg_key: r for r in records if not r.left}


def _assignments(nodes: Mapping[bytes, NodeRecord]) -> dict[bytes, bytes | None]:
    """client key -> the peer it is reached through, as :mod:`core.desired` computes it."""
    # imported here: core.desired pulls in the WireGuard config types, which
    # the query/alias helpers do not need
    from smegmesh.core.desired import assigned_peer

    peers = {k: r for k, r in nodes.items() if r.role == Role.PEER}
    return {k: assigned_peer(r, peers) for k, r in nodes.items() if r.role == Role.CLIENT}


def _first_paths(nodes: Mapping[bytes, NodeRecord]) -> dict[tuple[bytes, str], tuple[str, ...]]:
    """(node, destination) -> the path of the node's first advertisement of it."""
    paths: dict[tuple[bytes, str], tuple[str, ...]] = {}
    for k, r in nodes.items():
        for a in r.routes:
            paths.setdefault((k, a.prefix), a.path)
    return paths


# --------------------------------------------------------------------------- alias rules


def alias_owners(
    records: Iterable[NodeRecord], authority: Authority | None = None
) -> dict[str, bytes]:
    """alias -> key of the node that owns it, for every alias claimed in the mesh.

    Every node computes the same answer from the same records, whatever their
    order; claims are compared case-insensitively. The rule is the core's
    (:func:`smegmesh.core.authority.alias_owners`): an alias reserved by an
    admin belongs to its holder, otherwise the claimant admitted first keeps
    it (admission times are signed by the admitting member, so no key can be
    ground to win a name, and re-signing a record does not change it). The
    daemon also refuses to set an alias another node already uses
    (:func:`check_alias_free`), so a conflict only arises from claims made
    concurrently (e.g. on both sides of a partition).
    """
    return core_alias_owners(
        ((r.wg_key, r.alias, r.chain) for r in _present(records).values()), authority
    )


def _describe(rec: NodeRecord) -> str:
    return f"{_short(rec.wg_key)}… ({rec.address})"


def alias_conflict(
    records: Iterable[NodeRecord], self_key: bytes, authority: Authority | None = None
) -> str | None:
    """A one-line message if this node's alias is owned by another node, else None."""
    nodes = _present(records)
    me = nodes.get(self_key)
    if me is None or not me.alias:
        return None
    owner = alias_owners(nodes.values(), authority).get(me.alias.lower())
    if owner is None or owner == self_key:
        return None
    if owner not in nodes:
        return f"alias {me.alias!r} is reserved for another node: choose another with put-alias"
    return (
        f"alias {me.alias!r} is also claimed by node {_describe(nodes[owner])}, which keeps it; "
        "this node is not reachable by that name: choose another with put-alias"
    )


def check_alias_free(
    records: Iterable[NodeRecord],
    self_key: bytes,
    alias: str,
    authority: Authority | None = None,
) -> None:
    """Raise ``conflict`` (409) if another node already uses (or holds a reservation of) it."""
    if authority is not None:
        holder = authority.reservations.get(alias.lower())
        if holder is not None and holder != self_key:
            raise conflict(f"alias {alias!r} is reserved by an admin for another node")
    for r in _present(records).values():
        if r.wg_key != self_key and r.alias and r.alias.lower() == alias.lower():
            raise conflict(f"alias {alias!r} is already used by node {_describe(r)}")


# --------------------------------------------------------------------------- validation


def validate_alias(alias: str) -> str:
    """The alias as stored (lower case); ``invalid_argument`` naming the field if bad."""
    a = alias.lower()
    if a and ALIAS_RE.fullmatch(a) is None:
        raise invalid_argument(
            "alias: must be a DNS label: 1-63 letters, digits or '-', "
            "not starting or ending with '-'"
        )
    return a


def validate_description(description: str) -> str:
    """``description`` if it fits in a record, else ``invalid_argument``."""
    n = len(description.encode("utf-8", "surrogatepass"))
    if n > MAX_DESCRIPTION_BYTES:
        raise invalid_argument(
            f"description: at most {MAX_DESCRIPTION_BYTES} bytes of UTF-8 (got {n})"
        )
    return description


def validate_service(key: str, value: str, current: Mapping[str, str]) -> None:
    """Check ``set-service key=value`` against the record limits (``invalid_argument``)."""
    if SERVICE_KEY_RE.fullmatch(key) is None:
        raise invalid_argument(f"service: invalid key {key!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    n = len(value.encode("utf-8", "surrogatepass"))
    if n > MAX_SERVICE_VALUE_BYTES:
        raise invalid_argument(
            f"service: value of {key!r} must be at most {MAX_SERVICE_VALUE_BYTES} bytes "
            f"of UTF-8 (got {n})"
        )
    if key not in current and len(current) >= MAX_SERVICES:
        raise invalid_argument(
            f"services: at most {MAX_SERVICES} per node; delete one with delete-service first"
        )


# --------------------------------------------------------------------------- mesh detail


def _leader(nodes: Mapping[bytes, NodeRecord], suspects: set[bytes]) -> bytes | None:
    """The lowest key among live peers (SPEC §3)."""
    live = [k for k, r in nodes.items() if r.role == Role.PEER and k not in suspects]
    return min(live) if live else None


def _selected_routes(
    mesh_id: str,
    nodes: Mapping[bytes, NodeRecord],
    routes: Iterable[tuple[str, str, bytes, int]],
) -> tuple[list[SelectedRoute], dict[bytes, list[str]]]:
    selected: list[SelectedRoute] = []
    gateway_for: dict[bytes, list[str]] = {}
    # One pass over every advertisement (not one per route used: that was
    # quadratic, 20 s for 20 records of 512 routes): who offers each
    # (destination, path length), and each node's path to each destination.
    offered: dict[tuple[str, int], set[bytes]] = {}
    for k, r in nodes.items():
        for a in r.routes:
            offered.setdefault((a.prefix, len(a.path)), set()).add(k)
    paths = _first_paths(nodes)
    for dest, mid, gw, plen in routes:
        if mid != mesh_id:
            continue
        rec = nodes.get(gw)
        path = paths.get((gw, dest), ())
        alternatives = sorted(offered.get((dest, plen), set()) - {gw})
        selected.append(
            SelectedRoute(
                destination=dest,
                gateway=key_to_text(gw),
                gateway_alias=rec.alias if rec is not None else "",
                path=list(path),
                path_length=plen,
                alternatives=[key_to_text(k) for k in alternatives],
            )
        )
        gateway_for.setdefault(gw, []).append(dest)
    selected.sort(key=lambda s: (s.destination, s.gateway))
    return selected, gateway_for


def mesh_detail(
    mesh_id: str,
    ifname: str | None,
    records: Sequence[NodeRecord],
    *,
    self_key: bytes,
    wg_peers: Mapping[bytes, PeerStatus],
    last_heard: Mapping[bytes, int],
    suspects: set[bytes] | frozenset[bytes],
    routes: Iterable[tuple[str, str, bytes, int]] = (),
    now_ms: int,
    authority: Authority | None = None,
) -> MeshDetail:
    """The JSON view of one mesh (``docs/QUERY.md``).

    ``records``: the mesh's current records (departed nodes, ``left``, are
    omitted); ``wg_peers``: this node's WireGuard peers as read back from the
    interface (handshake age and byte counters, when the node is one);
    ``last_heard``: when each node was last heard from (ms, same clock as
    ``now_ms``); ``suspects``: nodes the failure detector suspects;
    ``routes``: :class:`RouteUse` entries of the routed destinations this node
    uses (entries for other meshes are ignored).
    """
    nodes = _present(records)
    assignment = _assignments(nodes)
    owners = alias_owners(nodes.values(), authority)
    selected, gateway_for = _selected_routes(mesh_id, nodes, routes)
    now_s = now_ms / 1000

    def info(r: NodeRecord) -> NodeInfo:
        k = r.wg_key
        wg = wg_peers.get(k)
        heard = now_ms if k == self_key else last_heard.get(k)
        handshake_age = None
        if wg is not None and wg.last_handshake:
            handshake_age = round(max(0.0, now_s - wg.last_handshake), 3)
        via = assignment.get(k)
        return NodeInfo(
            public_key=key_to_text(k),
            alias=r.alias,
            description=r.description,
            role=r.role.value,
            overlay_address=r.address,
            wg_endpoint=r.wg_endpoint,
            control_endpoint=r.control_endpoint,
            last_seen=heard / 1000 if heard is not None else None,
            handshake_age_s=handshake_age,
            wg_peer=wg is not None,
            rx_bytes=wg.rx_bytes if wg is not None else 0,
            tx_bytes=wg.tx_bytes if wg is not None else 0,
            keepalive_s=wg.keepalive if wg is not None else 0,
            allowed_ips=sorted(wg.allowed_ips) if wg is not None else [],
            assigned_peer=key_to_text(via) if via is not None else None,
            routes=[RouteInfo(destination=a.prefix, path=list(a.path)) for a in r.routes],
            services=dict(r.services),
            is_self=k == self_key,
            status="suspect" if k in suspects and k != self_key else "live",
            node_id=node_id_prefix(k),
            record_version=r.version,
            nat_endpoint=r.nat_endpoint,
            record_timestamp=r.timestamp_ms / 1000,
            alias_conflict=bool(r.alias) and owners.get(r.alias.lower()) != k,
            gateway_for=sorted(gateway_for.get(k, [])),
            admin=authority is not None and authority.is_admin(k),
        )

    def order(r: NodeRecord) -> tuple[bool, bool, bool, str, bytes]:
        return (r.wg_key != self_key, r.role != Role.PEER, not r.alias, r.alias, r.wg_key)

    leader = _leader(nodes, set(suspects))
    me = nodes.get(self_key)
    return MeshDetail(
        mesh_id=mesh_id,
        interface=ifname,
        prefix=str(mesh_prefix(mesh_id)),
        self_key=key_to_text(self_key),
        leader=key_to_text(leader) if leader is not None else None,
        nodes=[info(r) for r in sorted(nodes.values(), key=order)],
        role=me.role.value if me is not None else None,
        routes=selected,
        invite_policy=authority.policy.value
        if authority is not None and authority.founding is not None
        else None,
        admins=sorted(key_to_text(k) for k in authority.admins) if authority is not None else [],
        evicted=_evicted(authority) if authority is not None else [],
    )


def _evicted(authority: Authority) -> list[EvictedNode]:
    out = []
    for key, revs in sorted(authority.revoked.items()):
        first = min(revs, key=lambda r: r.issued_ms)
        out.append(
            EvictedNode(
                public_key=key_to_text(key),
                node_id=node_id_prefix(key),
                overlay_address=str(overlay_address(authority.mesh_id, key)),
                by=key_to_text(first.issuer),
                time=first.issued_ms / 1000,
                cascade=any(r.cascade for r in revs),
            )
        )
    return out


# --------------------------------------------------------------------------- serialising
#
# pydantic serialises in Rust holding the GIL: one model_dump_json() of a
# mesh at the largest legal state holds it for about a second, and the event
# loop, in another thread, stalls that long. These helpers serialise the big
# lists item by item, so the GIL is released between items.


def _big_lists(model: BaseModel) -> dict[str, list[BaseModel]]:
    return {
        name: value
        for name in type(model).model_fields
        if isinstance(value := getattr(model, name), list)
        and value
        and isinstance(value[0], BaseModel)
    }


def model_json_bytes(model: BaseModel) -> bytes:
    """``model.model_dump_json()``, in pieces (see above); the same JSON document."""
    lists = _big_lists(model)
    if not lists:
        return model.model_dump_json().encode()
    parts: list[bytes] = []
    for name in type(model).model_fields:
        if name in lists:
            items = b",".join(m.model_dump_json().encode() for m in lists[name])
            parts.append(json.dumps(name).encode() + b":[" + items + b"]")
        else:
            parts.append(model.model_dump_json(include={name}).encode()[1:-1])
    return b"{" + b",".join(p for p in parts if p) + b"}"


def model_json(model: BaseModel) -> Any:
    """``model.model_dump(mode="json")``, in pieces (see above)."""
    lists = _big_lists(model)
    out = model.model_dump(mode="json", exclude=set(lists))
    for name, items in lists.items():
        out[name] = [m.model_dump(mode="json") for m in items]
    return {name: out[name] for name in type(model).model_fields if name in out}


# --------------------------------------------------------------------------- queries


@functools.lru_cache(maxsize=256)
def _compile(expr: str) -> jmespath.parser.ParsedResult:
    return jmespath.compile(expr)


def _context(expr: str, pos: int) -> str:
    before = expr[:pos]
    if len(before) > 40:
        before = "…" + before[-40:]
    return before


def _query_error(expr: str, e: Exception) -> ServiceError:
    """One line saying where and what (JMESPath's own messages span three lines)."""
    if isinstance(e, jmespath.exceptions.EmptyExpressionError):
        return invalid_argument("bad JMESPath: the expression is empty")
    if isinstance(e, jmespath.exceptions.LexerError):
        pos = int(e.lexer_position or 0)
        what = str(e.message).rstrip(".")
        after = _context(expr, pos)
        where = f' after "{after}"' if after else " at the start"
        return invalid_argument(f"bad JMESPath at column {pos + 1}: {what}{where}")
    if isinstance(e, jmespath.exceptions.IncompleteExpressionError):
        return invalid_argument(
            f'bad JMESPath at column {len(expr) + 1}: expression ends too early after "'
            f'{_context(expr, len(expr))}"'
        )
    if isinstance(e, jmespath.exceptions.ArityError):
        # a subclass of ParseError without a position: say what the function wants
        return invalid_argument(f"bad JMESPath: {_clip(str(e))}")
    if isinstance(e, jmespath.exceptions.JMESPathTypeError):
        # its message embeds the offending value, which may be the whole mesh
        return invalid_argument(
            f"bad JMESPath: In function {e.function_name}(), invalid type {e.actual_type}, "
            f"expected one of: {', '.join(map(str, e.expected_types))}"
        )
    if isinstance(e, jmespath.exceptions.ParseError):
        pos = int(e.lex_position or 0)
        tok = e.token_value
        what = f"unexpected {tok!r}" if tok not in (None, "") else "unexpected end"
        after = _context(expr, pos)
        where = f' after "{after}"' if after else " at the start"
        return invalid_argument(f"bad JMESPath at column {pos + 1}: {what}{where}")
    return invalid_argument(f"bad JMESPath: {_clip(str(e))}")


def _clip(msg: str, limit: int = 200) -> str:
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


# --------------------------------------------------------------------------- query bounds
#
# A query is evaluated with a budget: every value the interpreter produces
# costs 1 + its length (items of a list or object, characters of a string),
# deep comparisons and serialisations cost one unit per value visited, and a
# query that overspends, or runs past its deadline, is refused (400). This
# bounds CPU and memory whatever the expression: `[@,@]|[@,@]|…` builds a
# value of 2^k paths in k steps (shared, so cheap to build) that a naive ==,
# to_string() or the JSON encoder would walk in full.

#: Work units one query may spend (see above).
MAX_QUERY_COST = 4_000_000
#: Seconds one query may run.
MAX_QUERY_SECONDS = 3.0
#: Estimated JSON size, in bytes, of a query's result.
MAX_RESULT_BYTES = 64 * 1024 * 1024
#: Nesting depth of a query's result (the mesh document itself is 5 deep).
MAX_RESULT_DEPTH = 64


class _QueryTooCostly(Exception):
    pass


class _Budget:
    def __init__(self, units: int, seconds: float) -> None:
        self.left = units
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.ticks = 0

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise _QueryTooCostly("the query needs too much work or memory")
        self.ticks += 1
        if not self.ticks & 0xFF and time.monotonic() > self.deadline:
            raise _QueryTooCostly(f"the query took longer than {self.seconds:g} s")


def _cost(value: Any) -> int:
    return 1 + len(value) if isinstance(value, list | dict | str) else 1


def _equal(x: Any, y: Any, budget: _Budget) -> bool:
    """JMESPath equality (true is not 1), bounded by ``budget``."""
    stack = [(x, y)]
    while stack:
        a, b = stack.pop()
        budget.spend(1)
        if a is b:
            continue
        if isinstance(a, list):
            if not isinstance(b, list) or len(a) != len(b):
                return False
            stack.extend(zip(a, b, strict=True))
        elif isinstance(a, dict):
            if not isinstance(b, dict) or a.keys() != b.keys():
                return False
            stack.extend((a[k], b[k]) for k in a)
        elif isinstance(b, list | dict) or isinstance(a, bool) != isinstance(b, bool) or a != b:
            return False
    return True


def _check_value(value: Any, budget: _Budget, *, limit: int = MAX_RESULT_BYTES) -> None:
    """Refuse a value that JSON cannot carry or that is too big or deep to send."""
    size = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        budget.spend(1)
        if isinstance(v, list | dict):
            if depth > MAX_RESULT_DEPTH:
                raise _QueryTooCostly(f"the result is nested deeper than {MAX_RESULT_DEPTH}")
            size += 2 + len(v)
            items = v.values() if isinstance(v, dict) else v
            stack.extend((c, depth + 1) for c in items)
            if isinstance(v, dict):
                size += sum(len(k) + 3 for k in v)
        elif isinstance(v, str):
            size += len(v) + 2
        elif isinstance(v, float) and not math.isfinite(v):
            raise _QueryTooCostly("the result holds a number JSON cannot carry (infinite or NaN)")
        else:
            size += 8
        if size > limit:
            raise _QueryTooCostly(f"the result would be larger than {limit} bytes")


class _BoundedFunctions(jmespath.functions.Functions):
    """The built-in functions, with the ones that can walk or build big values bounded."""

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget

    @jmespath.functions.signature({"types": ["array", "string"]}, {"types": []})
    def _func_contains(self, subject: Any, search: Any) -> bool:
        if isinstance(subject, str):
            return isinstance(search, str) and search in subject
        return any(_equal(item, search, self.budget) for item in subject)

    @jmespath.functions.signature({"types": []})
    def _func_to_string(self, arg: Any) -> str:
        if isinstance(arg, str):
            return arg
        _check_value(arg, self.budget, limit=self.budget.left)
        return json.dumps(arg, separators=(",", ":"), default=str)

    @jmespath.functions.signature({"types": ["string"]}, {"types": ["array-string"]})
    def _func_join(self, separator: str, array: list[str]) -> str:
        self.budget.spend(sum(map(len, array)) + len(separator) * len(array))
        return separator.join(array)


class _BoundedInterpreter(jmespath.visitor.TreeInterpreter):
    def __init__(self, budget: _Budget) -> None:
        super().__init__(jmespath.Options(custom_functions=_BoundedFunctions(budget)))
        self.budget = budget

    def visit(self, node: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().visit(node, *args, **kwargs)
        self.budget.spend(_cost(result))
        return result

    def visit_comparator(self, node: Any, value: Any) -> Any:
        op = node["value"]
        if op in ("eq", "ne"):
            left = self.visit(node["children"][0], value)
            right = self.visit(node["children"][1], value)
            return _equal(left, right, self.budget) == (op == "eq")
        return super().visit_comparator(node, value)


def _evaluate(expr: str, data: Any) -> Any:
    budget = _Budget(MAX_QUERY_COST, MAX_QUERY_SECONDS)
    parsed = _compile(expr).parsed
    result = _BoundedInterpreter(budget).visit(parsed, data)
    _check_value(result, budget)
    return result


def run_query(detail_json: Any, expr: str) -> Any:
    """Evaluate JMESPath ``expr`` over ``detail_json`` (a mesh's JSON document).

    ``detail_json`` is ``MeshDetail.model_dump(mode="json")`` (a ``MeshDetail``
    is dumped for you). Errors in the expression, at parse or evaluation time
    (unknown function, wrong argument type), raise ``invalid_argument`` with
    one line naming the column and the problem. So does a query that needs
    more than :data:`MAX_QUERY_COST` work units or :data:`MAX_QUERY_SECONDS`,
    or whose result is not JSON, over :data:`MAX_RESULT_BYTES` or nested
    deeper than :data:`MAX_RESULT_DEPTH`. Blocking: from the event loop, run it
    in a thread.
    """
    if isinstance(detail_json, MeshDetail):
        detail_json = model_json(detail_json)
    if len(expr) > MAX_QUERY_LEN:
        raise invalid_argument(f"bad JMESPath: longer than {MAX_QUERY_LEN} characters")
    try:
        return _evaluate(expr, detail_json)
    except jmespath.exceptions.JMESPathError as e:
        raise _query_error(expr, e) from None
    except RecursionError:
        raise invalid_argument("bad JMESPath: the expression is nested too deeply") from None
    except _QueryTooCostly as e:
        raise invalid_argument(f"query refused: {e}") from None
    except (ValueError, TypeError, ArithmeticError, LookupError) as e:
        # the interpreter's own failures on odd input, e.g. a zero slice step
        raise invalid_argument(f"bad JMESPath: {_clip(str(e))}") from None


# --------------------------------------------------------------------------- graphs


@dataclass(frozen=True)
class GraphMesh:
    """One mesh to draw: its records, who is suspect, the routes this node uses in it."""

    mesh_id: str
    records: Sequence[NodeRecord]
    suspects: frozenset[bytes] = frozenset()
    routes: Sequence[tuple[str, str, bytes, int]] = field(default_factory=tuple)


# Palette (colour-blind friendly enough, and legible in greyscale by style).
_PEER_FILL = "#dbeafe"
_PEER_LINE = "#1e40af"
_CLIENT_FILL = "#dcfce7"
_CLIENT_LINE = "#166534"
_BRIDGE_FILL = "#fde68a"
_BRIDGE_LINE = "#92400e"
_SUSPECT_FILL = "#fee2e2"
_SUSPECT_LINE = "#b91c1c"
_ROUTE = "#dc2626"
_REMOTE_LINE = "#6b7280"

#: Fewest peer groups (a peer and its clients) per row of a mesh; clients per row of a group.
_MIN_GROUP_COLS = 4
_CLIENT_COLS = 2
#: Peer-group columns of meshes drawn side by side before the next ones go below.
_MESH_ROW_COLS = 8


def _q(s: str) -> str:
    """A DOT double-quoted string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**kv: str | int | float | None) -> str:
    parts = []
    for k, v in kv.items():
        if v is None:
            continue
        if isinstance(v, str) and v.startswith("<") and v.endswith(">"):
            parts.append(f"{k}={v}")  # HTML-like label
        elif isinstance(v, str):
            parts.append(f"{k}={_q(v)}")
        else:
            parts.append(f"{k}={v}")
    return "[" + ", ".join(parts) + "]" if parts else ""


def _small(s: str) -> str:
    return f'<font point-size="8">{html.escape(s)}</font>'


class _DotWriter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def add(self, line: str) -> None:
        self.lines.append("  " * self.depth + line)

    def open(self, line: str) -> None:
        self.add(line + " {")
        self.depth += 1

    def close(self) -> None:
        self.depth -= 1
        self.add("}")


def graph_dot(meshes: Sequence[GraphMesh], *, self_key: bytes) -> str:
    """Draw meshes as a Graphviz ``digraph`` (DOT source, layout engine ``dot``).

    * one cluster per mesh (title: mesh id, prefix, counts);
    * inside it, a box per peer and, under each peer, its clients (ellipses)
      in a dotted sub-cluster with an edge from each client to its peer; peer
      groups are laid out in a grid, not joined to one another (no full-mesh
      hairball: WireGuard peers of a mesh are all connected anyway);
    * a node in several of the meshes (a bridge; this node when more than one
      mesh is drawn) is drawn once, outside the clusters, in amber, with a
      bold edge to each mesh it is in;
    * meshes reached through route paths but not drawn appear as dashed folders
      linked from the member advertising the route; a default route (``::/0``)
      offered without a path appears as a dashed "internet" node;
    * the routes this node uses are red: the exit node's border, an edge from
      this node to it labelled with the destinations, and the path beyond it;
    * suspect nodes are dashed and pink, with "suspect" in their label; this
      node has a double border and "this node" in its label.
    """
    w = _DotWriter()
    mesh_ids = [m.mesh_id for m in meshes]
    present = [_present(m.records) for m in meshes]
    membership: dict[bytes, list[int]] = {}
    for i, nodes in enumerate(present):
        for k in nodes:
            membership.setdefault(k, []).append(i)
    bridges = {k for k, idx in membership.items() if len(idx) > 1}
    ids = {k: f"n{i}" for i, k in enumerate(sorted(membership))}
    suspect_any = {k for m in meshes for k in m.suspects if k != self_key}
    used = [(mi, RouteUse(*r)) for mi, m in enumerate(meshes) for r in m.routes]
    used = [(mi, r) for mi, r in used if r.mesh_id == meshes[mi].mesh_id]
    exits: dict[bytes, list[str]] = {}
    for _, r in used:
        if r.destination not in exits.setdefault(r.gateway, []):
            exits[r.gateway].append(r.destination)

    w.open("digraph smegmesh")
    total = len(membership)
    title = (
        f"smegmesh: {len(meshes)} mesh{'es' if len(meshes) != 1 else ''}, {total} nodes"
        f"{f', {len(bridges)} bridges' if len(meshes) > 1 else ''}"
    )
    legend = (
        "boxes: peers · ellipses: clients (under their peer) · amber: bridges · "
        "dashed pink: suspect · red: routes this node uses · double border: this node"
    )
    w.add(
        "graph "
        + _attrs(
            rankdir="TB",
            newrank="true",
            compound="true",
            nodesep=0.2,
            ranksep=0.35,
            fontname="Helvetica",
            fontsize=12,
            labelloc="t",
            label=f"<<b>{html.escape(title)}</b><br/>{_small(legend)}>",
            tooltip=title,
        )
        + ";"
    )
    w.add('node [fontname="Helvetica", fontsize=10, margin="0.08,0.03"];')
    w.add('edge [arrowsize=0.6, color="#6b7280"];')

    def node_attrs(k: bytes, rec: NodeRecord, addrs: list[str], role: Role) -> str:
        name = html.escape(rec.alias or _short(k))
        lines = [f"<b>{name}</b>"]
        lines += [_small(a) for a in addrs]
        tags = []
        if k == self_key:
            tags.append("this node")
        if k in bridges:
            tags.append("bridge")
        if k in suspect_any:
            tags.append("suspect")
        if tags:
            lines.append(f'<font point-size="8"><i>{html.escape(", ".join(tags))}</i></font>')
        if k in exits:
            dests = sorted(exits[k])
            shown = dests[:3] + ([f"+{len(dests) - 3} more"] if len(dests) > 3 else [])
            lines += [
                f'<font point-size="8" color="{_ROUTE}">exit for {html.escape(d)}</font>'
                for d in shown
            ]
        bridge = k in bridges
        suspect = k in suspect_any
        if suspect:
            fill, line = _SUSPECT_FILL, _SUSPECT_LINE
        elif bridge:
            fill, line = _BRIDGE_FILL, _BRIDGE_LINE
        elif role == Role.PEER:
            fill, line = _PEER_FILL, _PEER_LINE
        else:
            fill, line = _CLIENT_FILL, _CLIENT_LINE
        style = ["filled"]
        if role == Role.PEER or bridge:
            style.append("rounded")
        if suspect:
            style.append("dashed")
        pen: float = 1.0
        if k in exits:
            line, pen = _ROUTE, 2.0
        if k == self_key:
            pen = 2.0
        tip = f"{key_to_text(k)} ({role.value}{', suspect' if suspect else ''})"
        if rec.description:
            tip += f"\n{rec.description}"
        return _attrs(
            id=ids[k],
            shape="box" if role == Role.PEER or bridge else "ellipse",
            style=",".join(style),
            fillcolor=fill,
            color=line,
            penwidth=pen,
            peripheries=2 if k == self_key else None,
            fontsize=9 if role == Role.CLIENT and not bridge else None,
            label="<" + "<br/>".join(lines) + ">",
            tooltip=tip,
        )

    # Bridge nodes: once, outside every cluster.
    for k in sorted(bridges):
        idx = membership[k]
        recs = [present[i][k] for i in idx]
        role = Role.PEER if any(r.role == Role.PEER for r in recs) else Role.CLIENT
        w.add(f"{ids[k]} {node_attrs(k, recs[0], [r.address for r in recs], role)};")

    edges: list[str] = []
    edge_seen: set[tuple[str, str]] = set()

    def edge(a: str, b: str, **kv: str | int | float | None) -> None:
        if (a, b) in edge_seen:
            return
        edge_seen.add((a, b))
        edges.append(f"{a} -> {b} {_attrs(**kv)};")

    # -- layout plan: peer groups per mesh, meshes in rows, where bridges sit
    plans = [_plan(present[mi], bridges, self_key) for mi in range(len(meshes))]
    mesh_row: list[int] = []
    row, used_cols = 0, 0
    for mi, plan in enumerate(plans):
        # meshes side by side while they fit _MESH_ROW_COLS peer groups, then below
        if mi and used_cols + plan.cols > max(_MESH_ROW_COLS, plan.cols):
            row, used_cols = row + 1, 0
        mesh_row.append(row)
        used_cols += plan.cols
    # a bridge sits above the first row of meshes it is in, or, when it links
    # rows, between that row and the next: edges to that first row go up
    bridge_below: dict[bytes, set[int]] = {}
    for k in bridges:
        rows = sorted({mesh_row[mi] for mi in membership[k]})
        below = {mi for mi in membership[k] if len(rows) > 1 and mesh_row[mi] == rows[0]}
        bridge_below[k] = below

    hubs: dict[str, str] = {}
    for mi, m in enumerate(meshes):
        nodes = present[mi]
        plan = plans[mi]
        hub = f"hub{mi}"
        hubs[m.mesh_id] = hub
        n_clients = sum(1 for r in nodes.values() if r.role == Role.CLIENT)
        n_suspect = sum(1 for k in nodes if k in m.suspects and k != self_key)
        counts = f"{len(nodes)} nodes, {n_clients} clients"
        if n_suspect:
            counts += f", {n_suspect} suspect"
        w.open(f"subgraph cluster_m{mi}")
        w.add(
            "graph "
            + _attrs(
                label=(
                    f"<<b>{html.escape(m.mesh_id)}</b><br/>"
                    f"{_small(str(mesh_prefix(m.mesh_id)) + ' · ' + counts)}>"
                ),
                style="rounded,filled",
                fillcolor="#f8fafc",
                color="#94a3b8",
                penwidth=1.5,
                id=f"cluster_m{mi}",
            )
            + ";"
        )
        # invisible anchors at the top and bottom: bridge edges end on the
        # cluster border, and what is drawn below the mesh hangs from the foot
        w.add(f'{hub} [shape=point, style=invis, width=0.01, label=""];')
        w.add(f'foot{mi} [shape=point, style=invis, width=0.01, label=""];')
        for gi, pk in enumerate(plan.heads):
            cl = [c for c in plan.clients_of.get(pk, []) if c not in bridges]
            if cl:
                w.open(f"subgraph cluster_m{mi}_g{gi}")
                w.add('graph [label="", style="rounded,dotted", color="#94a3b8"];')
            w.add(f"{ids[pk]} {node_attrs(pk, nodes[pk], [nodes[pk].address], Role.PEER)};")
            for c in cl:
                w.add(f"{ids[c]} {node_attrs(c, nodes[c], [nodes[c].address], Role.CLIENT)};")
            if cl:
                w.close()
        for c in plan.loose:
            w.add(f"{ids[c]} {node_attrs(c, nodes[c], [nodes[c].address], Role.CLIENT)};")
        for r0 in range(0, len(plan.heads), plan.cols):
            row_ids = "; ".join(ids[k] for k in plan.heads[r0 : r0 + plan.cols])
            w.add(f"{{ rank=same; {row_ids}; }}")
        w.close()

        # peer groups in a grid; rows aligned: each row starts below the
        # tallest group of the row above
        cols, heads, heights = plan.cols, plan.heads, plan.heights
        for gi, pk in enumerate(heads):
            if gi < cols:
                edge(hub, ids[pk], style="invis")
            if gi + cols < len(heads):
                row = gi - gi % cols
                edge(
                    ids[pk], ids[heads[gi + cols]], style="invis", minlen=max(heights[row:][:cols])
                )
        last_row = (len(heads) - 1) // cols * cols if heads else 0
        for gi in range(last_row, len(heads)):
            edge(ids[heads[gi]], f"foot{mi}", style="invis", minlen=heights[gi])
        for c in plan.loose:
            edge(hub, ids[c], style="invis")
            edge(ids[c], f"foot{mi}", style="invis")
        edge(hub, f"foot{mi}", style="invis")
        # clients under their peer, rows of _CLIENT_COLS; the edge points client -> peer
        for pk, cl in plan.clients_of.items():
            for j, c in enumerate(cl):
                tip = f"{nodes[c].alias or _short(c)} is served by {nodes[pk].alias or _short(pk)}"
                dashed = "dashed" if c in m.suspects or pk in m.suspects else None
                if mi in bridge_below.get(pk, ()):
                    # the bridge is drawn under this mesh: its clients stay near the bottom
                    edge(ids[c], ids[pk], color=_CLIENT_LINE, style=dashed, tooltip=tip)
                    continue
                edge(
                    ids[pk],
                    ids[c],
                    dir="back",
                    color=_CLIENT_LINE,
                    style=dashed,
                    constraint="false" if j >= _CLIENT_COLS and pk not in bridges else None,
                    tooltip=tip,
                )
                if j + _CLIENT_COLS < len(cl) and pk not in bridges:
                    edge(ids[c], ids[cl[j + _CLIENT_COLS]], style="invis")

    for mi, mrow in enumerate(mesh_row):
        for above in (i for i, ra in enumerate(mesh_row) if ra == mrow - 1):
            edge(f"foot{above}", f"hub{mi}", style="invis")

    # bridges: one bold edge to each mesh they are in
    for k in sorted(bridges):
        for mi in membership[k]:
            style: dict[str, str | int | float | None] = {
                "color": _BRIDGE_LINE,
                "penwidth": 2,
                "arrowhead": "none",
                "tooltip": f"member of {mesh_ids[mi]}",
            }
            if mi in bridge_below[k]:
                edge(f"foot{mi}", ids[k], ltail=f"cluster_m{mi}", **style)
            else:
                edge(ids[k], f"hub{mi}", lhead=f"cluster_m{mi}", **style)

    # routes: advertised paths to meshes we do not draw, and default routes
    remote: dict[str, str] = {}
    remote_dests: dict[str, set[str]] = {}
    defaults: dict[str, str] = {}
    first_paths = [_first_paths(p) for p in present]
    used_paths = {
        (r.gateway, r.destination, first_paths[mi].get((r.gateway, r.destination), ()))
        for mi, r in used
    }
    route_edges: dict[tuple[str, str], bool] = {}
    known_prefixes = {str(mesh_prefix(m)) for m in mesh_ids}
    for mi in range(len(meshes)):
        for k, rec in sorted(present[mi].items()):
            for adv in rec.routes:
                hot = (k, adv.prefix, adv.path) in used_paths
                chain = [ids[k]]
                for mid in adv.path:
                    if mid in hubs:
                        chain.append(hubs[mid])
                    else:
                        if mid not in remote:
                            remote[mid] = f"r{len(remote)}"
                        chain.append(remote[mid])
                if adv.path:
                    last = adv.path[-1]
                    if last not in hubs and adv.prefix != str(mesh_prefix(last)):
                        remote_dests.setdefault(last, set()).add(adv.prefix)
                elif adv.prefix not in known_prefixes:
                    if adv.prefix not in defaults:
                        defaults[adv.prefix] = f"d{len(defaults)}"
                    chain.append(defaults[adv.prefix])
                for a, b in itertools.pairwise(chain):
                    route_edges[(a, b)] = route_edges.get((a, b), False) or hot
    for mid, rid in remote.items():
        extra = sorted(remote_dests.get(mid, ()))
        shown = [str(mesh_prefix(mid)), *extra[:3]] + (["…"] if len(extra) > 3 else [])
        w.add(
            f"{rid} "
            + _attrs(
                shape="folder",
                style="dashed",
                color=_REMOTE_LINE,
                label=f"<<b>{html.escape(mid)}</b><br/>{'<br/>'.join(_small(p) for p in shown)}>",
                tooltip=f"mesh {mid} (reached through a bridge; not a mesh of this node)",
            )
            + ";"
        )
    for dest, did in defaults.items():
        what = "internet" if dest == "::/0" else "network"
        w.add(
            f"{did} "
            + _attrs(
                shape="egg",
                style="dashed",
                color=_REMOTE_LINE,
                label=f"<<b>{what}</b><br/>{_small(dest)}>",
                tooltip=f"{dest}, offered as a route",
            )
            + ";"
        )
    hub_cluster = {hub: f"cluster_m{i}" for i, hub in enumerate(hubs.values())}
    for (a, b), hot in sorted(route_edges.items()):
        if (a, b) in edge_seen and not hot:
            continue
        edge_seen.discard((a, b))
        edge(
            a,
            b,
            lhead=hub_cluster.get(b),
            ltail=hub_cluster.get(a),
            constraint="false" if b in hub_cluster else None,
            style="bold" if hot else "dashed",
            color=_ROUTE if hot else _REMOTE_LINE,
            penwidth=2 if hot else None,
            tooltip="route path",
        )

    # this node -> each exit it uses (the exit's label lists the destinations)
    for gw, dests in sorted(exits.items()):
        if gw == self_key or gw not in ids or self_key not in ids:
            continue
        edge(
            ids[self_key],
            ids[gw],
            color=_ROUTE,
            penwidth=2,
            style="bold",
            constraint="false",
            tooltip="this node routes " + ", ".join(sorted(dests)) + " through here",
        )

    for e in edges:
        w.add(e)
    w.close()
    return "\n".join(w.lines) + "\n"


def _sort_key(rec: NodeRecord) -> tuple[bool, tuple[tuple[int, str], ...], bytes]:
    """Named nodes first, in natural order (peer2 before peer10), then by key."""
    parts = tuple(
        (int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", rec.alias) if p
    )
    return (not rec.alias, parts, rec.wg_key)


@dataclass(frozen=True)
class _Plan:
    """How one mesh is laid out: peer groups in a grid, loose clients."""

    heads: list[bytes]  # peers heading a group (bridges are drawn outside)
    heights: list[int]  # ranks each group takes (peer + rows of clients)
    clients_of: dict[bytes, list[bytes]]  # peer -> its clients
    loose: list[bytes]  # clients without a peer, or served by a bridge
    cols: int  # groups per row


def _plan(nodes: Mapping[bytes, NodeRecord], bridges: set[bytes], self_key: bytes) -> _Plan:
    clients_of: dict[bytes, list[bytes]] = {}
    orphans: list[bytes] = []
    assignment = _assignments(nodes)
    for ck in sorted(assignment, key=lambda k: _sort_key(nodes[k])):
        via = assignment[ck]
        if via is None:
            orphans.append(ck)
        else:
            clients_of.setdefault(via, []).append(ck)
    heads = sorted(
        (k for k, r in nodes.items() if r.role == Role.PEER and k not in bridges),
        key=lambda k: (k != self_key, _sort_key(nodes[k])),
    )
    heights = [
        1 + math.ceil(sum(1 for c in clients_of.get(pk, []) if c not in bridges) / _CLIENT_COLS)
        for pk in heads
    ]
    loose = [c for c in orphans if c not in bridges]
    loose += [c for b in sorted(bridges) for c in clients_of.get(b, []) if c not in bridges]
    # about as many rows as columns, in groups (a group is wider than high)
    cols = max(_MIN_GROUP_COLS, math.ceil(math.sqrt(len(heads) * 0.8))) if heads else 1
    return _Plan(heads, heights, clients_of, loose, cols)


def _dot_args(fmt: str) -> list[str]:
    if fmt not in ("svg", "png"):
        raise invalid_argument(f"format: must be dot, svg or png (got {fmt!r})")
    exe = shutil.which("dot")
    if exe is None:
        raise unavailable("graphviz is not installed: apt-get install graphviz")
    return [exe, f"-T{fmt}"]


def _render_failed(rc: int, err: bytes) -> ServiceError:
    lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
    return unavailable(f"graphviz failed (exit {rc}): {lines[0] if lines else 'no message'}")


def render_graph(dot: str, fmt: GraphFormat, *, timeout: float = RENDER_TIMEOUT_S) -> bytes:
    """``dot`` itself, or Graphviz's SVG/PNG rendering of it (``dot -T<fmt>``).

    Blocking; from the event loop use :func:`render_graph_async`. Raises
    ``unavailable`` when Graphviz is missing, fails or takes over ``timeout``.
    """
    if fmt == "dot":
        return dot.encode()
    args = _dot_args(fmt)
    try:
        proc = subprocess.run(args, input=dot.encode(), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise unavailable(f"graphviz took more than {timeout:g} s to draw the graph") from None
    except OSError as e:
        raise unavailable(f"cannot run graphviz: {e}") from None
    if proc.returncode != 0:
        raise _render_failed(proc.returncode, proc.stderr)
    return proc.stdout


async def render_graph_async(
    dot: str, fmt: GraphFormat, *, timeout: float = RENDER_TIMEOUT_S
) -> bytes:
    """:func:`render_graph` without blocking the event loop (Graphviz is killed on timeout)."""
    if fmt == "dot":
        return dot.encode()
    args = _dot_args(fmt)
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        raise unavailable(f"cannot run graphviz: {e}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(dot.encode()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise unavailable(f"graphviz took more than {timeout:g} s to draw the graph") from None
    if proc.returncode != 0:
        raise _render_failed(proc.returncode or 0, err)
    return out
