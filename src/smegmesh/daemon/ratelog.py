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
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

__all__ = ["RateLog"]

OTHER = "other sources"
OTHER_REASONS = "other reasons"
#: A reason longer than this is cut (with "…").
MAX_REASON_CHARS = 240


class RateLog:
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
        self._log = logger
        self._what = what
        self._unit = unit
        self._prep = prep
        self._interval = interval_s
        self.interval_s = interval_s
        self._max_sources = max_sources
        self._max_reasons = max_reasons
        self._level = level
        self._clock = clock
        self._start = clock()
        self._counts: dict[str, Counter[str]] = {}
        #: Sources already announced (by their first event) in this interval.
        self._announced: set[str] = set()
        self.total = 0

    def note(self, source: str, reason: str) -> None:
        """One event from ``source`` (an address, an endpoint) for ``reason``."""
        self.total += 1
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        now = self._clock()
        if now - self._start >= self._interval:
            self.flush(now)
        if source not in self._counts and len(self._counts) >= self._max_sources:
            source = OTHER
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
                self._interval,
            )
            self._counts.setdefault(source, Counter())
            return
        reasons = self._counts.setdefault(source, Counter())
        if reason not in reasons and len(reasons) >= self._max_reasons:
            reason = OTHER_REASONS
        reasons[reason] += 1

    def note_tick(self) -> None:
        """Flush when the interval is over (call it now and then: summaries are
        otherwise written only when the next event arrives)."""
        now = self._clock()
        if now - self._start >= self._interval:
            self.flush(now)

    def __len__(self) -> int:
        return len(self._counts)

    def flush(self, now: float | None = None) -> None:
        """Write the summaries of the interval so far and start a new one."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._start, 0.0)
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
        self._counts = {}
        self._start = now
