"""Failure detection: SWIM-style probes with suspicion. Pure; time is an argument.

SPEC §3 describes the prototype's scheme (a leader refreshes every
``heartbeatInterval``; a node not heard from within 3 x heartbeat is pruned).
Every node re-publishing itself each heartbeat costs O(N) traffic per node;
instead each node probes one member per period (SWIM), so detection costs O(1)
per node whatever the mesh size, and only deaths are disseminated:

* every ``probe_interval`` a node pings the next member of a shuffled
  round-robin list (so every member is probed at least once per N periods by
  each node, and on average by one node each period);
* no ack within ``probe_timeout``: ask ``indirect`` other members to ping it
  (routes around one lossy link);
* still nothing by the end of the period: the member is *suspect*; it is
  probed again (direct and indirect) and anything heard from it clears the
  suspicion;
* suspect for ``suspicion`` ms: dead. The caller issues a signed prune that
  gossip carries everywhere. A live node that sees itself pruned refutes it by
  re-signing its record with a higher version, which the prune does not cover.

Clients cannot be reached through NAT: they are not probed; each client pings
its assigned peer every period, and that peer declares it dead when it has not
been heard from for ``client_timeout``.

**Local health** (after Lifeguard's local health multiplier, Dadgar et al.
2018): a node whose own probes go unanswered is as likely to be the slow one
(starved of CPU, a lossy uplink) as its targets are to be dead. Of its last
:data:`HEALTH_WINDOW` first probes (re-probes of a suspect do not count, so
one dead member counts once), those not acked directly in time, minus one,
plus one per prune of ourselves we had to refute (forgotten one per direct
ack), give a score between 0 and :data:`MAX_HEALTH_MULTIPLIER` - 1. With a
score above 0 the node waits (score + 1) times longer for a direct ack (at
most half the probe interval) and keeps a member suspect (score + 1) times
longer before declaring it dead, so it re-probes it more often first: a slow
or lossy node does not set off a storm of suspicion. The probe rate does not
change, and a healthy node (score 0) keeps the configured timings, so a crash
is detected as fast as before. (The probe period scaling came later: see
:meth:`FailureDetector.probe_interval_ms`.)

**A stalled node's clock does not count against others.** A node whose tick
runs late (its process was not scheduled: CPU starvation, a stop) had replies
waiting that it could not read. Timeouts measure the *other* side's silence,
so on a tick :data:`STALL_MS` or more late (:meth:`FailureDetector.stalled`,
from the adapter's timer; at most once a probe period) the probe in flight,
the suspicions and the watched clients' silence get the stall added, and none of them expires before
:data:`STALL_GRACE_MS` from then, so what arrived meanwhile is read first. The
stall also counts for local health as a missed probe of ours (at most once a
probe period). The simulator's timers are never late.

**Suspicion grows with log N** (as memberlist's suspicion timeout does):
every member probes one member per period, so a mesh of N members runs N
probes a period, and a false prune happens when a live member's probe and
its re-probes all fail (direct and indirect: under 10 % loss about 0.8 % per
round). For the same false-prune rate in the whole mesh the per-member
probability must fall as 1/N, i.e. the number of re-probes grow as log N.
Up to :data:`SUSPICION_BASE_MEMBERS` members the configured suspicion applies
as is; beyond, it is scaled by log10(N) / log10(:data:`SUSPICION_BASE_MEMBERS`)
(1.5x at 1,000 members, 1.74x at 3,000, 2x at 10,000).

``heartbeatInterval`` keeps its meaning as the failure-detection period:
probe_interval = heartbeat / 2, suspicion = heartbeat, client_timeout =
3 x heartbeat (the prototype's bound, as a backstop for clients).
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from smegmesh.core.buckets import shifted

#: Upper bound of the local health multiplier (Lifeguard's S = 8).
MAX_HEALTH_MULTIPLIER = 8
#: First probes whose outcome (direct ack in time or not) make up local health.
HEALTH_WINDOW = 8
#: A tick this late (ms) means this node was not running: see "A stalled node" above.
STALL_MS = 100
#: After a stall, nothing of ours times out before this (ms): replies are read first.
STALL_GRACE_MS = 100
#: Members up to which the configured suspicion applies unscaled (see the module docstring).
SUSPICION_BASE_MEMBERS = 100


def suspicion_scale(members: int) -> float:
    """Factor on the suspicion time in a mesh of ``members``: 1 up to the base, then log N."""
    if members <= SUSPICION_BASE_MEMBERS:
        return 1.0
    return math.log10(members) / math.log10(SUSPICION_BASE_MEMBERS)


@dataclass(frozen=True, slots=True)
class LivenessParams:
    probe_interval_ms: int = 1_000
    probe_timeout_ms: int = 400
    indirect: int = 3
    suspicion_ms: int = 2_000
    client_timeout_ms: int = 6_000

    @classmethod
    def from_heartbeat(cls, heartbeat_ms: int, *, timeout_ms: int | None = None) -> LivenessParams:
        probe = max(100, heartbeat_ms // 2)
        ptimeout = min(timeout_ms if timeout_ms is not None else 400, probe * 2 // 5)
        return cls(
            probe_interval_ms=probe,
            probe_timeout_ms=max(20, ptimeout),
            suspicion_ms=heartbeat_ms,
            client_timeout_ms=3 * heartbeat_ms,
        )


@dataclass(frozen=True, slots=True)
class Ping:
    """Send a direct probe to ``target``; report the ack with ``on_ack``."""

    target: bytes
    probe_id: int


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask ``via`` to probe ``target`` for us; an ack comes back as ``on_ack``."""

    via: bytes
    target: bytes
    probe_id: int


