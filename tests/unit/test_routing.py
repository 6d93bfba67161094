"""Inter-mesh path-vector routing (core/routing.py): bridging, loops, exits, convergence."""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from hypo import examples
from smegmesh.core.addressing import mesh_prefix, overlay_address
from smegmesh.core.desired import GatewayRoute, desired_config
from smegmesh.core.record import MAX_ROUTES, NodeRecord, Role, RouteAdv
from smegmesh.core.routing import DEFAULT_ROUTE, RoutingResult, compute_routes


def key(name: str) -> bytes:
    return hashlib.sha256(b"node:" + name.encode()).digest()


def pfx(mesh_id: str) -> str:
    return str(mesh_prefix(mesh_id))


def rec(
    mesh_id: str,
    k: bytes,
    role: Role = Role.PEER,
    routes: Iterable[RouteAdv] = (),
    *,
    left: bool = False,
) -> NodeRecord:
    """An unsigned record (routing never checks signatures)."""
    return NodeRecord(
        mesh_id=mesh_id,
        wg_key=k,
        sign_key=bytes(32),
        version=1,
        timestamp_ms=0,
        role=role,
        wg_endpoint="192.0.2.1:51820" if role == Role.PEER else None,
        control_endpoint=None,
        tls_fp=None,
        address=str(overlay_address(mesh_id, k)),
        alias="",
        description="",
        services=(),
        routes=tuple(routes),
        assigned_peer=None,
        invites=(),
        admitted=(),
        left=left,
        chain=(),
        proofs=(),
        signature=b"",
    )


# --------------------------------------------------------------------------- simulator


@dataclass
class Node:
    name: str
    meshes: dict[str, Role]
    advertise_routes: bool = True
    advertise_defaults: bool = False
    accept_defaults: bool = False
    key: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.key = key(self.name)


