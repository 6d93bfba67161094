"""Direct attempts back off from a partner that flaps or changes its endpoint (core/direct.py)."""

from __future__ import annotations

from nat_nodes import IDS, NOW
from smegmesh.core.direct import (
    ATTEMPT_MS,
    BACKOFF_BASE_MS,
    BACKOFF_MAX_MS,
    UP_RESET_MS,
    DirectTable,
)

ME, K = IDS[0].wg_public_key, IDS[1].wg_public_key
EP = "198.51.100.9:51820"
HOUR_HALF = 30 * 60_000


def _attempts(rotate: bool, minutes: int = 30) -> tuple[int, int]:
    """Attempts started in ``minutes`` at a victim address nothing answers from;
    ``rotate``: the member re-signs its record with the other address after
    each failure. Returns (attempts, endpoint changes)."""
    t = DirectTable(me=ME)
    eps = ("192.0.2.1:53", "192.0.2.2:53")
    started, n, last_failed = 0, 0, False
    for now in range(NOW, NOW + minutes * 60_000, 500):  # the daemon's 0.5 s tick
        state = t.state(K)
        if rotate and state == "backoff" and not last_failed:
            n += 1
        last_failed = state == "backoff"
        t.update(now, {K: eps[n % 2]}, {})
        if t.state(K) == "trying" and state != "trying":
            started += 1
    return started, n


def test_a_member_changing_its_endpoint_does_not_escape_the_backoff() -> None:
    """docs/NAT.md: a member that publishes someone else's address makes its
    partners send "a few per attempt, then backed off exponentially". A changed
    endpoint dropped the backoff: alternating between two addresses after
    each failure kept every partner attempting without pause (113 attempts in
    30 min against 10)."""
    steady, _ = _attempts(rotate=False)
    rotating, changes = _attempts(rotate=True)
    assert steady >= 1 and changes >= 2, (steady, changes)  # it did try, and rotate
    assert rotating <= 2 * steady, (rotating, steady)


def test_an_endpoint_changing_during_every_attempt_does_not_extend_it() -> None:
    """A change restarted the attempt at once: a member changing its endpoint
    every 10 s (under the 15 s attempt) kept its partners trying for good."""
    t = DirectTable(me=ME)
    trying_ms = 0
    for i, now in enumerate(range(NOW, NOW + HOUR_HALF, 500)):
        t.update(now, {K: f"192.0.2.{1 + (i // 20) % 2}:53"}, {})
        trying_ms += 500 * (t.state(K) == "trying")
    assert 0 < trying_ms <= HOUR_HALF // 10, f"trying {trying_ms / 60_000:.0f} of 30 min"


def test_a_session_that_keeps_breaking_after_coming_up_is_backed_off() -> None:
    """Coming up cleared the failure count: a session that came up and then
    lost its echo replies was retried after the first period every time (181
    flaps in 30 min, each a reconcile, two log lines and up to PROBE_STALE_MS
    of lost traffic). The count is reset only once a session stayed up
    UP_RESET_MS."""
    t = DirectTable(me=ME)
    rx, ups, prev = 0, 0, "none"
    for now in range(NOW, NOW + HOUR_HALF, 500):
        status = {}
        if K in t.sessions:
            rx += 100  # keepalives arrive, the handshake is fresh ...
            status = {K: (now / 1000 - 0.2, rx)}
        t.update(now, {K: EP}, status, replies={K: 0})  # ... but no echo is answered
        state = t.state(K)
        ups += state == "up" and prev != "up"
        prev = state
    assert ups <= 15, f"up and down {ups} times in 30 min"


def _fail_once(t: DirectTable, now: int, ep: str = EP) -> int:
    """One attempt at ``ep`` that does not come up; returns the time after it."""
    t.update(now, {K: ep}, {})
    now += ATTEMPT_MS + 500
    t.update(now, {K: ep}, {})
    assert t.state(K) == "backoff"
    return now


def test_a_session_up_long_enough_clears_the_failures() -> None:
    t = DirectTable(me=ME)
    now = _fail_once(t, NOW)
    now = t.backoff[K].retry_ms
    t.update(now, {K: EP}, {})
    now += 500
    t.update(now, {K: EP}, {K: (now / 1000, 148)}, {K: 0})
    assert t.state(K) == "up" and t.backoff[K].failures == 1  # not yet: it may still break
    rx, hs = 148, now / 1000
    end = now + UP_RESET_MS
    while now < end:
        now += 500
        rx += 32
        t.update(now, {K: EP}, {K: (hs, rx)}, {K: now - 50})
    assert t.state(K) == "up" and K not in t.backoff


def test_an_endpoint_change_retries_at_once_and_the_next_failure_waits_longer() -> None:
    """A partner that moved (a new NAT mapping) is tried at its new address at
    once, but its failures are kept: the next failure waits a longer period,
    and a second change within the period waits for the slot."""
    t = DirectTable(me=ME)
    now = _fail_once(t, NOW)
    now = _fail_once(t, t.backoff[K].retry_ms)
    assert t.backoff[K].failures == 2
    new = "198.51.100.9:40000"
    assert K in t.update(now + 1000, {K: new}, {})  # at once
    now = _fail_once(t, now + 1000, new)
    assert t.backoff[K].failures == 3
    slot = t.backoff[K].retry_ms
    assert slot - now >= 2 * BACKOFF_BASE_MS  # period 20 s: at least half of it
    assert K not in t.update(now + 1000, {K: EP}, {})  # changed back: waits for the slot
    assert K in t.update(slot, {K: EP}, {})


def test_a_partner_dropped_and_chosen_again_keeps_its_backoff() -> None:
    """A member that toggles its endpoint fields drops out of the candidates
    and comes back: its backoff went with it (an attempt at once every time).
    It is kept a while (BACKOFF_MAX_MS after its slot) for keys no longer chosen."""
    t = DirectTable(me=ME)
    now = _fail_once(t, NOW)
    now = _fail_once(t, t.backoff[K].retry_ms)
    slot = t.backoff[K].retry_ms
    assert t.update(now + 500, {}, {}) == {} and t.state(K) == "backoff"
    assert K not in t.update(now + 1000, {K: EP}, {})  # chosen again: still waits
    assert K in t.update(slot, {K: EP}, {})
    t.update(slot + 500, {}, {})
    t.update(slot + 500 + ATTEMPT_MS + 2 * BACKOFF_MAX_MS, {}, {})
    assert t.state(K) == "none" and not t.backoff  # forgotten after a while
