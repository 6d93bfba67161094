"""The simulator's datagram overhead model is the transport's own layout (issue 14)."""

from __future__ import annotations

from smegmesh.daemon import dgram_wire
from smegmesh.sim import overhead


def test_the_datagram_model_matches_the_datagram_wire_format() -> None:
    assert overhead.DGRAM_OVERHEAD_BYTES == dgram_wire.OVERHEAD + 28
    assert overhead.DGRAM_MAX_BODY == dgram_wire.MAX_BODY
