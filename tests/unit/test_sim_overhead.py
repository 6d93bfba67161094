"""The simulator's per-message wire overhead (issue 14): on requests and replies, off by default."""

from __future__ import annotations

import pytest

from smegmesh.sim.driver import NetParams
from smegmesh.sim.overhead import (
    CONNECT_BYTES,
    DGRAM_MAX_BODY,
    DGRAM_MAX_REQUEST,
    DGRAM_OVERHEAD_BYTES,
    REPLY_OVERHEAD_BYTES,
    REQUEST_OVERHEAD_BYTES,
    model_of,
    reply_bytes,
    request_bytes,
)
from smegmesh.sim.simulator import T0, Simulator


def _run(overhead: bool) -> Simulator:
    sim = Simulator.steady(12, seed=3, net=NetParams(loss=0.0, wire_overhead=overhead))
    sim.run_until(T0 + 6_000)
    return sim


def test_wire_overhead_adds_the_table_per_message_and_nothing_else() -> None:
    bare, charged = _run(False), _run(True)
    assert bare.traffic.msgs == charged.traffic.msgs  # same run, only the byte count differs
    msgs = bare.traffic.msgs
    # connection set-up: every call of the stream model to a member without a warm channel
    opened = sum(p.opened for (m, _h), p in charged._pools.items() if m == "stream")
    assert 0 < opened <= 12 * 11  # a pool holds all 11 others: once per pair at most
    extra = sum(charged.traffic.tx) - sum(bare.traffic.tx) - opened * CONNECT_BYTES
    # every message is a request or a reply: between all-replies and all-requests
    assert msgs * REPLY_OVERHEAD_BYTES <= extra <= msgs * REQUEST_OVERHEAD_BYTES
    assert extra > 0.3 * msgs * (REQUEST_OVERHEAD_BYTES + REPLY_OVERHEAD_BYTES)


def _run_model(model: bool | str, n: int = 12) -> Simulator:
    sim = Simulator.steady(n, seed=3, net=NetParams(loss=0.0, wire_overhead=model))
    sim.run_until(T0 + 6_000)
    return sim


def test_datagram_model_charges_probes_as_datagrams_and_big_calls_as_streams() -> None:
    bare, stream, dgram = _run_model(False), _run_model("stream"), _run_model("datagram")
    assert bare.traffic.msgs == stream.traffic.msgs == dgram.traffic.msgs
    # True keeps its old meaning: the stream model
    assert sum(_run_model(True).traffic.tx) == sum(stream.traffic.tx)
    for name in ("Ping", "Ack"):
        count, payload = bare.traffic.by_type[name]
        assert dgram.traffic.by_type[name] == [count, payload + count * DGRAM_OVERHEAD_BYTES]
    assert sum(bare.traffic.tx) < sum(dgram.traffic.tx) < sum(stream.traffic.tx)


def test_datagram_model_rules() -> None:
    assert request_bytes("datagram", "Ping", 40) == (DGRAM_OVERHEAD_BYTES, True)
    assert request_bytes("datagram", "Push", DGRAM_MAX_BODY) == (DGRAM_OVERHEAD_BYTES, True)
    # larger: 2-4 parts, each a datagram with a 2-byte part header; larger still: the stream
    assert request_bytes("datagram", "Push", DGRAM_MAX_BODY + 1) == (
        2 * (DGRAM_OVERHEAD_BYTES + 2),
        True,
    )
    assert request_bytes("datagram", "Push", DGRAM_MAX_REQUEST) == (
        4 * (DGRAM_OVERHEAD_BYTES + 2),
        True,
    )
    assert request_bytes("datagram", "Push", DGRAM_MAX_REQUEST + 1) == (
        REQUEST_OVERHEAD_BYTES,
        False,
    )
    assert request_bytes("datagram", "SyncStep", 40) == (DGRAM_OVERHEAD_BYTES, True)
    assert request_bytes("datagram", "SyncEnd", 40) == (REQUEST_OVERHEAD_BYTES, False)
    assert request_bytes("datagram", "JoinRequest", 40) == (REQUEST_OVERHEAD_BYTES, False)
    assert request_bytes("stream", "Ping", 40) == (REQUEST_OVERHEAD_BYTES, False)
    assert reply_bytes("Ack", 30, 40, True) == DGRAM_OVERHEAD_BYTES
    assert reply_bytes("Ack", 30, 40, False) == REPLY_OVERHEAD_BYTES
    # too big for a datagram: "use the stream", then the whole call again on the stream
    assert reply_bytes("SyncStep", 5_000, 60, True) == (
        DGRAM_OVERHEAD_BYTES + 60 + REQUEST_OVERHEAD_BYTES + REPLY_OVERHEAD_BYTES
    )
    assert model_of(False) is None and model_of(True) == "stream"
    with pytest.raises(ValueError, match="unknown wire overhead model"):
        model_of("quic")


def test_one_run_counts_every_model() -> None:
    """The chosen model's bytes are charged; the others are totalled from the same run."""
    stream, dgram = _run_model("stream"), _run_model("datagram")
    for sim in (stream, dgram):
        assert sim.traffic.models["stream"][0] == sum(stream.traffic.tx)
        assert sim.traffic.models["datagram"][0] == sum(dgram.traffic.tx)
        assert sim.traffic.models["payload"][0] == sum(_run_model(False).traffic.tx)


def test_the_mesh_id_length_is_charged_on_every_message() -> None:
    """``--mesh-id``: every message carries the mesh id, so a generated one (23
    characters) costs 20 bytes a message more than the default "sim"."""
    from smegmesh.sim.__main__ import config_from_args, parse_args

    cfg = config_from_args(parse_args(["--mesh-id", "amber-falcon-river-k7q2"]))
    assert cfg.mesh_id == "amber-falcon-river-k7q2"
    assert config_from_args(parse_args([])).mesh_id == "sim"
    short = Simulator.steady(12, seed=3, net=NetParams(loss=0.0))
    long = Simulator.steady(12, seed=3, net=NetParams(loss=0.0), mesh_id=cfg.mesh_id)
    for sim in (short, long):
        sim.run_until(T0 + 6_000)
    count, payload = short.traffic.by_type["Ping"]
    assert long.traffic.by_type["Ping"] == [count, payload + count * 20]
