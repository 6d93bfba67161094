"""Prometheus metrics (issue 15): real daemons scraped over HTTP, parsed with prometheus-client."""

from __future__ import annotations

import json
import signal
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from smegmesh.daemon.ports import choose_wg_port
from smegmesh.daemon.service import ServiceError
from smegmesh.testbed.loopback import (
    Cluster,
    Smegd,
    create_mesh,
    free_port,
    wait_converged,
    wait_until,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(d: Smegd) -> Samples:
    port = d.extra["metricsListen"].rsplit(":", 1)[1]
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    r.raise_for_status()
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over the samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def members(d: Smegd, mesh: str, state: str) -> float:
    return value(scrape(d), "smegd_members", mesh=mesh, state=state)


@pytest.fixture
def cl() -> Any:
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


def _with_metrics(cl: Cluster, n: int, **extra: Any) -> list[Smegd]:
    out = []
    for _ in range(n):
        out += cl.add(
            1, wait=False, extra={"metricsListen": f"127.0.0.1:{free_port('127.0.0.1')}", **extra}
        )
    cl.wait_ready()
    return out


def test_metrics_move_during_a_join_and_a_prune(cl: Cluster) -> None:
    a, b, c = _with_metrics(cl, 3)
    mesh = create_mesh(a, [])
    s0 = scrape(a)
    assert value(s0, "smegd_members", mesh=mesh, state="live") == 1
    assert value(s0, "smegd_meshes") == 1
    assert value(s0, "smegd_admissions_total", result="admitted") == 0

    tok = a.api("POST", f"/v1/meshes/{mesh}/invites", json={"ttl_s": 600, "uses": 2})["token"]
    for j in (b, c):
        j.api("POST", "/v1/join", json={"token": tok})
    wait_converged([a, b, c], mesh)
    wait_until(lambda: members(a, mesh, "live") == 3, 30, what="3 live members on a")
    s1 = scrape(a)
    assert value(s1, "smegd_admissions_total", result="admitted") == 2
    assert value(s1, "smegd_rpc_received_total", type="JoinRequest", outcome="ok") == 2
    assert total(s1, "smegd_rpc_sent_total", outcome="ok") > 0
    assert total(s1, "smegd_rpc_bytes_total", direction="in") > 0
    assert total(s1, "smegd_rpc_bytes_total", direction="out") > 0
    assert total(s1, "smegd_rpc_duration_seconds_count") > 0
    assert value(s1, "smegd_reconcile_duration_seconds_count") > value(
        s0, "smegd_reconcile_duration_seconds_count"
    )
    wait_until(
        lambda: value(scrape(a), "smegd_wireguard_peers", mesh=mesh) == 2, 30, what="2 WG peers"
    )
    # the joiner counted its call, from its side
    sb = scrape(b)
    assert value(sb, "smegd_rpc_sent_total", type="JoinRequest", outcome="ok") == 1

    # a used-up token is a refusal
    bad = Smegd(cl.root, "bad")
    cl.daemons.append(bad.start())
    bad.wait_ready()
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(bad.sock)), base_url="http://smegd", timeout=30
    ) as client:
        r = client.post("/v1/join", json={"token": tok})
    assert r.status_code == 403, r.text
    wait_until(
        lambda: value(scrape(a), "smegd_admissions_total", result="refused") == 1,
        20,
        what="the refusal counted",
    )
    bad.stop()

    # prune: c dies without a word; the gauges and failure counters move. The
    # failed probes are on whichever of a and b found c dead first (the other
    # may learn the prune by gossip before it probes c itself), so both count.
    def errors() -> float:
        return sum(total(scrape(d), "smegd_rpc_sent_total", outcome="error") for d in (a, b))

    sent_err = errors()
    assert c.proc is not None
    c.proc.send_signal(signal.SIGKILL)
    c.proc.wait(10)
    wait_until(lambda: members(a, mesh, "pruned") >= 1, 60, what="c pruned on a")
    s2 = scrape(a)
    assert errors() > sent_err
    assert value(s2, "smegd_members", mesh=mesh, state="live") >= 2


def test_scrapes_are_cached_and_other_paths_404(cl: Cluster) -> None:
    (a,) = _with_metrics(cl, 1)
    port = a.extra["metricsListen"].rsplit(":", 1)[1]
    r1 = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    r2 = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert r1 == r2  # within a second: the same answer, not a second collection
    assert httpx.get(f"http://127.0.0.1:{port}/v1/meshes").status_code == 404


