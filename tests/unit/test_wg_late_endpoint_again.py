"""A second read of the late-endpoint change: each test failed on its first form.

* A name whose address changed: the resolver answered an expired name from
  its old answer and looked it up again in the background, so the full read
  sent WireGuard the address of five minutes before (the new one came only
  at the next full read); an old answer is waited for again now.
* An apply that fails each time (here the host's) with a name left out: every
  health check re-applied it, two full reads and two warnings each time.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import Any

import pytest

from smegmesh.core.wgdiff import WgOp
from smegmesh.net.host import MemoryHost
from smegmesh.wg.memory import MemoryBackend
from smegmesh.wg.reconcile import Reconciler
from smegmesh.wg.resolver import EndpointResolver, resolve_ops
from test_wg_late_endpoint import P, settle, wanted


class _Wg(MemoryBackend):
    """Holds what WireGuard would: the IP literals sent (a full read returns IPs)."""

    def __init__(self, resolve: Any) -> None:
        super().__init__()
        self.resolve = resolve

    def apply(self, name: str, ops: Sequence[WgOp]) -> list[WgOp]:
        send, applied = resolve_ops(ops, self.resolve)
        super().apply(name, send)
        return applied


def test_a_changed_address_reaches_wireguard_at_the_full_read() -> None:
    now = [0.0]
    ip = ["192.0.2.1"]

    def lookup(*_a: object, **_k: object) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_DGRAM, 0, "", (ip[0], 51820))]

    resolve = EndpointResolver(lookup=lookup, clock=lambda: now[0])
    wg = _Wg(resolve)
    rec = Reconciler(wg, MemoryHost(), clock=lambda: now[0])  # verify_interval 300
    rec.apply(*wanted())
    assert wg.devices["wgc0"].peers[P].endpoint == "192.0.2.1:51820"
    ip[0] = "192.0.2.2"  # the member's gateway moved
    now[0] = 300.0  # full read: live IP != desired name -> UpdatePeer(name)
    rec.apply(*wanted())
    settle(resolve)
    for _ in range(10):  # a minute of health checks
        now[0] += 5
        rec.check()
    assert wg.devices["wgc0"].peers[P].endpoint == "192.0.2.2:51820"
    resolve.close()


class _BrokenHost(MemoryHost):
    def apply(self, interface: str, ops: Any) -> None:
        raise OSError("RTNETLINK answers: Operation not permitted")


def test_a_failing_host_apply_with_a_left_out_name_does_not_reread_every_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    wg = _Wg(lambda ep: None if ep[0].isalpha() else ep)  # the name never resolves
    rec = Reconciler(wg, _BrokenHost(), clock=lambda: now[0])
    with pytest.raises(OSError):
        rec.apply(*wanted())
    reads = wg.reads
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(12):  # one minute
            now[0] += 5
            rec.check()
    assert wg.reads - reads <= 1
    assert len(caplog.records) <= 2