class Net:
    """Every node's record per mesh; :meth:`converge` runs synchronous rounds."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.adverts: dict[tuple[str, str], tuple[RouteAdv, ...]] = {
            (n.name, m): () for n in self.nodes.values() for m in n.meshes
        }
        self.results: dict[str, RoutingResult] = {}

    def records(self, mesh_id: str) -> list[NodeRecord]:
        return [
            rec(mesh_id, n.key, n.meshes[mesh_id], self.adverts[(n.name, mesh_id)])
            for n in self.nodes.values()
            if mesh_id in n.meshes
        ]

    def compute(self, n: Node) -> RoutingResult:
        return compute_routes(
            n.key,
            {m: self.records(m) for m in n.meshes},
            advertise_routes=n.advertise_routes,
            advertise_defaults=n.advertise_defaults,
            accept_defaults=n.accept_defaults,
        )

    def step(self) -> bool:
        results = {name: self.compute(n) for name, n in self.nodes.items()}
        new = {(name, m): r.adverts[m] for name, r in results.items() for m in r.adverts}
        changed = new != self.adverts
        self.adverts, self.results = new, results
        return changed

    def converge(self, max_rounds: int) -> int:
        """Rounds until nothing changes; fails if more than ``max_rounds`` are needed."""
        for i in range(1, max_rounds + 1):
            if not self.step():
                return i
        raise AssertionError(f"no fixed point after {max_rounds} rounds")

    def remove(self, name: str) -> None:
        n = self.nodes.pop(name)
        for m in n.meshes:
            del self.adverts[(name, m)]

    def route(self, name: str, dest: str) -> tuple[str, bytes, tuple[str, ...]] | None:
        for e in self.results[name].table:
            if e.destination == dest:
                return e.mesh_id, e.gateway, e.path
        return None

    def check_invariants(self) -> None:
        for (_name, m), advs in self.adverts.items():
            for a in advs:
                assert m not in a.path, (m, a)  # split horizon
                assert len(set(a.path)) == len(a.path)
        for name, r in self.results.items():
            own = set(self.nodes[name].meshes)
            for e in r.table:
                assert own.isdisjoint(e.path), (name, e)  # no loops
                assert e.mesh_id in own
                assert e.destination not in {pfx(m) for m in own}


def _bfs(net: Net, n: Node, edge_ok: Callable[[Node], bool]) -> dict[str, int]:
    adj: dict[str, set[str]] = {m: set() for x in net.nodes.values() for m in x.meshes}
    for x in net.nodes.values():
        if edge_ok(x):
            ms = [m for m, r in x.meshes.items() if r == Role.PEER]
            for a in ms:
                adj[a].update(b for b in ms if b != a)
    dist = dict.fromkeys(n.meshes, 0)
    q = deque(n.meshes)
    while q:
        a = q.popleft()
        for b in sorted(adj[a]):
            if b not in dist:
                dist[b] = dist[a] + 1
                q.append(b)
    return dist


def expected_lengths(net: Net, n: Node) -> dict[str, int]:
    """Shortest path lengths by BFS over the mesh graph (all-peer topologies).

    Mesh D is ``dist(n's meshes, D)`` meshes away (edges: bridges with
    ``advertise_routes``); the default route is as far as the nearest mesh with
    an exit, over bridges that accept defaults (they only pass on what they use).
    """
    dist = _bfs(net, n, lambda x: x.advertise_routes)
    out = {pfx(m): d for m, d in dist.items() if d > 0}
    if n.accept_defaults and not n.advertise_defaults:
        ddist = _bfs(
            net, n, lambda x: x.advertise_routes and x.accept_defaults and not x.advertise_defaults
        )
        exits = [
            ddist[m]
            for x in net.nodes.values()
            if x.advertise_defaults and x is not n
            for m, r in x.meshes.items()
            if r == Role.PEER and m in ddist
        ]
        if exits:
            out[DEFAULT_ROUTE] = min(exits)
    return out


def check_shortest(net: Net, *, defaults: bool = False) -> None:
    net.check_invariants()
    for name, r in net.results.items():
        got = {e.destination: e.length for e in r.table}
        want = expected_lengths(net, net.nodes[name])
        if not defaults:
            got.pop(DEFAULT_ROUTE, None)
            want.pop(DEFAULT_ROUTE, None)
        assert got == want, name


P, C = Role.PEER, Role.CLIENT


# --------------------------------------------------------------------------- topologies


def test_single_bridge() -> None:
    net = Net([Node("a", {"m1": P}), Node("b", {"m1": P, "m2": P}), Node("c", {"m2": P})])
    assert net.converge(4) <= 3
    assert net.route("a", pfx("m2")) == ("m1", key("b"), ("m2",))
    assert net.route("c", pfx("m1")) == ("m2", key("b"), ("m1",))
    assert net.results["b"].table == ()  # both prefixes are its own
    assert net.adverts[("b", "m1")] == (RouteAdv(pfx("m2"), ("m2",)),)
    assert net.adverts[("b", "m2")] == (RouteAdv(pfx("m1"), ("m1",)),)
    a = net.results["a"]
    assert a.gateway_routes == {"m1": (GatewayRoute(pfx("m2"), key("b")),)}
    assert a.client_destinations == {"m1": ()}
    assert a.adverts == {"m1": ()}  # one mesh: nothing to bridge
    check_shortest(net)


def test_chain_of_three_meshes() -> None:
    net = Net(
        [
            Node("a", {"m1": P}),
            Node("b1", {"m1": P, "m2": P}),
            Node("x", {"m2": P}),
            Node("b2", {"m2": P, "m3": P}),
            Node("c", {"m3": P}),
        ]
    )
    assert net.converge(5) <= 4
    assert net.route("a", pfx("m3")) == ("m1", key("b1"), ("m2", "m3"))
    assert net.route("c", pfx("m1")) == ("m3", key("b2"), ("m2", "m1"))
    assert net.route("x", pfx("m1")) == ("m2", key("b1"), ("m1",))
    assert net.route("x", pfx("m3")) == ("m2", key("b2"), ("m3",))
    assert RouteAdv(pfx("m3"), ("m2", "m3")) in net.adverts[("b1", "m1")]
    check_shortest(net)


def test_loop_of_three_meshes_and_withdrawal() -> None:
    net = Net(
        [
            Node("x1", {"m1": P}),
            Node("x2", {"m2": P}),
            Node("x3", {"m3": P}),
            Node("b12", {"m1": P, "m2": P}),
            Node("b23", {"m2": P, "m3": P}),
            Node("b31", {"m3": P, "m1": P}),
        ]
    )
    assert net.converge(5) <= 4
    check_shortest(net)
    assert net.route("x1", pfx("m2")) == ("m1", key("b12"), ("m2",))
    assert net.route("x1", pfx("m3")) == ("m1", key("b31"), ("m3",))
    # b12 dies: m1 reaches m2 the long way round, without counting to infinity
    net.remove("b12")
    assert net.converge(6) <= 5
    check_shortest(net)
    assert net.route("x1", pfx("m2")) == ("m1", key("b31"), ("m3", "m2"))
    assert net.route("x2", pfx("m1")) == ("m2", key("b23"), ("m3", "m1"))
    assert net.route("b31", pfx("m2")) == ("m3", key("b23"), ("m2",))
    # and b23 too: m2 is cut off, every route to it is withdrawn
    net.remove("b23")
    assert net.converge(6) <= 5
    check_shortest(net)
    assert net.route("x1", pfx("m2")) is None
    assert net.route("x2", pfx("m1")) is None


def test_partition_withdraws_multi_hop_routes() -> None:
    meshes = [f"m{i}" for i in range(6)]
    nodes = [Node(f"x{i}", {m: P}) for i, m in enumerate(meshes)]
    nodes += [Node(f"b{i}", {meshes[i]: P, meshes[i + 1]: P}) for i in range(5)]
    net = Net(nodes)
    assert net.converge(8) <= 7
    check_shortest(net)
    assert net.route("x0", pfx("m5")) == ("m0", key("b0"), ("m1", "m2", "m3", "m4", "m5"))
    net.remove("b2")  # cut between m2 and m3
    assert net.converge(8) <= 7
    check_shortest(net)
    assert net.route("x0", pfx("m5")) is None
    assert net.route("x0", pfx("m2")) is not None


def test_redundant_bridges_spread_and_move_minimally() -> None:
    ends = [Node(f"a{i}", {"m1": P}) for i in range(10)]
    net = Net(
        [
            *ends,
            Node("b1", {"m1": P, "m2": P}),
            Node("b2", {"m1": P, "m2": P}),
            Node("c", {"m2": P}),
        ]
    )
    net.converge(4)
    check_shortest(net)
    before = {n.name: net.route(n.name, pfx("m2")) for n in ends}
    used = {r[1] for r in before.values() if r is not None}
    assert used == {key("b1"), key("b2")}  # both bridges carry traffic
    for n in ends:
        e = next(e for e in net.results[n.name].table if e.destination == pfx("m2"))
        assert e.alternatives == 1
    net.remove("b1")
    net.converge(4)
    for n in ends:
        after = net.route(n.name, pfx("m2"))
        assert after == ("m1", key("b2"), ("m2",))
        r = before[n.name]
        assert r is not None
        if r[1] == key("b2"):
            assert after == r  # unaffected nodes keep their gateway


def test_tie_across_meshes_uses_one_rendezvous() -> None:
    # x is in m1 and m2; b1 (m1, m3) and b2 (m2, m3) both offer m3 at length 1
    net = Net(
        [
            Node("x", {"m1": P, "m2": P}, advertise_routes=False),
            Node("b1", {"m1": P, "m3": P}),
            Node("b2", {"m2": P, "m3": P}),
        ]
    )
    net.converge(4)
    e = next(e for e in net.results["x"].table if e.destination == pfx("m3"))
    assert e.alternatives == 1
    assert (e.mesh_id, e.gateway) in {("m1", key("b1")), ("m2", key("b2"))}
    # many choosers: both meshes get used
    picks = set()
    for i in range(16):
        r = compute_routes(
            key(f"chooser{i}"),
            {"m1": net.records("m1"), "m2": net.records("m2")},
            advertise_routes=False,
            advertise_defaults=False,
            accept_defaults=False,
        )
        picks.add(r.table[0].mesh_id)
    assert picks == {"m1", "m2"}


# --------------------------------------------------------------------------- defaults


def test_defaults_only_when_accepted() -> None:
    net = Net(
        [
            Node("exit", {"m1": P}, advertise_defaults=True, accept_defaults=True),
            Node("yes", {"m1": P}, accept_defaults=True),
            Node("no", {"m1": P}),
        ]
    )
    net.converge(3)
    assert net.adverts[("exit", "m1")] == (RouteAdv(DEFAULT_ROUTE, ()),)
    assert net.route("yes", DEFAULT_ROUTE) == ("m1", key("exit"), ())
    assert net.route("no", DEFAULT_ROUTE) is None
    assert net.route("exit", DEFAULT_ROUTE) is None  # an exit never uses another exit


def test_two_exits_do_not_point_at_each_other_and_spread() -> None:
    users = [Node(f"u{i}", {"m1": P}, accept_defaults=True) for i in range(10)]
    net = Net(
        [
            Node("e1", {"m1": P}, advertise_defaults=True, accept_defaults=True),
            Node("e2", {"m1": P}, advertise_defaults=True, accept_defaults=True),
            *users,
        ]
    )
    net.converge(3)
    assert net.route("e1", DEFAULT_ROUTE) is None
    assert net.route("e2", DEFAULT_ROUTE) is None
    gws = {r[1] for u in users if (r := net.route(u.name, DEFAULT_ROUTE)) is not None}
    assert gws == {key("e1"), key("e2")}


def test_default_through_a_bridge() -> None:
    def build(bridge_accepts: bool) -> Net:
        return Net(
            [
                Node("a", {"m1": P}, accept_defaults=True),
                Node("b", {"m1": P, "m2": P}, accept_defaults=bridge_accepts),
                Node("exit", {"m2": P}, advertise_defaults=True),
            ]
        )

    net = build(True)
    net.converge(4)
    assert net.route("b", DEFAULT_ROUTE) == ("m2", key("exit"), ())
    assert net.route("a", DEFAULT_ROUTE) == ("m1", key("b"), ("m2",))
    # a direct exit (length 0) beats the bridged one (length 1)
    net.nodes["e0"] = Node("e0", {"m1": P}, advertise_defaults=True)
    net.adverts[("e0", "m1")] = ()
    net.converge(4)
    assert net.route("a", DEFAULT_ROUTE) == ("m1", key("e0"), ())
    # a bridge only re-advertises what it routes itself
    net = build(False)
    net.converge(4)
    assert net.route("b", DEFAULT_ROUTE) is None
    assert net.route("a", DEFAULT_ROUTE) is None


# --------------------------------------------------------------------------- switches, clients


def test_advertise_routes_off() -> None:
    net = Net(
        [
            Node("a", {"m1": P}),
            Node("b", {"m1": P, "m2": P}, advertise_routes=False),
            Node("c", {"m2": P}),
        ]
    )
    net.converge(3)
    assert all(advs == () for advs in net.adverts.values())
    assert all(r.table == () for r in net.results.values())


def test_client_routes_via_its_assigned_peer() -> None:
    net = Net(
        [
            Node("cl", {"m1": C}),
            Node("p", {"m1": P}),
            Node("b", {"m1": P, "m2": P}),
            Node("c", {"m2": P}),
        ]
    )
    net.converge(4)
    r = net.results["cl"]
    assert r.client_destinations == {"m1": (pfx("m2"),)}
    (gr,) = r.gateway_routes["m1"]
    assert gr.destination == pfx("m2")
    assert gr.gateway in {key("p"), key("b")}  # its assigned peer, whichever
    assert r.adverts == {"m1": ()}
    assert net.results["b"].client_destinations == {"m1": (), "m2": ()}


def test_clients_are_never_gateways() -> None:
    # "cb" is a client in m1 and a peer in m2: it must not bridge them
    net = Net(
        [
            Node("a", {"m1": P}),
            Node("cb", {"m1": C, "m2": P}),
            Node("c", {"m2": P}),
        ]
    )
    net.converge(3)
    assert net.adverts[("cb", "m1")] == ()
    assert net.adverts[("cb", "m2")] == ()
    assert net.route("a", pfx("m2")) is None
    assert net.route("c", pfx("m1")) is None
    # adverts in a client's record are ignored even if present
    forged = rec("m1", key("cb"), C, [RouteAdv(pfx("m2"), ("m2",))])
    r = compute_routes(
        key("a"),
        {"m1": [rec("m1", key("a")), forged]},
        advertise_routes=True,
        advertise_defaults=False,
        accept_defaults=True,
    )
    assert r.table == ()


def test_client_learns_routes_a_bridge_offers_in_its_client_mesh() -> None:
    # "cb": client in m1 (with a bridge b to m2), peer in m3 — it routes m2
    # via m1 but must not advertise m2 (learned via a client mesh) into m3
    net = Net(
        [
            Node("b", {"m1": P, "m2": P}),
            Node("cb", {"m1": C, "m3": P}),
            Node("z", {"m3": P}),
        ]
    )
    net.converge(4)
    assert net.route("cb", pfx("m2")) == ("m1", key("b"), ("m2",))
    assert net.adverts[("cb", "m3")] == ()
    assert net.route("z", pfx("m2")) is None


def test_peer_meshes_preferred_over_client_meshes_at_equal_length() -> None:
    # b2 and b3 are each other's only possible assigned peer in m2 / m0: if either
    # chose its client mesh for m1, packets could bounce between them forever
    net = Net(
        [
            Node("b2", {"m0": P, "m2": C}),
            Node("b3", {"m0": C, "m2": P}),
            Node("g01", {"m0": P, "m1": P}),
            Node("g21", {"m2": P, "m1": P}),
        ]
    )
    net.converge(4)
    assert net.route("b2", pfx("m1")) == ("m0", key("g01"), ("m1",))
    assert net.route("b3", pfx("m1")) == ("m2", key("g21"), ("m1",))
    check_forwarding(net)


# --------------------------------------------------------------------------- receiving rules


def _one(advs: list[RouteAdv], *, meshes: tuple[str, ...] = ("m1",)) -> RoutingResult:
    my = {m: [rec(m, key("me"))] for m in meshes}
    my["m1"].append(rec("m1", key("g"), P, advs))
    return compute_routes(
        key("me"), my, advertise_routes=True, advertise_defaults=False, accept_defaults=True
    )


def test_rejects_bad_adverts() -> None:
    assert _one([RouteAdv("2001:db8::/64", ("m2",))]).table == ()  # not m2's prefix
    assert _one([RouteAdv(pfx("m2"), ())]).table == ()  # a mesh prefix needs a path
    assert _one([RouteAdv(pfx("m2"), ("m3", "m2", "m3", "m2"))]).table == ()  # repeats
    assert _one([RouteAdv(pfx("m1"), ("m1",))]).table == ()  # own prefix
    # a path through one of my meshes: I reach it directly, never loop through it
    assert _one([RouteAdv(pfx("m3"), ("m2", "m3"))], meshes=("m1", "m2")).table == ()
    ok = _one([RouteAdv(pfx("m3"), ("m2", "m3"))])
    assert [(e.destination, e.path) for e in ok.table] == [(pfx("m3"), ("m2", "m3"))]


def test_ignores_left_records_and_keeps_shortest() -> None:
    g1 = rec("m1", key("g1"), P, [RouteAdv(pfx("m9"), ("m5", "m9"))])
    g2 = rec("m1", key("g2"), P, [RouteAdv(pfx("m9"), ("m9",))], left=True)
    g3 = rec("m1", key("g3"), P, [RouteAdv(pfx("m9"), ("m4", "m9")), RouteAdv(DEFAULT_ROUTE)])
    r = compute_routes(
        key("me"),
        {"m1": [g1, g2, g3]},
        advertise_routes=True,
        advertise_defaults=False,
        accept_defaults=False,
    )
    (e,) = r.table
    assert e.destination == pfx("m9") and e.length == 2 and e.alternatives == 1


def test_deterministic_under_record_order() -> None:
    recs = [
        rec("m1", key(f"g{i}"), P, [RouteAdv(pfx("m2"), ("m2",)), RouteAdv(DEFAULT_ROUTE)])
        for i in range(8)
    ]
    recs.append(rec("m1", key("me"), C))
    base = None
    rnd = random.Random(1)
    for _ in range(5):
        rnd.shuffle(recs)
        r = compute_routes(
            key("me"),
            {"m1": list(recs), "m3": [rec("m3", key("me"))]},
            advertise_routes=True,
            advertise_defaults=False,
            accept_defaults=True,
        )
        base = base or r
        assert r == base


def test_advert_count_is_capped() -> None:
    meshes = [f"m{i}" for i in range(MAX_ROUTES + 6)]
    r = compute_routes(
        key("me"),
        {m: [rec(m, key("me"))] for m in meshes},
        advertise_routes=True,
        advertise_defaults=True,
        accept_defaults=False,
    )
    for m in meshes:
        advs = r.adverts[m]
        assert len(advs) == MAX_ROUTES
        assert advs[0] == RouteAdv(DEFAULT_ROUTE, ())
        assert all(m not in a.path for a in advs)


def test_feeds_desired_config() -> None:
    net = Net([Node("a", {"m1": P}), Node("b", {"m1": P, "m2": P}), Node("c", {"m2": P})])
    net.converge(3)
    iface, host = desired_config(
        mesh_id="m1",
        self_key=key("a"),
        private_key=bytes(32),
        role=P,
        listen_port=51820,
        records=net.records("m1"),
        ifname="smegtest",
        gateway_routes=net.results["a"].gateway_routes["m1"],
    )
    assert pfx("m2") in iface.peers[key("b")].allowed_ips
    assert any(rt.destination == pfx("m2") for rt in host.routes)


# --------------------------------------------------------------------------- random topologies


def check_forwarding(net: Net) -> None:
    """Following next hops from every node delivers every routed destination."""
    members = {(m, n.key): (n, role) for n in net.nodes.values() for m, role in n.meshes.items()}
    by_key = {n.key: n for n in net.nodes.values()}
    for start, r in net.results.items():
        for first in r.table:
            dest, here, remaining = first.destination, net.nodes[start], first.length
            seen, via_client = {here.name}, False
            while True:
                if dest == DEFAULT_ROUTE and here.advertise_defaults:
                    break  # reached an exit
                if dest != DEFAULT_ROUTE and dest in {pfx(m) for m in here.meshes}:
                    break  # reached the destination mesh
                e = next((e for e in net.results[here.name].table if e.destination == dest), None)
                if e is None:
                    # documented limit: a client's default route needs its assigned
                    # peer to route ::/0 too (acceptDefaults on the mesh's peers)
                    assert via_client and dest == DEFAULT_ROUTE, (start, dest)
                    assert not here.accept_defaults
                    break
                assert e.length <= remaining, (start, dest)
                gw, role = members[(e.mesh_id, e.gateway)]
                assert role == P, "gateways are peers"
                if here.meshes[e.mesh_id] == P:
                    # a peer forwards to a gateway that advertised exactly this path
                    assert RouteAdv(dest, e.path) in net.adverts[(gw.name, e.mesh_id)]
                remaining, via_client = e.length, here.meshes[e.mesh_id] == C
                here = by_key[e.gateway]
                assert here.name not in seen, f"forwarding loop {start} -> {dest}"
                seen.add(here.name)


@st.composite
def topologies(draw: st.DrawFn, clients: bool) -> tuple[list[Node], list[str]]:
    n_meshes = draw(st.integers(2, 6))
    meshes = [f"m{i}" for i in range(n_meshes)]
    nodes = [Node(f"x{i}", {m: P}) for i, m in enumerate(meshes)]
    n_bridges = draw(st.integers(1, 7))
    role_st = st.sampled_from([P, P, C]) if clients else st.just(P)
    for j in range(n_bridges):
        ms = draw(st.lists(st.sampled_from(meshes), min_size=2, max_size=3, unique=True))
        roles = {m: draw(role_st) for m in ms}
        nodes.append(
            Node(f"b{j}", roles, advertise_routes=draw(st.sampled_from([True] * 3 + [False])))
        )
    exits = draw(st.lists(st.sampled_from(meshes), max_size=2, unique=True))
    nodes += [Node(f"e{m}", {m: P}, advertise_defaults=True) for m in exits]
    for n in nodes:
        n.accept_defaults = draw(st.booleans())
    bridges = [n.name for n in nodes if n.name.startswith("b")]
    return nodes, draw(st.permutations(bridges))


def _run(topo: tuple[list[Node], list[str]], exact: bool) -> None:
    nodes, kill_order = topo
    n_meshes = len({m for n in nodes for m in n.meshes})
    bound = n_meshes + 2
    net = Net(nodes)
    net.converge(bound)
    check_shortest(net, defaults=True) if exact else net.check_invariants()
    check_forwarding(net)
    # bridges die one by one; each time a bounded number of rounds reconverges
    for name in kill_order:
        net.remove(name)
        net.converge(bound)
        check_shortest(net, defaults=True) if exact else net.check_invariants()
        check_forwarding(net)


@settings(max_examples=examples(80), deadline=None)
@given(topologies(clients=False))
def test_random_peer_topologies_converge_to_shortest_paths(
    topo: tuple[list[Node], list[str]],
) -> None:
    _run(topo, exact=True)


@settings(max_examples=examples(80), deadline=None)
@given(topologies(clients=True))
def test_random_topologies_with_clients_forward_without_loops(
    topo: tuple[list[Node], list[str]],
) -> None:
    _run(topo, exact=False)
