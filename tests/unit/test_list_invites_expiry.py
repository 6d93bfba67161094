"""list-invites' EXPIRES column: a duration a user can read, both ways."""

from __future__ import annotations

from smegmesh.cli import authority


def test_expiry_is_a_readable_duration() -> None:
    """It was whole minutes, rounded down: a token with 30 s left said 'in 0 min', one of
    100 days 'in 143999 min', and an expired one '-' (not how long ago)."""
    now = 1_000_000.0
    text = authority.expires_text
    assert text(now + 30, now) == "in 30s"
    assert text(now + 90, now) == "in 1m30s"
    assert text(now + 100 * 86400, now) == "in 100d00h"
    assert text(now - 300, now) == "5m00s ago"
