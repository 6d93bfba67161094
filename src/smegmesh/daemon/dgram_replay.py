"""The datagram path's replay cache, per sender (pure: no sockets; issue 14).

See ``daemon/dgram_wire.py`` for the datagram layout and docs/SECURITY.md
("The datagram path") for what it defends against.
"""

from __future__ import annotations

from collections import OrderedDict

from smegmesh.daemon.dgram_wire import DatagramError

__all__ = ["MAX_REPLAY_ENTRIES", "MAX_REPLAY_PER_SENDER", "ReplayCache"]

#: ``(sender, nonce)`` entries the replay cache holds at most, in all and per sender.
MAX_REPLAY_ENTRIES = 65536
MAX_REPLAY_PER_SENDER = 4096
#: The replay cache forgets senders gone quiet once per this many checks.
SWEEP_EVERY = 4096


class _SenderWindow:
    """One sender's nonces within the clock window, and its floor."""

    __slots__ = ("floor_ms", "seen")

    def __init__(self) -> None:
        self.seen: OrderedDict[bytes, int] = OrderedDict()  # nonce -> timestamp, inserted order
        self.floor_ms = 0


class ReplayCache:
    """Refuses a ``(sender, nonce)`` seen before, and anything outside the clock window.

    Kept per sender (an authenticated member key: the check runs after the
    datagram opened under its key). A sender's entries stay until their
    timestamp leaves the window (``skew_ms``). When a sender holds
    ``per_sender`` entries, or the cache ``max_entries`` in all, an entry of
    *that* sender (when full: of a sender holding at least its share) is
    dropped, and that sender's *floor* rises to its timestamp: anything of
    that sender not newer than its floor is refused from then on (it might be
    a replay of what was dropped).

    One floor for every sender (before) let one member lock all the others
    out: datagrams stamped 5 min ahead (inside the window), enough to fill
    the cache, raised the floor 5 min into the future for everyone; an honest
    member with a fast clock did the same on a busy node. Now a sender's
    timestamps move only its own floor.
    """

    def __init__(
        self,
        skew_ms: int,
        max_entries: int = MAX_REPLAY_ENTRIES,
        per_sender: int = MAX_REPLAY_PER_SENDER,
    ) -> None:
        self._skew = skew_ms
        self._max = max_entries
        self._per_sender = max(1, min(per_sender, max_entries))
        self._by: dict[bytes, _SenderWindow] = {}
        self._total = 0
        self._checks = 0

    def __len__(self) -> int:
        return self._total

    def floor_of(self, sender: bytes) -> int:
        """``sender``'s floor (ms): its datagrams stamped at or before it are refused."""
        w = self._by.get(sender)
        return 0 if w is None else w.floor_ms

    def check(self, sender: bytes, nonce: bytes, ts_ms: int, now_ms: int) -> None:
        """Accept (and remember) or raise :class:`DatagramError`."""
        if abs(now_ms - ts_ms) > self._skew:
            raise DatagramError("outside the clock window")
        w = self._by.get(sender)
        if w is not None and ts_ms <= w.floor_ms:
            raise DatagramError("below the replay floor")
        if w is not None and nonce in w.seen:
            raise DatagramError("replayed")
        self._checks += 1
        if self._checks % SWEEP_EVERY == 0:
            self._sweep(now_ms)  # senders gone quiet: O(entries) once per SWEEP_EVERY checks
        if w is None:
            w = self._by[sender] = _SenderWindow()
        else:
            self._expire(w, now_ms)
        if len(w.seen) >= self._per_sender:
            self._drop_oldest(w)
        if self._total >= self._max:
            self._sweep(now_ms)
            if self._total >= self._max:
                self._drop_oldest(self._shedder(w))
        w.seen[nonce] = ts_ms
        self._total += 1

    def _shedder(self, w: _SenderWindow) -> _SenderWindow:
        """Whose entry goes when the cache is full: ``w`` if it holds at least its
        share, else the sender holding the most (a scan, only then)."""
        if w.seen and len(w.seen) * len(self._by) >= self._total:
            return w
        return max(self._by.values(), key=lambda x: len(x.seen))

    def _drop_oldest(self, w: _SenderWindow) -> None:
        _nonce, ts = w.seen.popitem(last=False)
        w.floor_ms = max(w.floor_ms, ts)
        self._total -= 1

    def _expire(self, w: _SenderWindow, now_ms: int) -> None:
        """Drop ``w``'s entries whose timestamp has left the window (from the oldest
        inserted; insertion order is nearly timestamp order, a late one only stays longer)."""
        cutoff = now_ms - self._skew
        seen = w.seen
        while seen:
            k, ts = next(iter(seen.items()))
            if ts >= cutoff:
                return
            del seen[k]
            self._total -= 1

    def _sweep(self, now_ms: int) -> None:
        """Expire every sender's entries; forget senders with none left whose floor
        has left the window too (it can no longer refuse anything the window lets in)."""
        cutoff = now_ms - self._skew
        for sender, w in list(self._by.items()):
            self._expire(w, now_ms)
            if not w.seen and w.floor_ms < cutoff:
                del self._by[sender]
