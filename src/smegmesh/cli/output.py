"""smegctl's output: JSON on stdout, one-line errors on stderr, tables, durations and sizes."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

__all__ = [
    "EXIT_ERROR",
    "EXIT_USAGE",
    "_ago",
    "_bytes",
    "_console",
    "_dur",
    "_fail",
    "_print_json",
    "die_of_sigpipe",
    "parse_duration",
]

#: Exit statuses: 1 = the daemon refused or failed, or is unreachable; 2 = usage error.
EXIT_ERROR = 1
EXIT_USAGE = 2


def _console() -> Console:
    """Console for tables: on a pipe never truncate (lines may be long, tools grep them)."""
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, width=1000, color_system=None)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def die_of_sigpipe() -> NoReturn:
    """End as ``git``, ``ip`` and ``wg`` do when the reader of their output went
    away (``smegctl status | head -1``): killed by SIGPIPE, nothing said (status
    141 in a shell with ``pipefail``).

    Python ignores SIGPIPE so that a write to a closed socket raises instead
    (smegctl's requests to smegd must not kill it): the signal's default
    action is put back only here, once stdout's reader is known gone. Stdout
    goes to /dev/null first (Python's recipe), so that were the signal not to
    end the process, what is still buffered fails no more at exit.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no stdout to redirect
        pass
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    raise SystemExit(128 + signal.SIGPIPE)  # pragma: no cover (the signal ended us)


def error_json(message: str, exit_code: int) -> dict[str, Any]:
    """``--json``'s error object for an error of smegctl's own (not the daemon's answer)."""
    kind = "usage" if exit_code == EXIT_USAGE else "client"
    return {"error": {"code": kind, "message": message}}


def _fail(
    message: str,
    as_json: bool = False,
    payload: dict[str, Any] | None = None,
    *,
    code: int = EXIT_ERROR,
) -> NoReturn:
    if as_json:
        _print_json(payload or error_json(message, code))
    sys.stderr.write(f"smegctl: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def _ago(ts: float | None, now: float, via: str | None = None) -> str:
    """LAST SEEN: an age, or the peer a node's liveness is known through (``seen_via``)."""
    if via is not None:
        return f"via {via[:8]}…"
    if ts is None:
        return "never"
    return _dur(max(0.0, now - ts)) + " ago"


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _bytes(n: int) -> str:
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{n} B"  # pragma: no cover


_DURATION_RE = re.compile(r"(\d+)\s*([smhdw])")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, most_s: int | None = None, flag: str | None = None) -> int:
    """``"90"`` / ``"90s"`` / ``"30m"`` / ``"2h"`` / ``"1d"`` / ``"1h30m"`` -> seconds (> 0,
    and at most ``most_s`` when given); errors name ``flag`` (e.g. ``--ttl``) when given."""
    hint = f"'{flag}'" if flag else None
    t = text.strip().lower()
    if t.isdigit():
        secs = int(t)
    else:
        pos, secs = 0, 0
        for m in _DURATION_RE.finditer(t):
            if m.start() != pos:
                break
            secs += int(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(t) or not t:
            raise typer.BadParameter(
                f"{text!r} is not a duration; use e.g. 90s, 30m, 2h, 1d or 1h30m", param_hint=hint
            )
    if secs <= 0:
        raise typer.BadParameter("must be longer than 0 seconds", param_hint=hint)
    if most_s is not None and secs > most_s:
        raise typer.BadParameter(
            f"{text!r} is longer than the most allowed, {_span(most_s)}", param_hint=hint
        )
    return secs


def _span(secs: int) -> str:
    """``31536000`` -> ``"365d"``; ``5400`` -> ``"1h30m"``."""
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            out += f"{secs // size}{unit}"
            secs %= size
    return out or "0s"
