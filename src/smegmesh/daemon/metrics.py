"""Prometheus metrics of one ``smegd`` (``metricsListen``: ``GET /metrics``).

Each daemon has its own :class:`~prometheus_client.CollectorRegistry` (no
process globals: several daemons may share a process in tests). Counters are
bumped where things happen, at O(1) each; everything that is state (members
by state, WireGuard peers and handshake ages, DNS answers by code) is read
when scraped, by :class:`_StateCollector`. A scrape costs O(members); answers
are cached for :data:`SCRAPE_CACHE_S`, so scraping in a loop costs at most one
collection a second. The endpoint serves metrics only, without a token:
bind it to a private address.

Metric names (all prefixed ``smegd_``) are listed in docs/OPERATIONS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import dns.rcode
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from smegmesh.core.wire import message_name
from smegmesh.daemon.defaults import VERSION
from smegmesh.daemon.transport import Refused, RpcClient, RpcError
from smegmesh.daemon.wgtraffic import TrafficTotals
from smegmesh.daemon.wirestats import WireStats, run_sampler

__all__ = ["SCRAPE_CACHE_S", "MeteredRpcClient", "Metrics", "serve_metrics"]

log = logging.getLogger("smegd")

#: a scrape within this many seconds of the previous one gets the same answer
SCRAPE_CACHE_S = 1.0
#: a WireGuard status read for a scrape gives up after this long (the last one is used)
WG_READ_TIMEOUT_S = 2.0

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_RECONCILE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: WireGuard re-keys every 2 minutes: a handshake older than 180 s means no session
_HANDSHAKE_BUCKETS = (5.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 1800.0, 3600.0)
#: the response codes the DNS server sends: shown from 0 (others once sent, by a forwarder)
_DNS_RCODES = frozenset(
    int(c)
    for c in (
        dns.rcode.NOERROR,
        dns.rcode.FORMERR,
        dns.rcode.SERVFAIL,
        dns.rcode.NXDOMAIN,
        dns.rcode.NOTIMP,
        dns.rcode.REFUSED,
        dns.rcode.BADVERS,
    )
)


class Metrics:
    """The registry of one daemon and the counters its code bumps."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        r = self.registry = CollectorRegistry()
        self.rpc_sent = Counter(
            "smegd_rpc_sent",
            "Node-to-node calls made (gossip, liveness, joins), by message type and outcome",
            ["type", "outcome"],
            registry=r,
        )
        self.rpc_received = Counter(
            "smegd_rpc_received",
            "Node-to-node calls answered, by message type and outcome",
            ["type", "outcome"],
            registry=r,
        )
        self.rpc_bytes = Counter(
            "smegd_rpc_bytes",
            "Bytes of node-to-node message bodies, by direction (in/out) and message type",
            ["direction", "type"],
            registry=r,
        )
        self.rpc_latency = Histogram(
            "smegd_rpc_duration_seconds",
            "Round-trip time of node-to-node calls this node made, by message type",
            ["type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rpc_handle = Histogram(
            "smegd_rpc_handle_seconds",
            "Time this node took to answer node-to-node calls, by message type",
            ["type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.reconcile = Histogram(
            "smegd_reconcile_duration_seconds",
            "Time to apply one mesh's WireGuard and host configuration",
            buckets=_RECONCILE_BUCKETS,
            registry=r,
        )
        self.admissions = Counter(
            "smegd_admissions",
            "Join requests this node answered, by result (admitted, refused)",
            ["result"],
            registry=r,
        )
        self.reloads = Counter(
            "smegd_config_reloads",
            "Configuration reloads (SIGHUP), by result (ok, failed)",
            ["result"],
            registry=r,
        )
        # every known label value from 0: a series that first appears at 1 makes no
        # increase(), and an alert on the first failure since the start would not fire
        for result in ("admitted", "refused"):
            self.admissions.labels(result)
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        r.register(_StateCollector(daemon))
        #: bytes on the node's sockets (TLS, HTTP/2, gRPC framing), see daemon/wirestats.py
        self.wire = WireStats()
        r.register(_WireCollector(self))
        #: (metric, labels) -> child: skips labels()'s lock and checks on the hot path
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._cache: tuple[float, bytes] | None = None
        self._refresh_lock = asyncio.Lock()

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached (label values come from a closed set)."""
        key = (metric, labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    # -- incoming calls ------------------------------------------------------------
    def handler(
        self, inner: Callable[[bytes, bytes], Awaitable[bytes]]
    ) -> Callable[[bytes, bytes], Awaitable[bytes]]:
        """Wrap the daemon's request handler: count, time and size every call it answers."""

        async def metered(src: bytes, body: bytes) -> bytes:
            kind = message_name(body) or "malformed"
            t0 = time.perf_counter()
            outcome = "error"
            try:
                reply = await inner(src, body)
                answer = message_name(reply)
                outcome = "refused" if answer == "Refusal" else "ok"
                if kind == "JoinRequest":
                    self.child(
                        self.admissions, "admitted" if answer == "JoinReply" else "refused"
                    ).inc()
                self.child(self.rpc_bytes, "out", kind).inc(len(reply))
                return reply
            except Refused:
                outcome = "refused"
                if kind == "JoinRequest":
                    self.child(self.admissions, "refused").inc()
                raise
            finally:
                self.child(self.rpc_received, kind, outcome).inc()
                self.child(self.rpc_bytes, "in", kind).inc(len(body))
                self.child(self.rpc_handle, kind).observe(time.perf_counter() - t0)

        return metered

    # -- scraping --------------------------------------------------------------------
    async def render(self) -> bytes:
        """The exposition text (cached for :data:`SCRAPE_CACHE_S`)."""
        async with self._refresh_lock:
            now = time.monotonic()
            if self._cache is not None and now - self._cache[0] < SCRAPE_CACHE_S:
                return self._cache[1]
            await self._read_wireguard()
            data = generate_latest(self.registry)
            self._cache = (time.monotonic(), data)
            return data

    async def _read_wireguard(self) -> None:
        """Fresh handshake ages and counters, read off the event loop (bounded in time)."""
        d = self.daemon
        backend = getattr(d, "backend", None)
        if backend is None:
            return
        loop = asyncio.get_running_loop()
        for mesh_id, rt in list(d.meshes.items()):
            if rt.joining or not rt.up:
                continue
            with contextlib.suppress(Exception):
                d.wg_status[mesh_id] = await asyncio.wait_for(
                    loop.run_in_executor(d._wg_pool, backend.read, rt.ifname), WG_READ_TIMEOUT_S
                )


class MeteredRpcClient(RpcClient):
    """:class:`RpcClient` that counts, times and sizes every call it makes."""

    def __init__(self, metrics: Metrics, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._metrics = metrics

    async def call(
        self,
        endpoint: str,
        fp: bytes,
        body: bytes,
        timeout: float | None = None,
        *,
        to: bytes | None = None,
        identity: Any = None,
    ) -> bytes:
        m = self._metrics
        kind = message_name(body) or "unknown"
        t0 = time.perf_counter()
        m.child(m.rpc_bytes, "out", kind).inc(len(body))
        try:
            reply = await super().call(endpoint, fp, body, timeout, to=to, identity=identity)
        except RpcError:
            m.child(m.rpc_sent, kind, "error").inc()
            raise
        m.child(m.rpc_latency, kind).observe(time.perf_counter() - t0)
        m.child(m.rpc_bytes, "in", kind).inc(len(reply))
        m.child(m.rpc_sent, kind, "refused" if message_name(reply) == "Refusal" else "ok").inc()
        return reply


class _StateCollector(Collector):
    """Gauges read from the daemon's state at scrape time (on the event loop)."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.traffic = TrafficTotals()

    def collect(self) -> Iterable[Metric]:
        d = self.daemon
        info = InfoMetricFamily("smegd", "Version of this smegd")
        info.add_metric([], {"version": VERSION})
        yield info
        meshes = list(d.meshes.values())
        yield GaugeMetricFamily("smegd_meshes", "Meshes this node is in", value=len(meshes))
        members = GaugeMetricFamily(
            "smegd_members",
            "Members of each mesh known to this node, by state (live, suspect, pruned, left)",
            labels=["mesh", "state"],
        )
        peers = GaugeMetricFamily(
            "smegd_wireguard_peers", "WireGuard peers configured, per mesh", labels=["mesh"]
        )
        never = GaugeMetricFamily(
            "smegd_wireguard_peers_without_handshake",
            "WireGuard peers that never completed a handshake, per mesh",
            labels=["mesh"],
        )
        ages = GaugeHistogramMetricFamily(
            "smegd_wireguard_handshake_age_seconds",
            "Age of each WireGuard peer's latest handshake, per mesh (peers never "
            "handshaken are not counted)",
            labels=["mesh"],
        )
        traffic = CounterMetricFamily(
            "smegd_wireguard_bytes",
            "WireGuard traffic with this mesh's peers, by direction (in/out)",
            labels=["mesh", "direction"],
        )
        refuted = CounterMetricFamily(
            "smegd_prunes_refuted",
            "Prunes of members that then showed they were alive, per mesh (the log "
            "names the pruner: one pruning live members by the dozen is to be evicted)",
            labels=["mesh"],
        )
        by_ref = CounterMetricFamily(
            "smegd_pushed_items_by_reference",
            "Pushed records and prunes that came without the parts every member holds "
            "(core/elide.py), by outcome: resolved from our state, or unresolved (pulled "
            "by a sync session), per mesh",
            labels=["mesh", "outcome"],
        )
        now = time.time()
        for rt in meshes:
            mid = rt.mesh_id
            refuted.add_metric([mid], rt.node.refuted.total)
            for outcome, n in rt.node.by_reference.items():
                by_ref.add_metric([mid, outcome], n)
            for state, n in _member_counts(rt.node).items():
                members.add_metric([mid, state], n)
            status = d.wg_status.get(mid)
            if status is None:
                continue
            ps = list(status.peers.values())
            peers.add_metric([mid], len(ps))
            seen = [now - p.last_handshake for p in ps if p.last_handshake]
            never.add_metric([mid], len(ps) - len(seen))
            buckets = [(str(b), float(sum(1 for a in seen if a <= b))) for b in _HANDSHAKE_BUCKETS]
            buckets.append(("+Inf", float(len(seen))))
            ages.add_metric([mid], buckets, gsum_value=float(sum(seen)))
            rx, tx = self.traffic.read(mid, ps)
            traffic.add_metric([mid, "in"], float(rx))
            traffic.add_metric([mid, "out"], float(tx))
        self.traffic.keep_only(d.meshes)
        yield from (members, refuted, by_ref, peers, never, ages, traffic)
        if d.dns is not None:
            yield from _dns_metrics(d.dns.stats)


def _dns_metrics(stats: Any) -> Iterable[Metric]:
    """Answers by response code and messages dropped, of the DNS server (``dnsListen``)."""
    queries = CounterMetricFamily(
        "smegd_dns_answers",
        "DNS answers sent, by response code (NOERROR, NXDOMAIN, REFUSED...)",
        labels=["rcode"],
    )
    for code, n in enumerate(stats.rcodes):
        if n or code in _DNS_RCODES:
            queries.add_metric([dns.rcode.to_text(dns.rcode.Rcode(code))], n)
    yield queries
    dropped = CounterMetricFamily("smegd_dns_dropped", "DNS messages dropped without an answer")
    dropped.add_metric([], stats.dropped)
    yield dropped


class _WireCollector(Collector):
    """Socket-level bytes (sampled at scrape time) and the RPC pool's size."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        t = self.metrics.wire.sample()
        rpc = getattr(self.metrics.daemon, "rpc", None)
        fetch = getattr(rpc, "fetch_wire", (0, 0))
        wire = CounterMetricFamily(
            "smegd_wire_bytes",
            "TCP payload bytes of node-to-node traffic (TLS, HTTP/2, gRPC framing and "
            "messages), by direction (in/out); read from the kernel (TCP_INFO)",
            labels=["direction"],
        )
        wire.add_metric(["out"], float(t.tx + fetch[0]))
        wire.add_metric(["in"], float(t.rx + fetch[1]))
        yield wire
        segs = CounterMetricFamily(
            "smegd_wire_segments",
            "TCP segments of node-to-node traffic, by direction (for the TCP/IP header overhead)",
            labels=["direction"],
        )
        segs.add_metric(["out"], float(t.segs_out))
        segs.add_metric(["in"], float(t.segs_in))
        yield segs
        yield GaugeMetricFamily(
            "smegd_wire_sockets", "Node-to-node TCP connections open (both ways)", value=t.sockets
        )
        if rpc is not None:
            yield GaugeMetricFamily(
                "smegd_rpc_channels",
                "Outgoing node-to-node channels open (bounded by the pool's cap)",
                value=rpc.open_channels,
            )
            yield CounterMetricFamily(
                "smegd_rpc_channel_waits",
                "Calls that waited for a free outgoing connection (all maxChannels busy)",
                value=rpc.slot_waits,
            )
        yield from _transport_metrics(rpc, getattr(self.metrics.daemon, "rpc_server", None))


def _transport_metrics(rpc: Any, server: Any) -> Iterable[Metric]:
    """Calls by transport (gRPC stream or datagram) and the datagram path's wire bytes."""
    calls = CounterMetricFamily(
        "smegd_rpc_transport_calls",
        "Node-to-node calls by direction (out: made, in: answered), message type and "
        "transport (stream: gRPC; datagram: answered by one UDP datagram)",
        labels=["direction", "type", "transport"],
    )
    for obj in (rpc, server):
        for (direction, kind, transport), n in getattr(obj, "transport_calls", {}).items():
            calls.add_metric([direction, kind, transport], float(n))
    yield calls
    dg = getattr(rpc, "datagrams", None)
    if dg is None:
        return
    st = dg.stats
    wire = CounterMetricFamily(
        "smegd_wire_datagram_bytes",
        "Bytes of node-to-node UDP datagrams on the wire (IP and UDP headers included), by "
        "direction (in/out) and message type (add to smegd_wire_bytes for the total)",
        labels=["direction", "type"],
    )
    for (direction, kind), n in st.bytes.items():
        wire.add_metric([direction, kind], float(n))
    yield wire
    refused = CounterMetricFamily(
        "smegd_datagrams_refused",
        "Node-to-node datagrams dropped or refused, by reason",
        labels=["reason"],
    )
    for reason, n in st.refused.items():
        refused.add_metric([reason], float(n))
    yield refused
    fallbacks = CounterMetricFamily(
        "smegd_datagram_calls",
        "Calls this node tried by datagram, by result (answered; or sent on to the gRPC "
        "stream: unanswered, use the stream)",
        labels=["result"],
    )
    for result, n in st.fallbacks.items():
        fallbacks.add_metric([result], float(n))
    yield fallbacks


def _member_counts(node: Any) -> dict[str, int]:
    st = node.mesh
    suspects = node.suspects
    counts = {"live": 0, "suspect": 0, "pruned": 0, "left": 0}
    for key in st.node_keys():
        if st.is_live(key):
            counts["suspect" if key in suspects else "live"] += 1
            continue
        rec = st.get(key)
        counts["left" if rec is not None and rec.left else "pruned"] += 1
    return counts


async def serve_metrics(metrics: Metrics, host: str, port: int) -> Any:
    """Serve ``GET /metrics`` on ``host:port``; returns the server (``await .stop()``)."""
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse, Response

    from smegmesh.daemon.api import serve_tcp
    from smegmesh.daemon.api_head import HeadAsGet

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    cfg = getattr(metrics.daemon, "config", None)
    api = getattr(cfg, "api_listen_addr", None)
    metrics.wire.exclude_ports.update({port, *([api[1]] if api else [])})

    @app.get("/metrics")
    async def scrape() -> Response:
        return Response(await metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    async def root() -> Response:
        return PlainTextResponse("smegd metrics: GET /metrics\n")

    server = await serve_tcp(HeadAsGet(app), host, port, key="metricsListen")  # type: ignore[arg-type]
    return _MetricsServer(server, metrics.wire)


class _MetricsServer:
    """The metrics listener and the wire byte sampler (stopped together)."""

    def __init__(self, server: Any, wire: WireStats) -> None:
        self._server = server
        self._sampler = asyncio.create_task(run_sampler(wire))

    async def stop(self) -> None:
        self._sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sampler
        await self._server.stop()
