"""The back-off per endpoint of the node-to-node client (``daemon/rpc_client.py``):
connections (the stream) and, per callee key, datagrams (``daemon/rpc_dgram_client.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_CAP_S",
    "BACKOFF_HINT_S",
    "MAX_BACKOFF_ENTRIES",
    "EndpointBackoff",
    "EndpointKey",
]

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
#: A hint that a backed-off endpoint is back (a datagram from its address,
#: which could be forged) brings its next try this close, never closer.
BACKOFF_HINT_S = 5.0
MAX_BACKOFF_ENTRIES = 4096

EndpointKey = tuple[str, bytes]


class EndpointBackoff:
    """Exponential back-off per ``(endpoint, pinned fingerprint)``, for the whole node.

    Any member may write any ``host:port`` into its record; without this, every
    mesh we share with it would make us connect there again and again (a
    reflector). A key that fails (refused, timed out, TLS failed, not the
    certificate its record pins) is not tried again for 1, 2, 4, ... s up to
    :data:`BACKOFF_CAP_S`; a success, or an authenticated call from the node
    that owns the endpoint, clears it. Keyed with the fingerprint, so a record
    that names another node's endpoint with a false pin does not back off the
    real node.
    """

    def __init__(
        self,
        base_s: float = BACKOFF_BASE_S,
        cap_s: float = BACKOFF_CAP_S,
        *,
        max_entries: int = MAX_BACKOFF_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = base_s
        self._cap = cap_s
        self._max = max_entries
        self._clock = clock
        self._state: dict[EndpointKey, tuple[int, float]] = {}  # failures, retry at

    def __len__(self) -> int:
        return len(self._state)

    def wait(self, key: EndpointKey) -> float:
        """Seconds before ``key`` may be tried again (0: now)."""
        st = self._state.get(key)
        return 0.0 if st is None else max(0.0, st[1] - self._clock())

    def failed(self, key: EndpointKey) -> float:
        n = self._state.pop(key, (0, 0.0))[0] + 1
        delay = min(self._cap, self._base * 2.0 ** min(n - 1, 30))
        if len(self._state) >= self._max:
            del self._state[next(iter(self._state))]  # the oldest entry
        self._state[key] = (n, self._clock() + delay)
        return delay

    def ok(self, key: EndpointKey) -> None:
        self._state.pop(key, None)

    def hint(self, key: EndpointKey) -> None:
        """The endpoint's owner called us from its address, unverified (a datagram,
        whose source anyone can forge): try again within :data:`BACKOFF_HINT_S`,
        keeping the count of failures. A node back after a long outage is
        called again in seconds, not minutes; forged hints make us try a foreign
        address at most once per :data:`BACKOFF_HINT_S`, each failure counted.
        """
        st = self._state.get(key)
        if st is not None and st[1] - self._clock() > BACKOFF_HINT_S:
            self._state[key] = (st[0], self._clock() + BACKOFF_HINT_S)