@dataclass(frozen=True, slots=True)
class Dead:
    """``target`` failed detection: prune it."""

    target: bytes


@dataclass(frozen=True, slots=True)
class Suspect:
    """``target`` did not answer a full probe (informational, for status/metrics)."""

    target: bytes


Action = Ping | PingReq | Dead | Suspect


@dataclass(slots=True)
class _Probe:
    target: bytes
    probe_id: int
    started_ms: int
    indirect_sent: bool = False
    counted: bool = True  # a first probe (not a re-probe of a suspect): counts for health


@dataclass(slots=True)
class FailureDetector:
    """Per-mesh failure detector for one node."""

    self_key: bytes
    params: LivenessParams
    rng: random.Random
    _order: list[bytes] = field(default_factory=list)
    _probe: _Probe | None = None
    _next_probe_ms: int | None = None
    _next_id: int = 1
    _suspect_since: dict[bytes, int] = field(default_factory=dict)
    _last_heard: dict[bytes, int] = field(default_factory=dict)
    #: client -> when we began watching it (its silence counts from then at the earliest)
    _watch_since: dict[bytes, int] = field(default_factory=dict)
    #: the caller's member list (sorted) and its version (see :meth:`tick`)
    _peers_seen: Sequence[bytes] = ()
    _peers_version: int | None = None
    _listed: int = 0  # members in _peers_seen (but self) when it last changed
    #: members of _peers_seen declared dead here since the list last changed
    _gone: set[bytes] = field(default_factory=set)
    #: outcomes of the last first probes: True = no direct ack in time
    _window: deque[bool] = field(default_factory=lambda: deque(maxlen=HEALTH_WINDOW))
    _window_misses: int = 0
    _refutes: int = 0
    _last_stall_ms: int | None = None

    # -- local health -----------------------------------------------------------
    @property
    def health_multiplier(self) -> int:
        """1 when healthy; up to :data:`MAX_HEALTH_MULTIPLIER` when our own probes fail."""
        score = max(0, self._window_misses - 1) + self._refutes
        return 1 + min(MAX_HEALTH_MULTIPLIER - 1, score)

    def _record(self, missed: bool) -> None:
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._window_misses -= 1
        self._window.append(missed)
        if missed:
            self._window_misses += 1
        elif self._refutes:
            self._refutes -= 1

    def refuted(self) -> None:
        """Others pruned us while we were alive: we may be the slow one."""
        self._refutes = min(MAX_HEALTH_MULTIPLIER - 1, self._refutes + 1)

    def stalled(self, late_ms: int, now_ms: int) -> None:
        """Our timer ran ``late_ms`` late: we were not running (see the module docstring).

        Called by the adapter before :meth:`tick`. At most once a probe period:
        the probe in flight, the suspicions and the watched clients' silence
        are moved on by the stall and end no earlier than
        :data:`STALL_GRACE_MS` from ``now_ms``, and the stall counts for local
        health as a missed probe.
        """
        if late_ms < STALL_MS:
            return
        last = self._last_stall_ms
        if last is not None and now_ms - last < self.params.probe_interval_ms:
            # Once a probe period at most: a daemon whose every tick runs late
            # would otherwise push every deadline past itself for ever, and a
            # dead member would never be found.
            return
        self._last_stall_ms = now_ms
        self._record(True)
        floor = now_ms + STALL_GRACE_MS
        pr = self._probe
        if pr is not None:
            wait = self.probe_interval_ms() if pr.indirect_sent else self._probe_timeout_ms()
            pr.started_ms = max(pr.started_ms + late_ms, floor - wait)
        suspicion = self._suspicion_ms()
        for k, since in self._suspect_since.items():
            self._suspect_since[k] = max(since + late_ms, floor - suspicion)
        client_timeout = self.params.client_timeout_ms
        for c, start in self._watch_since.items():
            heard = max(self._last_heard.get(c, start), start)
            self._watch_since[c] = max(heard + late_ms, floor - client_timeout)

    def clock_stepped(self, delta_ms: int) -> None:
        """The wall clock was stepped by ``delta_ms``: every time held moves with it.

        The probe schedule, the probe in flight, the suspicions and the silences
        go on measuring time as it passed (see ``engine.ClockStepped``): set
        back an hour, the next probe was an hour away; set forward 10 s, the
        member being probed was suspect from before the step, dead at the next
        tick, and every watched client silent too long.
        """
        d = delta_ms
        if self._next_probe_ms is not None:
            self._next_probe_ms += d
        if self._probe is not None:
            self._probe.started_ms += d
        if self._last_stall_ms is not None:
            self._last_stall_ms += d
        self._suspect_since = shifted(self._suspect_since, d)
        self._last_heard = shifted(self._last_heard, d)
        self._watch_since = shifted(self._watch_since, d)

    def probe_interval_ms(self) -> int:
        """The probe period, scaled by local health.

        Lifeguard (and memberlist's probe ticker) do the same: a node whose own
        probes fail -- most often because it is the one starved of CPU --
        probes less often and waits longer, instead of adding indirect probes
        and suspicions to the load that made it slow. From a multiplier of 4
        (four or more of its last 8 probes missed), (multiplier - 2)x, so 6x
        at the most. Not lower: a node on one side of a partition misses about
        half its probes, and a slower period there slowed the heal (300
        simulated nodes, 6 s cut, seed 1: healed 3.5 s after the cut with no
        scaling below 5, 4.0 s with this rule, 7.0 s with half the multiplier
        from 2 up). The suspicion window grows by the whole multiplier, so a
        suspect still gets at least as many re-probes as the configured
        timings give.
        """
        return self.params.probe_interval_ms * max(1, self.health_multiplier - 2)

    def _probe_timeout_ms(self) -> int:
        p = self.params
        m = self.health_multiplier
        return min(p.probe_timeout_ms * m, max(p.probe_timeout_ms, self.probe_interval_ms() // 2))

    def _suspicion_ms(self) -> int:
        scale = suspicion_scale(self._live_count() + 1)
        return int(self.params.suspicion_ms * self.health_multiplier * scale)

    # -- inputs ---------------------------------------------------------------
    def heard_from(self, key: bytes, now_ms: int) -> None:
        """Any authenticated message from ``key`` proves it alive."""
        self._last_heard[key] = now_ms
        self._suspect_since.pop(key, None)
        if self._probe is not None and self._probe.target == key:
            if not self._probe.indirect_sent and self._probe.counted:
                self._record(False)  # a direct answer in time
            self._probe = None

    def on_ack(self, target: bytes, probe_id: int, now_ms: int) -> None:
        self.heard_from(target, now_ms)

    def forget(self, key: bytes) -> None:
        """``key`` left or was pruned: stop tracking it."""
        self._suspect_since.pop(key, None)
        self._last_heard.pop(key, None)
        # (no need to drop it from the round-robin order: _next_target skips non-members)
        if self._probe is not None and self._probe.target == key:
            self._probe = None

    def retune(self, params: LivenessParams, now_ms: int) -> None:
        """Use ``params`` from now on (a configuration reload): a shorter period applies now."""
        self.params = params
        if self._next_probe_ms is not None:
            self._next_probe_ms = min(self._next_probe_ms, now_ms + params.probe_interval_ms)

    @property
    def suspects(self) -> frozenset[bytes]:
        return frozenset(self._suspect_since)

    def last_heard(self, key: bytes) -> int | None:
        return self._last_heard.get(key)

    # -- the members -------------------------------------------------------------
    def _is_live(self, key: bytes) -> bool:
        """Whether ``key`` is a member to probe: O(log N), by bisection of the sorted list."""
        peers = self._peers_seen
        i = bisect.bisect_left(peers, key)
        return i < len(peers) and peers[i] == key and key != self.self_key and key not in self._gone

    def _live_count(self) -> int:
        # as of the last tick (the caller may edit its list in place meanwhile)
        return self._listed - len(self._gone)

    def _members_changed(self, peers: Sequence[bytes], version: int | None) -> None:
        """The caller's member list changed: O(log N + suspects), not O(N)."""
        self._peers_seen, self._peers_version = peers, version
        i = bisect.bisect_left(peers, self.self_key)
        self._listed = len(peers) - (i < len(peers) and peers[i] == self.self_key)
        self._gone.clear()
        for k in [k for k in self._suspect_since if not self._is_live(k)]:
            del self._suspect_since[k]

    # -- the clock --------------------------------------------------------------
    def tick(
        self,
        now_ms: int,
        peers: Sequence[bytes],
        *,
        watched_clients: Iterable[bytes] = (),
        probe_peers: bool = True,
        peers_version: int | None = None,
    ) -> list[Action]:
        """Advance to ``now_ms``. ``peers``: live probe-able members (self may be there).

        ``peers`` must be sorted (members are looked up by bisection in it, so
        a change of membership costs O(log N), not a copy of the list into a
        set). ``peers_version`` changes whenever the list's contents do (the
        views' ``reach_version``: the list is edited in place); None: a new
        list object is passed whenever they change.
        ``watched_clients``: clients assigned to this node (declared dead when
        silent for ``client_timeout``). ``probe_peers`` is False on clients,
        which only keep their peer's view of them fresh (the caller pings the
        assigned peer every period).
        """
        p = self.params
        out: list[Action] = []
        if peers is not self._peers_seen or peers_version != self._peers_version:
            self._members_changed(peers, peers_version)
        began, self._watch_since = self._watch_since, {}
        for c in watched_clients:  # a few: the clients assigned to us
            start = self._watch_since[c] = began.get(c, now_ms)
            heard = max(self._last_heard.get(c, start), start)
            if now_ms - heard >= p.client_timeout_ms:
                out.append(Dead(c))
                self.forget(c)
                del self._watch_since[c]
        if not probe_peers:
            return out

        # Suspects that stayed silent for the whole suspicion window are dead.
        suspicion_ms = self._suspicion_ms()
        for k, since in list(self._suspect_since.items()):
            if now_ms - since >= suspicion_ms:
                out.append(Dead(k))
                self.forget(k)
                if self._is_live(k):
                    self._gone.add(k)  # until the caller's list drops it

        probe = self._probe
        if probe is not None and not self._is_live(probe.target):
            self._probe = probe = None
        if probe is not None:
            age = now_ms - probe.started_ms
            if not probe.indirect_sent and age >= self._probe_timeout_ms():
                probe.indirect_sent = True
                if probe.counted:
                    self._record(True)
                for via in self._helpers(probe.target):
                    out.append(PingReq(via, probe.target, probe.probe_id))
            if age >= self.probe_interval_ms():
                if probe.target not in self._suspect_since:
                    self._suspect_since[probe.target] = probe.started_ms
                    out.append(Suspect(probe.target))
                self._probe = None

        if self._next_probe_ms is None:
            self._next_probe_ms = now_ms + self.rng.randrange(max(1, p.probe_interval_ms))
        if now_ms >= self._next_probe_ms:
            self._next_probe_ms = now_ms + self.probe_interval_ms()
        else:
            return out
        if self._probe is None and self._live_count() > 0:
            target = self._next_target()
            pid = self._next_id
            self._next_id += 1
            self._probe = _Probe(target, pid, now_ms, counted=target not in self._suspect_since)
            out.append(Ping(target, pid))
        return out

    def _helpers(self, target: bytes) -> list[bytes]:
        """Up to ``indirect`` random members other than ``target``, O(indirect log N)."""
        pool, live = self._peers_seen, self._is_live
        want = min(self.params.indirect, self._live_count() - (1 if live(target) else 0))
        out: list[bytes] = []
        if want <= 0 or not pool:
            return out
        if len(pool) <= 4 * want + 8:
            cands = [k for k in pool if live(k) and k != target]
            return self.rng.sample(cands, min(want, len(cands)))
        for _ in range(20 * want + 20):
            k = pool[self.rng.randrange(len(pool))]
            if k != target and live(k) and k not in out:
                out.append(k)
                if len(out) == want:
                    break
        return out

    def _next_target(self) -> bytes:
        live = self._is_live
        # Suspects are re-probed first: a suspicion must be confirmed or cleared.
        for k in self._suspect_since:
            if live(k) and (self._probe is None or self._probe.target != k):
                return k
        while True:
            if not self._order:
                # once every N probes: a new round of every member, shuffled
                self._order = [k for k in self._peers_seen if live(k)]
                self.rng.shuffle(self._order)
            k = self._order.pop()
            if live(k):
                return k

    def next_deadline(self) -> int | None:
        times: list[int] = []
        if self._next_probe_ms is not None:
            times.append(self._next_probe_ms)
        if self._probe is not None:
            pr = self._probe
            if not pr.indirect_sent:
                times.append(pr.started_ms + self._probe_timeout_ms())
            times.append(pr.started_ms + self.probe_interval_ms())
        suspicion_ms = self._suspicion_ms()
        times.extend(s + suspicion_ms for s in self._suspect_since.values())
        return min(times) if times else None