def test_reload_applies_a_new_gossip_interval_without_restart(cl: Cluster) -> None:
    slow = {"syncInterval": 60, "pullInterval": 60, "heartbeatInterval": 120}
    a, b = _with_metrics(cl, 2, **slow)
    mesh = create_mesh(a, [b])
    assert mesh
    pid = a.proc.pid if a.proc else None

    def calls() -> float:
        return total(scrape(a), "smegd_rpc_sent_total")

    before = calls()
    cfg = a.config()
    cfg.update({"pullInterval": 0.2, "syncInterval": 0.2, "heartbeatInterval": 1})
    a.config_path.write_text(json.dumps(cfg))
    assert a.proc is not None
    a.proc.send_signal(signal.SIGHUP)
    # At the old intervals a sends ~1 call a minute; at the new ones several a second.
    wait_until(lambda: calls() >= before + 20, 30, 0.5, what="gossip at the new interval")
    assert a.proc.pid == pid and a.alive
    assert value(scrape(a), "smegd_config_reloads_total", result="ok") == 1


def test_choose_wg_port_unit() -> None:
    busy = {51820, 51821}
    assert choose_wg_port("m", None, set(), is_free=lambda p: p not in busy) == 51822
    assert choose_wg_port("m", None, {51822}, is_free=lambda p: p not in busy) == 51823
    assert choose_wg_port("m", 4000, set(), is_free=lambda p: True) == 4000
    with pytest.raises(ServiceError) as ei:
        choose_wg_port("m", 51820, set(), is_free=lambda p: p not in busy)
    assert ei.value.status == 409 and "in use on this host" in ei.value.message
    with pytest.raises(ServiceError) as ei:
        choose_wg_port("m", 4000, {4000}, is_free=lambda p: True)
    assert ei.value.status == 409 and "another mesh of this node" in ei.value.message
    with pytest.raises(ServiceError) as ei:
        choose_wg_port("m", None, set(), is_free=lambda p: False)
    assert ei.value.status == 503


def test_counters_of_known_results_are_there_from_the_start(cl: Cluster) -> None:
    """A counter with a known set of label values shows every one at 0 from the start:
    a series that first appears at 1 makes no ``increase()``, so an alert on the first
    failed reload, refused join or SERVFAIL since the daemon started never fired."""
    (d,) = cl.add(
        1, dns_listen=True, extra={"metricsListen": f"127.0.0.1:{free_port('127.0.0.1')}"}
    )
    s = scrape(d)
    for name, label, values in [
        ("smegd_config_reloads_total", "result", ("ok", "failed")),
        ("smegd_admissions_total", "result", ("admitted", "refused")),
        (
            "smegd_dns_answers_total",
            "rcode",
            ("NOERROR", "NXDOMAIN", "REFUSED", "SERVFAIL", "FORMERR", "NOTIMP", "BADVERS"),
        ),
    ]:
        for v in values:
            assert s.get((name, ((label, v),))) == 0, (name, v)


def test_dns_answers_by_rcode(cl: Cluster) -> None:
    import dns.message
    import dns.query
    import dns.rcode

    (d,) = cl.add(
        1, dns_listen=True, extra={"metricsListen": f"127.0.0.1:{free_port('127.0.0.1')}"}
    )
    d.api("POST", "/v1/meshes")

    def ask(name: str, tcp: bool = False, edns: int = -1) -> str:
        q = dns.message.make_query(name, "AAAA", use_edns=edns)
        send = dns.query.tcp if tcp else dns.query.udp
        return dns.rcode.to_text(send(q, d.dns_host, timeout=5, port=d.dns_port).rcode())

    assert ask("nobody.smeg.") == "NXDOMAIN"
    assert ask("nobody.smeg.", tcp=True) == "NXDOMAIN"
    assert ask("example.com.") == "REFUSED"  # no forwarder
    assert ask("nobody.smeg.", edns=1) == "BADVERS"  # header RCODE 0, extended 1
    s = scrape(d)
    assert value(s, "smegd_dns_answers_total", rcode="NXDOMAIN") == 2
    assert value(s, "smegd_dns_answers_total", rcode="REFUSED") == 1
    assert value(s, "smegd_dns_answers_total", rcode="BADVERS") == 1
    assert value(s, "smegd_dns_answers_total", rcode="NOERROR") == 0
