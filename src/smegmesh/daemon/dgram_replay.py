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
    ``per_sender`` entries, or the cache ``max_entries`` in all, an entry goes:
    the sender's own oldest (when the cache is full and the sender holds
    none: one of the sender holding the most), and *that* sender's floor
    rises to its timestamp. Anything of that sender not newer than its floor
    is refused from then on (it might be a replay of what was dropped).

    One floor for every sender (before) let one member lock all the others
    out: datagrams stamped 5 min ahead (inside the window), enough to fill
    the cache, raised the floor 5 min into the future for everyone; an honest
    member with a fast clock did the same on a busy node. Now a sender's
    timestamps move only its own floor.

    O(1) per check (amortised), with no sweep of the whole cache: each check
    also expires one other sender's old entries, in turn, and forgets that
    sender once it has none and its floor has left the window too. (A sweep
    of all senders whenever the cache was full cost 1.5 ms a datagram at
    3,000 senders; one that could forget the sender being checked let a
    replay through: review, fourteenth session.)
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
        #: sender -> its window, in the order they are tidied (round robin)
        self._by: OrderedDict[bytes, _SenderWindow] = OrderedDict()
        self._total = 0
        #: a sender holding many entries (the one to shed from when the cache
        #: is full and the sender at hand holds none); checked before use
        self._big: bytes | None = None

    def __len__(self) -> int:
        return self._total

    def senders(self) -> int:
        """Senders with a window (entries, or a floor still inside the clock window)."""
        return len(self._by)

    def floor_of(self, sender: bytes) -> int:
        """``sender``'s floor (ms): its datagrams stamped at or before it are refused."""
        w = self._by.get(sender)
        return 0 if w is None else w.floor_ms

    def check(self, sender: bytes, nonce: bytes, ts_ms: int, now_ms: int) -> None:
        """Accept (and remember) or raise :class:`DatagramError`."""
        if abs(now_ms - ts_ms) > self._skew:
            raise DatagramError("outside the clock window")
        self._tidy_next(sender, now_ms)
        w = self._by.get(sender)
        if w is not None:
            if ts_ms <= w.floor_ms:
                raise DatagramError("below the replay floor")
            if nonce in w.seen:
                raise DatagramError("replayed")
            self._expire(w, now_ms)
        else:
            w = self._by[sender] = _SenderWindow()
        if len(w.seen) >= self._per_sender:
            self._drop_oldest(w)
        if self._total >= self._max:
            self._drop_oldest(w if w.seen else self._shedder())
        w.seen[nonce] = ts_ms
        self._total += 1
        big = self._by.get(self._big) if self._big is not None else None
        if big is None or len(w.seen) > len(big.seen):
            self._big = sender

    def _tidy_next(self, sender: bytes, now_ms: int) -> None:
        """Expire the old entries of the next sender in turn (round robin over all
        of them, one a check; not ``sender``'s, which is being checked), and
        forget it once nothing of it is left to refuse."""
        if not self._by:
            return
        other, w = next(iter(self._by.items()))
        if other == sender:
            self._by.move_to_end(other)
            return
        self._expire(w, now_ms)
        if not w.seen and w.floor_ms < now_ms - self._skew:
            del self._by[other]
        else:
            self._by.move_to_end(other)

    def _shedder(self) -> _SenderWindow:
        """Whose entry goes when the cache is full and the sender at hand holds
        none: the sender known to hold many (a scan of all only when that one
        holds none any more)."""
        big = self._by.get(self._big) if self._big is not None else None
        if big is None or not big.seen:
            self._big = max(self._by, key=lambda k: len(self._by[k].seen))
            big = self._by[self._big]
        return big

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
