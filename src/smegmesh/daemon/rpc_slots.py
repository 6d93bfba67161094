"""Who may hold how many of the RPC server's call slots (``daemon/rpc_server.py``),
and who gives way when they are full.

A review (twenty-sixth session) found that 8 member keys held all 128 of a
node's call slots with calls whose body never came (16 slots a key, 30 s a
call), and the datagram path asked the same counter: every other member's
calls and probes were refused or dropped, and honest probers pruned the
victims. So a pool is never one counter that a few callers can fill:

* :class:`BodyWaits`, calls admitted whose body has not come: when full, a
  newcomer takes the place of the oldest waiting call of the caller that
  holds the most, if that caller holds at least two more than the newcomer.
  Only as many callers as the pool has places, each holding one, keep a
  newcomer out.
* :class:`Slots`, calls being handled (and datagram calls, a pool of their
  own): the last ``reserve`` places go only to a caller holding fewer than
  ``share``, so callers that hold many fill at most ``total - reserve``.

Owners are member keys, or for non-members their source network
(:func:`source_networks`): an outsider makes keys for free, not addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Hashable

#: No limit in all (a per-owner count only).
UNBOUNDED = 1 << 62


class Slots:
    """Calls in flight: at most ``total`` in all and ``per_owner`` per owner; the
    last ``reserve`` of ``total`` only for an owner holding fewer than ``share``."""

    def __init__(self, total: int, per_owner: int, reserve: int = 0, share: int = 0) -> None:
        self.total = total
        self.per_owner = per_owner
        self.reserve = reserve
        self.share = share
        self.n = 0
        self._held: dict[Hashable, int] = {}

    def held(self, owner: Hashable) -> int:
        return self._held.get(owner, 0)

    def room(self, owner: Hashable) -> bool:
        h = self._held.get(owner, 0)
        if self.n >= self.total or h >= self.per_owner:
            return False
        return h < self.share or self.n < self.total - self.reserve

    def enter(self, owner: Hashable) -> None:
        self.n += 1
        self._held[owner] = self._held.get(owner, 0) + 1

    def leave(self, owner: Hashable) -> None:
        self.n -= 1
        h = self._held[owner] - 1
        if h:
            self._held[owner] = h
        else:
            del self._held[owner]


class BodyWaits:
    """Calls waiting for their body: at most ``total`` in all, ``per_owner`` per owner.

    :meth:`admit` gives a future that is set when the call must give way (see
    the module doc); the caller stops waiting for the body then.
    """

    def __init__(self, total: int, per_owner: int) -> None:
        self.total = total
        self.per_owner = per_owner
        self.n = 0
        #: owner -> its waiting calls, oldest first
        self._waiting: dict[Hashable, list[asyncio.Future[None]]] = {}

    def held(self, owner: Hashable) -> int:
        return len(self._waiting.get(owner, ()))

    def admit(self, owner: Hashable) -> asyncio.Future[None] | None:
        """A place for one more call of ``owner`` (its give-way signal), or None."""
        mine = self.held(owner)
        if mine >= self.per_owner:
            return None
        if self.n >= self.total:
            # at most ``total`` owners hold places: a scan only when full
            top = max(self._waiting, key=lambda o: len(self._waiting[o]))
            if len(self._waiting[top]) < mine + 2:
                return None
            self._remove(top, self._waiting[top][0]).set_result(None)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, []).append(fut)
        self.n += 1
        return fut

    def leave(self, owner: Hashable, fut: asyncio.Future[None]) -> None:
        """The call's body came, or it ended (nothing if it already gave way)."""
        if not fut.done():
            self._remove(owner, fut).cancel()

    def _remove(self, owner: Hashable, fut: asyncio.Future[None]) -> asyncio.Future[None]:
        waiting = self._waiting[owner]
        waiting.remove(fut)
        if not waiting:
            del self._waiting[owner]
        self.n -= 1
        return fut


def source_networks(addr: str) -> tuple[str, str]:
    """The network a non-member's limits count ``addr`` in, and the wider one.

    IPv6: its /64 and /48 (one host commonly has a /64, one site a /48);
    IPv4 (mapped ones included): the address, twice; anything else: itself.
    """
    try:
        a = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        return addr, addr
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    if isinstance(a, ipaddress.IPv4Address):
        return str(a), str(a)
    net64 = ipaddress.IPv6Network((int(a) >> 64 << 64, 64))
    net48 = ipaddress.IPv6Network((int(a) >> 80 << 80, 48))
    return str(net64), str(net48)
