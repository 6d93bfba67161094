"""Direct client-to-client WireGuard sessions through NATs (issue 17). Pure.

See docs/NAT.md. A client publishes ``nat_endpoint`` (its WireGuard
``host:port`` as its assigned peer sees it) and ``local_endpoints``. Two
clients that both publish endpoints may hold a *direct* session:

* **Choice** (:func:`choose_direct`): every pair of such clients has a score,
  a hash of the two keys in sorted order, so both ends compute the same score.
  A client ranks the other candidates by that score and keeps its best
  ``limit`` (``directPeers``); a pair is direct when each is in the other's
  best ``limit`` (mutual), so both ends decide the same without talking and
  nobody holds more than ``limit`` sessions. ``limit`` should be the same on
  every client of a mesh; where it differs a pair chosen by one side only
  fails to come up and backs off.
* **Endpoint** (:func:`endpoint_for`): the other's local endpoint when both
  publish the same public address (same NAT), else its ``nat_endpoint``.
* **Sessions** (:class:`DirectTable`): a chosen pair is added as a WireGuard
  peer with the other's endpoint and a short persistent keepalive (both ends
  do it at once: both NATs open a mapping). The other's /128 is routed to it
  only while it is *up*: a handshake happened and bytes arrived within
  ``stale_ms``. Until then, and after it goes stale, the /128 stays on the
  assigned peer's whole-prefix entry (no gap). An attempt that does not come
  up within ``attempt_ms``, or a session that goes stale, is dropped and retried
  after an exponential backoff (:func:`retry_slot_ms`), so a symmetric NAT does
  not cause a flood of handshakes. The retries start in slots both ends of the
  pair share (the wall clock, the pair's score), so they send at the same
  moments: a hole through two NATs needs both. A changed endpoint restarts the
  attempt at once, once per backoff period (a member changing its endpoint at
  will gets no more attempts than that); the failures are kept across the
  change, across the partner leaving the choice for a while, and until a
  session has stayed up ``UP_RESET_MS``.
* **Both directions** (``replies``): while a session is up, the daemon sends an
  ICMPv6 echo over it every ``PROBE_MS``; a session whose echoes go unanswered
  for ``PROBE_STALE_MS`` is stale too. Received bytes alone only show that the
  other's packets reach us: when only our direction breaks, the other end keeps
  sending keepalives and we would keep routing into the void. The echo needs
  both directions, so both ends see any break within ``PROBE_STALE_MS``.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from smegmesh.core.direct_choice import DirectChoice
from smegmesh.core.endpoint import split_host_port
from smegmesh.core.record import NodeRecord, Role

__all__ = [
    "ATTEMPT_MS",
    "BACKOFF_BASE_MS",
    "BACKOFF_MAX_MS",
    "DIRECT_KEEPALIVE_S",
    "HANDSHAKE_MAX_AGE_MS",
    "PROBE_MS",
    "PROBE_STALE_MS",
    "STALE_MS",
    "UP_RESET_MS",
    "DirectPeer",
    "DirectTable",
    "backoff_period_ms",
    "candidates",
    "choose_direct",
    "endpoint_for",
    "pair_score",
    "retry_slot_ms",
]

#: Persistent keepalive of a direct session: the liveness signal (bytes arrive
#: at least this often) and what keeps both NAT mappings open.
DIRECT_KEEPALIVE_S = 1
#: A session with no bytes received for this long is stale (3 keepalives + slack).
STALE_MS = 3 * DIRECT_KEEPALIVE_S * 1000 + 500
#: WireGuard re-handshakes at least every 2 min on a session carrying keepalives
#: and drops a session after 3 min (REJECT_AFTER_TIME): an older handshake is
#: stale even if bytes (handshake initiations) still arrive.
HANDSHAKE_MAX_AGE_MS = 190_000
#: An attempt that has not come up after this long failed.
ATTEMPT_MS = 15_000
BACKOFF_BASE_MS = 5_000
BACKOFF_MAX_MS = 320_000  # 5 s x 2^6: the retry slots nest (retry_slot_ms)
#: Echo requests over an up session this often; unanswered for PROBE_STALE_MS = stale.
PROBE_MS = 500
PROBE_STALE_MS = 2_000
#: A session's failures are forgotten once it has stayed up this long: one
#: that comes up and breaks again (the partner answers handshakes, not
#: echoes) backs off like one that never comes up.
UP_RESET_MS = 60_000
#: Backoffs kept for keys no longer chosen (a partner that drops out of the
#: choice and comes back keeps its failures), at most this many.
MAX_KEPT_BACKOFFS = 1024


def pair_score(a: bytes, b: bytes) -> bytes:
    """The same value on both ends of a pair (higher ranks first)."""
    lo, hi = sorted((a, b))
    return hashlib.blake2b(lo + hi, digest_size=8, person=b"smeg-direct").digest()


def candidates(records: Iterable[NodeRecord]) -> dict[bytes, NodeRecord]:
    """The clients a direct session may be held with: live, publishing an endpoint."""
    return {
        r.wg_key: r
        for r in records
        if not r.left and r.role == Role.CLIENT and (r.nat_endpoint or r.local_endpoints)
    }


def choose_direct(self_key: bytes, records: Iterable[NodeRecord], limit: int) -> set[bytes]:
    """The clients this client holds a direct session with (mutual best ``limit``).

    From scratch; :class:`~smegmesh.core.direct_choice.DirectChoice` keeps it
    up to date as the candidates change.
    """
    return set(DirectChoice(self_key, limit).update(candidates(records).keys()))


def _host(endpoint: str | None) -> str | None:
    if not endpoint:
        return None
    try:
        return str(ipaddress.ip_address(split_host_port(endpoint)[0]))
    except ValueError:
        return None


def endpoint_for(me: NodeRecord, other: NodeRecord) -> str | None:
    """Where ``me`` sends to ``other``: its local endpoint behind one NAT, else its public one.

    None unless an IP literal: both are addresses a node saw, never names (a
    name would have every direct attempt wait on the other member's DNS).
    """
    mine, theirs = _host(me.nat_endpoint), _host(other.nat_endpoint)
    if other.local_endpoints and ((mine is not None and mine == theirs) or not other.nat_endpoint):
        chosen: str | None = other.local_endpoints[0]
    else:
        chosen = other.nat_endpoint
    return chosen if _host(chosen) is not None else None


def backoff_period_ms(failures: int, base_ms: int = BACKOFF_BASE_MS) -> int:
    """The retry period after ``failures`` failed attempts (0: none).

    ``base * 2^(failures-1)``, at most the largest ``base * 2^k`` not over
    :data:`BACKOFF_MAX_MS` (320 s with the default 5 s base).
    """
    if failures <= 0:
        return 0
    base_ms = max(1, base_ms)  # directBackoff may be under a millisecond
    return base_ms << min(failures - 1, _top_doublings(base_ms))


def _top_doublings(base_ms: int) -> int:
    """The largest k with ``base * 2^k <= BACKOFF_MAX_MS`` (0 for a base above it)."""
    return max(0, (BACKOFF_MAX_MS // base_ms).bit_length() - 1)


def retry_slot_ms(now_ms: int, failures: int, phase: int, base_ms: int = BACKOFF_BASE_MS) -> int:
    """When the next attempt starts: the first retry slot at least half a period from now.

    Slots of period ``P`` (:func:`backoff_period_ms`) start at ``phase + k * P``
    on the wall clock (ms). ``phase`` is the pair's score, the same on both
    ends, taken modulo the longest period, which every shorter one divides:
    the slots of a longer period are a subset of a shorter one's. So the two
    ends of a pair start their retries together even when their failure
    counts differ (one of them reset by an endpoint change), and a hole
    through two NATs, which needs both ends to send, gets its chance at every
    retry. Each end waited its own jittered delay from its own failure
    before: the ends drifted apart (simulated, after 20 min of failures 11 of
    17 attempts of one end met none of the other's). The wait is ``P/2 .. 3P/2``.
    """
    period = backoff_period_ms(failures, base_ms)
    if period == 0:
        return now_ms
    base_ms = max(1, base_ms)
    origin = phase % (base_ms << _top_doublings(base_ms))  # the longest period
    earliest = now_ms + period // 2
    return origin + -(-(earliest - origin) // period) * period


@dataclass(frozen=True, slots=True)
class DirectPeer:
    """What the WireGuard configuration holds for one direct session."""

    endpoint: str
    routed: bool  # the other's /128 goes to this session (it is up)


@dataclass(slots=True)
class _Session:
    endpoint: str
    started_ms: int
    rx_bytes: int = 0
    rx_at_ms: int | None = None  # last time received bytes grew (after a handshake)
    up: bool = False
    up_at_ms: int = 0


@dataclass(slots=True)
class _Backoff:
    failures: int
    retry_ms: int
    endpoint: str


@dataclass
class DirectTable:
    """Direct sessions of one client in one mesh: attempts, up/down, backoff.

    Call :meth:`update` with the chosen targets and the WireGuard status (each
    target's last handshake and received bytes) every second or so, ``now_ms``
    on the wall clock (both ends of a pair retry in the same slots of it); it
    returns the sessions to configure. ``me``: this client's key (with the
    other's, the pair's slots).
    """

    me: bytes
    stale_ms: int = STALE_MS
    attempt_ms: int = ATTEMPT_MS
    backoff_base_ms: int = BACKOFF_BASE_MS
    probe_stale_ms: int = PROBE_STALE_MS
    sessions: dict[bytes, _Session] = field(default_factory=dict)
    backoff: dict[bytes, _Backoff] = field(default_factory=dict)
    #: when an endpoint change last started an attempt before its slot
    early: dict[bytes, int] = field(default_factory=dict)

    def _fail(self, key: bytes, endpoint: str, now_ms: int) -> None:
        prev = self.backoff.get(key)
        failures = (prev.failures if prev is not None else 0) + 1
        phase = int.from_bytes(pair_score(self.me, key), "big")
        retry = retry_slot_ms(now_ms, failures, phase, self.backoff_base_ms)
        self.backoff[key] = _Backoff(failures, retry, endpoint)
        self.sessions.pop(key, None)

    def update(
        self,
        now_ms: int,
        targets: Mapping[bytes, str],
        status: Mapping[bytes, tuple[float | None, int]],
        replies: Mapping[bytes, int] | None = None,
    ) -> dict[bytes, DirectPeer]:
        """Advance the sessions; ``status[key] = (last_handshake_unix_s or None, rx_bytes)``.

        ``replies[key]``: when the last echo reply from ``key`` arrived (ms, same
        clock as ``now_ms``); ``None`` when this node cannot send echoes (then
        only received bytes tell a session is alive).
        """
        for key in [k for k in self.sessions if k not in targets]:
            del self.sessions[key]
        self._forget(now_ms, targets)
        for key, ep in targets.items():
            s = self.sessions.get(key)
            b = self.backoff.get(key)
            if (s.endpoint if s is not None else b.endpoint if b is not None else ep) != ep:
                self._moved(key, ep, now_ms)
                s, b = None, self.backoff.get(key)
            hs, rx = status.get(key, (None, 0))
            if s is None:
                if b is not None and now_ms < b.retry_ms:
                    continue
                s = self.sessions[key] = _Session(ep, now_ms, rx_bytes=rx)
                continue
            # a handshake completed during this attempt (both directions work: the
            # responder counts it only once the initiator's data arrives) ...
            hs_ms = None if hs is None else int(hs * 1000)
            if hs_ms is not None and hs_ms < s.started_ms - 1000:
                hs_ms = None  # from an earlier session: does not count
            if hs_ms is not None and rx > s.rx_bytes:
                s.rx_at_ms = now_ms
            s.rx_bytes = max(s.rx_bytes, rx)
            # ... and bytes keep arriving (keepalives), with a live session
            fresh = (
                hs_ms is not None
                and now_ms - hs_ms <= HANDSHAKE_MAX_AGE_MS
                and s.rx_at_ms is not None
                and now_ms - s.rx_at_ms <= self.stale_ms
            )
            if s.up and fresh and replies is not None:
                # ... and our echoes are answered (both directions work)
                last = max(s.up_at_ms, replies.get(key, 0))
                fresh = now_ms - last <= self.probe_stale_ms
            if s.up and not fresh:
                self._fail(key, ep, now_ms)  # went stale: back to the relay, retry later
            elif s.up and now_ms - s.up_at_ms >= UP_RESET_MS:
                self.backoff.pop(key, None)  # it works: its failures are forgotten
                self.early.pop(key, None)
            elif not s.up and fresh:
                s.up = True
                s.up_at_ms = now_ms
            elif not s.up and now_ms - s.started_ms > self.attempt_ms:
                self._fail(key, ep, now_ms)
        return {k: DirectPeer(s.endpoint, s.up) for k, s in self.sessions.items()}

    def _moved(self, key: bytes, endpoint: str, now_ms: int) -> None:
        """``key``'s endpoint changed: a new attempt at once, at most once per backoff period.

        The failures stay, and an attempt cut short counts as failed: the
        next failure waits longer. A change used to drop the backoff and
        restart the attempt every time: a member that changed its endpoint
        after each failure, or during each attempt, was tried without pause.
        """
        s = self.sessions.pop(key, None)
        if s is not None and not s.up:
            self._fail(key, endpoint, now_ms)
        b = self.backoff.get(key)
        period = backoff_period_ms(max(1, b.failures if b is not None else 0), self.backoff_base_ms)
        last = self.early.get(key)
        if last is None or now_ms - last >= period:
            self.early[key] = now_ms
            if b is not None:
                b.retry_ms, b.endpoint = now_ms, endpoint
        elif s is not None and s.up:
            self._fail(key, endpoint, now_ms)  # the next attempt in its slot
        elif b is not None:
            b.endpoint = endpoint  # waits for its slot

    def _forget(self, now_ms: int, targets: Mapping[bytes, str]) -> None:
        """Drop what is kept for keys no longer chosen once it no longer bounds anything."""
        for key in [k for k, t in self.early.items() if now_ms - t >= BACKOFF_MAX_MS]:
            del self.early[key]
        gone = [k for k in self.backoff if k not in targets]
        for key in gone:
            if now_ms - self.backoff[key].retry_ms >= BACKOFF_MAX_MS:
                del self.backoff[key]
        gone = [k for k in gone if k in self.backoff]
        if len(gone) > MAX_KEPT_BACKOFFS:  # the oldest go first
            gone.sort(key=lambda k: self.backoff[k].retry_ms)
            for key in gone[: len(gone) - MAX_KEPT_BACKOFFS]:
                del self.backoff[key]

    def state(self, key: bytes) -> str:
        """``up``, ``trying``, ``backoff`` or ``none`` (for status views)."""
        s = self.sessions.get(key)
        if s is not None:
            return "up" if s.up else "trying"
        return "backoff" if key in self.backoff else "none"
