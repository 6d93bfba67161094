"""``smegd``'s logging: text or JSON lines on stderr, journald-aware, gRPC kept quiet.

* ``text`` (default): ``TIME LEVEL LOGGER: message``.
* ``json``: one object per line with ``time``, ``level``, ``logger``,
  ``message`` and any extra fields passed with ``log.info(..., extra={...})``.
* Neither writes a control character raw (a newline, ESC, NUL...): a message
  may hold a member's text, which must not forge a line nor steer a terminal.
* Under systemd's journal (``JOURNAL_STREAM`` names our stderr) the journal
  stamps every line itself: no timestamp of our own in text lines, and each
  line starts with the sd-daemon priority prefix ``<N>`` (``<3>`` error,
  ``<4>`` warning, ``<6>`` info, ``<7>`` debug) so ``journalctl -p`` works.
* gRPC's C core prints its own lines (``E1202 12:00:00.000 add_port.cc:83] ...``)
  straight to file descriptor 2. :func:`quiet_grpc` silences them before grpc is
  imported: everything they say reaches our log as the exceptions we handle.
  ``GRPC_VERBOSITY`` set in the environment wins (e.g. ``debug`` to see them).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import Any, Literal, TextIO

from smegmesh.daemon.textsafe import control_chars

__all__ = [
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure_logging",
    "level_of",
    "quiet_grpc",
    "under_journald",
]

LogFormat = Literal["text", "json"]

#: syslog priorities (sd-daemon(3)) of Python's levels
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

#: attributes every LogRecord has: anything else was passed with ``extra=``
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)

_HANDLER_NAME = "smegd"

#: Characters no log line carries raw, each escaped as Python writes it (``\n``,
#: ``\x1b``, ``\u2028``): C0 controls (newline, ESC, NUL...), DEL, C1 controls
#: (NEL, CSI) and Unicode's line separators. A message may hold a member's text
#: (an endpoint name, an error its server sent): raw, that could start a forged
#: line (``str.splitlines``, which the journald prefix below uses, splits on NEL
#: and U+2028 too) or steer the terminal reading the log. Printable text is kept.
_UNSAFE = control_chars(line_separators=True)
_ESCAPES = {c: ascii(chr(c))[1:-1] for c in _UNSAFE}
#: The same but newline, for a traceback (its lines are its own).
_ESCAPES_BUT_NEWLINE = {c: _ESCAPES[c] for c in control_chars(but="\n", line_separators=True)}
#: JSON already escapes C0; with ``ensure_ascii`` off the others go out raw.
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in _UNSAFE if c >= 0x7F}


def quiet_grpc() -> None:
    """Silence gRPC's native logging; call before ``import grpc`` (later calls do nothing)."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    os.environ.setdefault("GRPC_TRACE", "")


def level_of(name: str) -> int:
    """``"debug"`` -> ``logging.DEBUG``; unknown names give INFO."""
    level = logging.getLevelName(name.upper())
    return level if isinstance(level, int) else logging.INFO


def under_journald(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (stderr) is the journal's stream (``JOURNAL_STREAM`` = dev:inode)."""
    want = os.environ.get("JOURNAL_STREAM")
    if not want:
        return False
    stream = stream or sys.stderr
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def _priority(levelno: int) -> int:
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: message``; under journald ``<N>LEVEL LOGGER: message``."""

    def __init__(self, journald: bool = False) -> None:
        fmt = "%(levelname)s %(name)s: %(message)s"
        super().__init__(fmt if journald else "%(asctime)s " + fmt)
        self.journald = journald

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line without its traceback, control characters escaped (``_UNSAFE``)."""
        return super().formatMessage(record).translate(_ESCAPES)

    def format(self, record: logging.LogRecord) -> str:
        # a traceback (cached on the record by whichever formatter came first)
        # keeps its lines, not an escape sequence an exception's text carried
        text = super().format(record).translate(_ESCAPES_BUT_NEWLINE)
        if self.journald:
            # A traceback spans lines: the journal takes a prefix on each line.
            prefix = f"<{_priority(record.levelno)}>"
            return "\n".join(prefix + line for line in text.splitlines())
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields (, exception)."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD_ATTRS and not k.startswith("_") and k not in obj:
                obj[k] = v
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        line = json.dumps(obj, default=str, ensure_ascii=False).translate(_JSON_ESCAPES)
        return f"<{_priority(record.levelno)}>{line}" if self.journald else line


def configure_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Install (or replace, on reload) smegd's handler on the root logger."""
    stream = stream or sys.stderr
    journald = under_journald(stream)
    formatter: logging.Formatter = (
        JsonFormatter(journald) if fmt == "json" else TextFormatter(journald)
    )
    root = logging.getLogger()
    handler = next((h for h in root.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        for h in list(root.handlers):  # e.g. an earlier basicConfig
            root.removeHandler(h)
        handler = logging.StreamHandler(stream)
        handler.set_name(_HANDLER_NAME)
        root.addHandler(handler)
    handler.setFormatter(formatter)
    root.setLevel(level_of(level))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # grpc's Python layer logs a debug line per call ("Loaded running loop"):
    # at logLevel debug, thousands a minute in a busy mesh, and none of it ours
    logging.getLogger("grpc").setLevel(max(logging.INFO, root.level))
    # uvicorn's "Started server process [pid]", once per listener: we log our own line
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, root.level))
