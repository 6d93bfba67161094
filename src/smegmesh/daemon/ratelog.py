"""Rate-limited security logging: one line per source per interval, not one per event.

Anything a stranger can trigger without credentials (a refused call, a bad
signature, a failed connection to an endpoint a member wrote into its record)
must not turn into one log line per event: that is a log flood on demand.
:class:`RateLog` logs the first event from a source at once, counts the
following ones by reason, and writes one summary line per source per
interval::

    refused 1234 calls from 192.0.2.7 in the last 60 s: bad signature x1200, not a member x34

Memory is bounded: at most ``max_sources`` sources are tracked per interval;
events from further sources are counted together under "other sources". A
reason may carry text the source chose (a value its record had wrong, an
error a remote server sent): each is cut to :data:`MAX_REASON_CHARS`, and at
most ``max_reasons`` distinct ones are counted per source and interval, the
rest under "other reasons", so neither memory nor a summary line grows with
what a source makes up.
Summaries are written by the next :meth:`RateLog.note` after the interval,
or by :meth:`RateLog.flush` (which a daemon calls periodically).

The window, its end and the bound on sources are :class:`SourceWindow`'s,
which the event bus's budget of log lines per node shares
(``daemon/event_bus.py``); each writes summary lines of its own.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["RateLog", "SourceWindow"]

OTHER = "other sources"
OTHER_REASONS = "other reasons"
#: A reason longer than this is cut (with "…").
MAX_REASON_CHARS = 240

#: What a window counts per source.
C = TypeVar("C")


class SourceWindow(Generic[C]):
    """Counts per source over a window of ``interval_s``, summarised when it ends.

    A window ends at the first :meth:`_source` or :meth:`note_tick` after
    ``interval_s``, or at :meth:`flush`: :meth:`_summarise` writes what it
    counted and a new window starts with no counts. At most ``max_sources``
    sources are counted in a window; further ones share the key :attr:`other`,
    so memory stays bounded whatever sources a stranger makes up. A subclass
    decides what it counts per source (``_counts``) and what its lines say.
    """

    #: The key events from sources beyond ``max_sources`` are counted under.
    other = OTHER

    def __init__(self, *, interval_s: float, max_sources: int, clock: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self._max_sources = max_sources
        self._clock = clock
        self._start = clock()
        self._counts: dict[str, C] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def _source(self, source: str) -> str:
        """The key to count an event of ``source`` under, in a window not yet over
        (an ended one is summarised first): ``source``, or :attr:`other` once
        ``max_sources`` others are counted."""
        self.note_tick()
        if source not in self._counts and len(self._counts) >= self._max_sources:
            return self.other
        return source

    def note_tick(self) -> None:
        """Flush when the interval is over (call it now and then: summaries are
        otherwise written only when the next event arrives)."""
        now = self._clock()
        if now - self._start >= self.interval_s:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Write the summaries of the interval so far and start a new one."""
        now = self._clock() if now is None else now
        self._summarise(max(now - self._start, 0.0))
        self._counts = {}
        self._start = now

    def _summarise(self, elapsed: float) -> None:
        """Log what ``_counts`` holds: the window ends, ``elapsed`` s after it began."""
        raise NotImplementedError


class RateLog(SourceWindow[Counter[str]]):
    """Counts events per ``(source, reason)``; logs O(sources) lines per interval."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        unit: str = "calls",
        prep: str = "from",
        interval_s: float = 60.0,
        max_sources: int = 256,
        max_reasons: int = 8,
        level: int = logging.INFO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(interval_s=interval_s, max_sources=max_sources, clock=clock)
        self._log = logger
        self._what = what
        self._unit = unit
        self._prep = prep
        self._max_reasons = max_reasons
        self._level = level
        #: Sources already announced (by their first event) in this interval.
        self._announced: set[str] = set()
        self.total = 0

    def note(self, source: str, reason: str) -> None:
        """One event from ``source`` (an address, an endpoint) for ``reason``."""
        self.total += 1
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        source = self._source(source)
        if source not in self._announced and source != OTHER:
            # The first event from a source is logged at once (an operator sees
            # an attack or a broken peer start); the rest go into the summary.
            self._announced.add(source)
            self._log.log(
                self._level,
                "%s %s %s %s: %s (further ones summarised every %g s)",
                self._what,
                self._unit[:-1] if self._unit.endswith("s") else self._unit,
                self._prep,
                source,
                reason,
                self.interval_s,
            )
            self._counts.setdefault(source, Counter())
            return
        reasons = self._counts.setdefault(source, Counter())
        if reason not in reasons and len(reasons) >= self._max_reasons:
            reason = OTHER_REASONS
        reasons[reason] += 1

    def _summarise(self, elapsed: float) -> None:
        for source, reasons in self._counts.items():
            n = sum(reasons.values())
            if n == 0:
                continue
            detail = ", ".join(f"{r} x{c}" for r, c in reasons.most_common())
            self._log.log(
                self._level,
                "%s %d %s %s %s in the last %.0f s: %s",
                self._what,
                n,
                self._unit,
                self._prep,
                source,
                elapsed,
                detail,
            )
        # A source stays announced while it keeps going (one summary per interval,
        # no new "first" line); one quiet for a whole interval is forgotten.
        self._announced = {s for s in self._counts if s != OTHER}
