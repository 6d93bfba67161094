"""The simulator's datagram overhead model is the transport's own layout (issue 14)."""

from __future__ import annotations

from smegmesh.daemon import dgram_wire, rpc_client
from smegmesh.sim import overhead


def test_the_datagram_model_matches_the_datagram_wire_format() -> None:
    assert overhead.DGRAM_OVERHEAD_BYTES == dgram_wire.OVERHEAD + 28
    assert overhead.DGRAM_MAX_BODY == dgram_wire.MAX_BODY
    assert overhead.DGRAM_PART_CHUNK == dgram_wire.PART_CHUNK
    assert overhead.DGRAM_MAX_REQUEST == dgram_wire.MAX_REQUEST
    assert dgram_wire.PART.size == 2
    assert dgram_wire.INNER.size == overhead.DGRAM_UNANSWERED_SAVES


def test_the_channel_pool_model_matches_the_client_pool() -> None:
    assert overhead.MAX_CHANNELS == rpc_client.MAX_CHANNELS
    assert int(rpc_client.CHANNEL_IDLE_S * 1000) == overhead.CHANNEL_IDLE_MS


def test_a_stream_call_opens_a_channel_unless_one_is_warm() -> None:
    pool = overhead.ChannelPool(cap=2, idle_ms=1000)
    assert pool.use("a", 0)  # first call: a new connection
    assert not pool.use("a", 999)  # warm
    assert pool.use("a", 1999)  # idle for 1 s: closed, opened again
    assert pool.use("b", 2000) and pool.use("c", 2001)  # cap 2: "a" closed for "c"
    assert pool.use("a", 2002) and not pool.use("c", 2003)
    assert pool.use(("d", 1), 2004) and len(pool) == 2 and pool.opened == 6


def test_the_simulator_charges_connection_set_up_for_stream_calls() -> None:
    """Stream model: every call; datagram model: only what the stream carries."""
    from smegmesh.sim.driver import NetParams
    from smegmesh.sim.simulator import Simulator

    sim = Simulator.steady(30, net=NetParams(wire_overhead="datagram"), seed=3)
    sim.run_until(sim.now + 20_000)
    stream = sum(p.opened for (m, _h), p in sim._pools.items() if m == "stream")
    dgram = sum(p.opened for (m, _h), p in sim._pools.items() if m == "datagram")
    # probes go to every member in turn: nearly every call of the stream model
    # opens a channel at first, but a pool of 64 holds all 29 others after that
    assert 0 < stream <= 30 * 29
    assert dgram < stream
    models = sim.traffic.models
    assert models["stream"][0] > models["datagram"][0] > models["payload"][0]


def test_simulated_records_pin_a_certificate_as_real_ones_do() -> None:
    """Every real record carries its TLS pin (34 bytes encoded); simulated ones too."""
    from smegmesh.sim.simulator import Simulator

    sim = Simulator.steady(6, seed=3)
    assert all(r.tls_fp is not None and len(r.tls_fp) == 32 for r in sim.population.records)
    sim.crash(2)
    sim.restart(2)  # a restarted node re-publishes its record: with the pin
    rec = sim.nodes[2].node.mesh.record(sim.nodes[2].node.key)
    assert rec is not None and rec.tls_fp == sim.population.records[2].tls_fp
