"""The line a join gives when no bootstrap member answered (``daemon/joinretry.py``)."""

from __future__ import annotations

from smegmesh.daemon.joinretry import unreachable_message

REFUSED = "cannot reach 127.0.0.1:47001: [Errno 111] Connect call failed ('127.0.0.1', 47001)"


def test_each_member_is_named_once_with_its_last_error() -> None:
    """Four attempts at one stopped member made a 500-character line naming the
    address twelve times (walkthrough, eighteenth session)."""
    msg = unreachable_message([("127.0.0.1:47001", REFUSED)] * 4, 13.8)
    assert msg == ("no member named in the token could be reached (4 attempts in 14 s): " + REFUSED)
    assert msg.count("127.0.0.1:47001") == 1  # in the error's own words, once
    two = unreachable_message([("a:1", "timed out"), ("b:2", "timed out"), ("a:1", "refused")], 3.0)
    assert two.endswith("(3 attempts in 3 s): b:2: timed out; a:1: refused")
    assert "(1 attempt in 0 s)" in unreachable_message([("a:1", "x")], 0.2)
