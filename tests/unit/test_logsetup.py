"""smegd's log formats (issue 15): JSON lines with extra fields, journald priorities."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

from smegmesh.daemon.logsetup import JsonFormatter, TextFormatter, quiet_grpc, under_journald


def _record(level: int, msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("smegd", level, __file__, 1, msg, (), None)
    rec.__dict__.update(extra)
    return rec


def test_json_line_has_the_fields_and_the_extras() -> None:
    line = JsonFormatter().format(_record(logging.WARNING, "member joined", mesh="m1", peer="k"))
    obj = json.loads(line)
    assert obj["level"] == "warning" and obj["logger"] == "smegd"
    assert obj["message"] == "member joined"
    assert (obj["mesh"], obj["peer"]) == ("m1", "k")
    assert obj["time"].endswith("+00:00")


def test_json_carries_the_traceback_in_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("smegd", logging.ERROR, __file__, 1, "x", (), sys.exc_info())
    line = JsonFormatter().format(rec)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.DEBUG, "<7>"),
        (logging.INFO, "<6>"),
        (logging.WARNING, "<4>"),
        (logging.ERROR, "<3>"),
    ],
)
def test_journald_prefix_and_no_timestamp(level: int, prefix: str) -> None:
    text = TextFormatter(journald=True).format(_record(level, "hello"))
    assert text == f"{prefix}{logging.getLevelName(level)} smegd: hello"
    assert JsonFormatter(journald=True).format(_record(level, "hello")).startswith(prefix + "{")


def test_text_without_journald_has_a_timestamp() -> None:
    text = TextFormatter().format(_record(logging.INFO, "hello"))
    assert text.endswith(" INFO smegd: hello") and text[:4].isdigit()


def test_under_journald_only_when_the_stream_is_the_journals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st = os.fstat(a.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert under_journald(a)
        assert not under_journald(b)  # stderr redirected elsewhere: not the journal
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not under_journald(a)


def test_quiet_grpc_respects_an_explicit_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    quiet_grpc()
    assert os.environ["GRPC_VERBOSITY"] == "NONE"
    monkeypatch.setenv("GRPC_VERBOSITY", "debug")
    quiet_grpc()
    assert os.environ["GRPC_VERBOSITY"] == "debug"


def test_debug_level_leaves_grpcs_per_call_lines_out() -> None:
    """``logLevel: debug`` is for smegd's lines: gRPC's Python layer logs a line
    per call at debug ("Loaded running loop"), measured at 2,000 lines and 5 % of
    a daemon's CPU in a 50-member formation."""
    import io

    from smegmesh.daemon.logsetup import configure_logging

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        configure_logging("debug", stream=io.StringIO())
        assert logging.getLogger("smegd").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("grpc._cython.cygrpc").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("grpc._cython.cygrpc").isEnabledFor(logging.WARNING)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[1]:
            root.addHandler(h)
        root.setLevel(saved[0])
        logging.getLogger("grpc").setLevel(logging.NOTSET)


#: what a member may put in text we log (an endpoint name, an error its server sent):
#: a new line, a terminal escape, NUL, NEL and CSI (C1), Unicode's line separator
HOSTILE = "gone.example\nINFO smegd: all good\x1b[2J\x00\x85\x9b6n\u2028end"


@pytest.mark.parametrize("journald", [False, True])
def test_text_escapes_control_characters_in_the_message(journald: bool) -> None:
    """Found by a review of logs under a hostile member (docs/SECURITY.md): the text
    format wrote a message as it was, so a member's text could start a line of its
    own (a forged one) or send escape sequences to the terminal reading the log."""
    rec = logging.LogRecord("smegd", logging.WARNING, __file__, 1, "endpoint %s", (HOSTILE,), None)
    text = TextFormatter(journald=journald).format(rec)
    assert len(text.splitlines()) == 1, text
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in text)
    assert text.endswith(
        r"endpoint gone.example\nINFO smegd: all good\x1b[2J\x00\x85\x9b6n\u2028end"
    )


def test_text_keeps_normal_messages_and_tracebacks_as_they_were() -> None:
    msg = "mesh m: alias 'web' is also claimed by node GxtY3VDq… (fd00::1), [x] 100 %"
    text = TextFormatter(journald=True).format(_record(logging.WARNING, msg))
    assert text == f"<4>WARNING smegd: {msg}"
    try:
        raise ValueError("boom\x1b[31m")
    except ValueError:
        rec = logging.LogRecord("smegd", logging.ERROR, __file__, 1, "x\ny", (), sys.exc_info())
    lines = TextFormatter().format(rec).splitlines()
    assert (
        lines[0].endswith(r"ERROR smegd: x\ny") and lines[1] == "Traceback (most recent call last):"
    )
    assert lines[-1] == r"ValueError: boom\x1b[31m"  # a traceback keeps its lines, not escapes


def test_json_lines_carry_no_control_character_raw() -> None:
    """json.dumps escapes C0 (newline, ESC, NUL) but, with ensure_ascii off, wrote
    DEL, C1 (NEL, CSI) and Unicode's line separators raw."""
    line = JsonFormatter(journald=True).format(_record(logging.WARNING, HOSTILE, peer=HOSTILE))
    assert len(line.splitlines()) == 1
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in line)
    obj = json.loads(line[3:])
    assert obj["message"] == obj["peer"] == HOSTILE
    assert "…" in JsonFormatter().format(_record(logging.INFO, "GxtY3VDq…"))  # not \u2026
