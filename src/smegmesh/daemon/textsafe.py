"""Which characters of text from elsewhere are unsafe to write as they are.

A member's record, an error a remote server sent, a hook's output: such text
goes into log lines, terminals and files of other formats (DOT), where a
newline forges a line, an escape sequence steers a terminal and a NUL ends a
parser's input. Two tests of "unsafe" are used, on purpose:

* :data:`CONTROL` (:func:`control_chars`, :func:`first_control`): Unicode's
  control characters, category ``Cc`` (C0, DEL, C1). What a user may set
  (``api_models``) and what the log formatter and the DOT writer pass on is
  refused or escaped by this one: any other text, a description in Arabic or
  with a no-break space, stays as written.
* ``str.isprintable`` (:func:`printable`): the controls and also format
  characters (bidi overrides), line separators, unassigned code points and
  every space but U+0020. One-line texts this node writes for a human (an
  event's line, a hook's error output, a device error, which the device
  protocol checks with ``isprintable`` too) take this stricter one.

This module imports nothing: ``smegctl`` imports it through ``api_models``.
"""

from __future__ import annotations

__all__ = ["CONTROL", "LINE_SEPARATORS", "control_chars", "first_control", "printable"]

#: Unicode's control characters (category ``Cc``, fixed by Unicode's stability
#: policy): C0 (NUL, tab, newline, ESC...), DEL and C1 (NEL, CSI...).
CONTROL = frozenset((*range(0x20), *range(0x7F, 0xA0)))
#: U+2028 and U+2029: not controls, but ``str.splitlines`` ends a line at them.
LINE_SEPARATORS = frozenset((0x2028, 0x2029))


def control_chars(*, but: str = "", line_separators: bool = False) -> frozenset[int]:
    """The code points of :data:`CONTROL`, without those of ``but``, with
    :data:`LINE_SEPARATORS` if ``line_separators``.

    ``but`` names what a caller deals with itself, so that the difference from
    the plain set is written where it is made: the DOT writer keeps a newline
    (it writes it as DOT's ``\\n``, a label's line break); the log formatter
    keeps a traceback's newlines (its lines are its own). ``line_separators``:
    for a log line, which a reader splitting lines would end there.
    """
    chars = CONTROL | LINE_SEPARATORS if line_separators else CONTROL
    return chars - {ord(c) for c in but}


def first_control(text: str) -> str | None:
    """The first control character (:data:`CONTROL`) of ``text``; None if it has none."""
    return next((c for c in text if ord(c) in CONTROL), None)


def printable(text: str, replacement: str | None = None) -> str:
    """``text`` with each character ``str.isprintable`` refuses escaped as Python
    writes it (``\\n``, ``\\x1b``, ``\\u202e``), or replaced by ``replacement``."""
    if text.isprintable():
        return text
    if replacement is not None:
        return "".join(c if c.isprintable() else replacement for c in text)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
