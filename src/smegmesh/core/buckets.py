"""Token buckets per key, bounded in keys. Pure: time is an argument.

What the node's budgets share (``daemon.member_budget``: request bytes per
member; ``core.prune_budget``: prunes per pruner): a key's tokens refill at
``rate`` per unit of time up to ``burst``; a key seen for the first time
starts full; past ``max_keys`` the least recently seen key is forgotten (it
starts full again).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

__all__ = ["KeyedBuckets", "shifted"]

K = TypeVar("K")


def shifted(times: dict[K, int], delta: int) -> dict[K, int]:
    """``times`` moved by ``delta`` (a step of the wall clock: ``engine.ClockStepped``)."""
    return {k: t + delta for k, t in times.items()}


class KeyedBuckets:
    """``take(key, now, amount, floor)``: see the module docstring."""

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # tokens, at

    def __len__(self) -> int:
        return len(self._buckets)

    def clock_stepped(self, delta: float) -> None:
        """The clock was stepped by ``delta``: the buckets' times move with it (order kept)."""
        self._buckets = OrderedDict(
            (k, (tok, at + delta)) for k, (tok, at) in self._buckets.items()
        )

    def tokens(self, key: bytes, now: float) -> float:
        """``key``'s tokens at ``now`` (a key not seen: ``burst``); takes nothing."""
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + max(0.0, now - at) * self.rate)

    def take(self, key: bytes, now: float, amount: float, floor: float) -> bool:
        """Take ``amount`` from ``key``'s tokens if they are at least ``floor``.

        A ``floor`` below ``amount`` lets the tokens go into debt (down to
        ``floor - amount``). False: not taken.
        """
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        ok = tokens >= floor
        if ok:
            tokens -= amount
        self._buckets[key] = (tokens, max(at, now))
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return ok
