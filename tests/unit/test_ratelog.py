"""daemon/ratelog.py: one log line per source per interval, bounded whatever the sources send.

(Its per-source summaries and the bound on sources: tests/proc/test_transport_limits.py.)
"""

from __future__ import annotations

import logging

from smegmesh.daemon.ratelog import RateLog

#: what one reason may take in a line (ratelog.MAX_REASON_CHARS is 240)
LONGEST = 300


def test_reasons_a_source_makes_up_are_bounded_per_source() -> None:
    """A reason can carry the source's own text (a delta's field index, a value
    its record had wrong, an error its server sent): one source sending ever new
    ones kept each in memory until the summary, and the summary line grew with
    them. Now at most ``max_reasons`` per source, each cut short."""
    now = [0.0]
    records: list[str] = []

    class H(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test.ratelog.reasons")
    logger.addHandler(H())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    rl = RateLog(logger, "dropped", unit="items", interval_s=60, clock=lambda: now[0])
    rl.note("member-a", "x" * 10_000)  # the first: logged at once, cut
    assert len(records) == 1 and len(records[0]) < LONGEST + 100, records[0]
    for i in range(10_000):
        rl.note("member-a", f"a delta cannot change field {i}")
    for _ in range(5):
        rl.note("member-a", "bad signature")
    assert sum(len(r) for r in rl._counts["member-a"]) < 20 * LONGEST
    now[0] = 61
    rl.flush()
    summary = records[-1]
    assert summary.startswith("dropped 10005 items from member-a in the last 61 s: ")
    assert "other reasons x" in summary and len(summary) < 20 * LONGEST, summary
