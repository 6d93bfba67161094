"""A client's NAT-traversal decisions (issue 17, docs/NAT.md). Pure: time is an argument.

What :mod:`smegmesh.daemon.direct` decides, without its I/O (WireGuard status
reads, ``WhereAmI`` calls, echo probes, the clock):

* **Targets** (:func:`direct_targets`): the clients to hold a direct session
  with (:func:`~smegmesh.core.direct.choose_direct`) and where to send to each
  (:func:`~smegmesh.core.direct.endpoint_for`), and the overlay addresses to
  probe: those clients and the assigned peer (the round trip through the relay).
* **Port moves**: a client whose relay sees its WireGuard packets come from
  another port than it listens on (:func:`nat_moved_port`), or that shares its
  port with another client behind the same public address
  (:func:`port_clash`: both move, :func:`clash_move_delay_ms` after the
  clash is first seen), moves once to a port derived from its key
  (:func:`relocated_port`); a port the user chose (``--wgport``) is kept.
* **When** (:class:`DirectSchedule`, one per mesh): discovery every
  ``DISCOVER_MS`` once the endpoint is known (``DISCOVER_RETRY_MS`` until
  then, and right after a move), the slow probes every ``SLOW_PROBE_MS``, and
  the settling time after a move (``RELOCATE_SETTLE_MS``) during which an old
  port seen by the relay is not taken as the answer.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from smegmesh.core.desired import assigned_peer
from smegmesh.core.direct import candidates, endpoint_for
from smegmesh.core.direct_choice import DirectChoice
from smegmesh.core.endpoint import join_host_port, split_host_port
from smegmesh.core.record import MAX_LOCAL_ENDPOINTS, NodeRecord, Role, check_endpoint

__all__ = [
    "CLASH_MOVE_DELAY_MS",
    "DISCOVER_MS",
    "DISCOVER_RETRY_MS",
    "HANDSHAKE_GRACE_MS",
    "MAX_PORT_MOVES",
    "RELOCATE_HI",
    "RELOCATE_LO",
    "RELOCATE_SETTLE_MS",
    "SLOW_PROBE_MS",
    "DirectSchedule",
    "DirectTargets",
    "clash_move_delay_ms",
    "direct_targets",
    "endpoint_host",
    "endpoint_port",
    "local_endpoints",
    "nat_moved_port",
    "next_port",
    "port_clash",
    "relocated_port",
]

#: Discovery period once the endpoint is known, and while it is not yet (the
#: assigned peer has no handshake with us right after the join).
DISCOVER_MS = 20_000
DISCOVER_RETRY_MS = 2_000
#: The assigned peer has no WireGuard handshake with a client that just
#: joined (or moved): normal for this long after the first discovery, a
#: failure worth a log line after.
HANDSHAKE_GRACE_MS = 30_000
#: Round trip to the chosen clients not direct and to the assigned peer: this often.
SLOW_PROBE_MS = 5_000
#: After moving to another port, the endpoint seen from outside is taken as it
#: is at the latest this long after the move (the relay learns the new port from
#: our next packet to it).
RELOCATE_SETTLE_MS = 15_000
#: Ports a relocated client picks from (IANA dynamic range).
RELOCATE_LO, RELOCATE_HI = 49152, 65535
#: Port moves per mesh: one for any reason, one more for a clash on the derived port.
MAX_PORT_MOVES = 2
#: A clash moves us this long after we first see it at the least (with the
#: mesh's pull interval: :func:`clash_move_delay_ms`), whatever the port-mate
#: does meanwhile. Our record, which shows the clash on our public address
#: and port, must reach the port-mate before our move (and the discovery
#: after it) replaces it: else the port-mate, which had the same public
#: port, sees no clash and stays, and the NAT's mappings of that port made
#: by our first direct attempts keep those partners from it. A client learns
#: a change from its peer's pushes or its own pulls: in the NAT66 test one
#: saw its port-mate's clash 4.3 s after the port-mate did.
CLASH_MOVE_DELAY_MS = 6_000


def endpoint_host(endpoint: str | None) -> str | None:
    """The host part of ``host:port`` (None: absent or malformed)."""
    if not endpoint:
        return None
    try:
        return split_host_port(endpoint)[0]
    except (ValueError, TypeError):
        return None


def endpoint_port(endpoint: str) -> int | None:
    """The port of ``host:port`` (None: malformed)."""
    try:
        return int(split_host_port(endpoint)[1])
    except (ValueError, TypeError):
        return None


def local_endpoints(port: int, addresses: Iterable[str]) -> tuple[str, ...]:
    """``host:port`` for the first few usable local addresses (bounded)."""
    out: list[str] = []
    for a in addresses:
        if len(out) >= MAX_LOCAL_ENDPOINTS:
            break
        with contextlib.suppress(ValueError):
            out.append(check_endpoint(join_host_port(a, port)))
    return tuple(out)


def relocated_port(mesh_id: str, key: bytes, taken: set[int], salt: int = 0) -> int:
    """A port derived from the mesh and this node's key (distinct w.h.p.), not in ``taken``."""
    span = RELOCATE_HI - RELOCATE_LO + 1
    digest = hashlib.blake2b(
        mesh_id.encode() + key + salt.to_bytes(4, "big"), digest_size=8, person=b"smeg-port"
    ).digest()
    h = int.from_bytes(digest, "big")
    for i in range(span):
        port = RELOCATE_LO + (h + i) % span
        if port not in taken:
            return port
    raise ValueError("no port free")


def next_port(mesh_id: str, key: bytes, taken: set[int], moves: int, current: int) -> int:
    """The port a move goes to, never ``current`` (the port we leave).

    Derived with salt ``moves`` (the moves made so far), or with the next salts
    while that is ``current``: a move saved before a restart, whose schedule
    counts none.
    """
    salt = moves
    port = relocated_port(mesh_id, key, taken, salt)
    while port == current and salt < moves + MAX_PORT_MOVES:
        salt += 1
        port = relocated_port(mesh_id, key, taken, salt)
    return port


def clash_move_delay_ms(pull_interval_ms: int) -> int:
    """How long after a clash is first seen it moves us: two pulls, 6 s at the least."""
    return max(CLASH_MOVE_DELAY_MS, 2 * pull_interval_ms)


def nat_moved_port(seen: str, listen_port: int) -> bool:
    """The relay sees our packets from another port than ours: the NAT did not keep it."""
    return endpoint_port(seen) not in (None, listen_port)


def port_clash(
    me: NodeRecord, records: Iterable[NodeRecord], listen_port: int
) -> NodeRecord | None:
    """A client behind our public address listening on our port (then we move).

    Both move, each to its own port. Only one used to (the higher key), but
    the NAT may still hold mappings of the shared public port made by the one
    that moved, to the partners it tried first; their attempts to reach the
    one that stayed refresh those mappings, which lead to the old socket, so
    the one that stayed never reached them (the NAT66 test's flake: in three
    failed runs, the client that kept the port failed with every partner
    behind another NAT). A port both left carries nothing. Two that moved to
    the same derived port clash again (``DirectSchedule.may_move``: once more).
    """
    host = endpoint_host(me.nat_endpoint)
    if host is None or me.nat_endpoint is None:
        return None
    # a record's endpoints are checked (check_endpoint): the same host has the
    # same text before the last ':', a test that costs no parse per record
    # (this runs at every new state version, over every record)
    ours = me.nat_endpoint.rpartition(":")[0]
    for r in records:
        nat = r.nat_endpoint
        if not nat or not r.local_endpoints or nat.rpartition(":")[0] != ours:
            continue
        if (
            r.wg_key != me.wg_key
            and r.role == Role.CLIENT
            and not r.left
            and endpoint_host(r.nat_endpoint) == host
            and r.local_endpoints
            and endpoint_port(r.local_endpoints[0]) == listen_port
        ):
            return r
    return None


@dataclass(frozen=True, slots=True)
class DirectTargets:
    """The chosen clients (key -> endpoint) and the overlay addresses to probe."""

    chosen: dict[bytes, str]
    probed: dict[bytes, str]


def direct_targets(
    me: NodeRecord,
    records: Iterable[NodeRecord],
    limit: int,
    choice: DirectChoice | None = None,
) -> DirectTargets:
    """The clients ``me`` holds direct sessions with, and whom it probes.

    ``records``: the mesh's live records. Probed: the chosen clients and the
    assigned peer (the round trip through the relay). ``choice``: the mesh's
    :class:`DirectChoice` (of ``me.wg_key`` and ``limit``), brought up to date
    here: the mutual choice is computed again only for what changed (without
    it, from scratch). Linear in the records otherwise (no hash per record).
    """
    recs = list(records)
    cands = candidates(recs)
    if choice is None:
        choice = DirectChoice(me.wg_key, limit)
    chosen: dict[bytes, str] = {}
    for k in sorted(choice.update(cands.keys())):
        ep = endpoint_for(me, cands[k])
        if ep is not None:
            chosen[k] = ep
    probed = {k: cands[k].address for k in chosen}
    peers = {r.wg_key: r for r in recs if r.role is Role.PEER}
    via = assigned_peer(me, peers)
    if via is not None:
        probed[via] = peers[via].address
    return DirectTargets(chosen, probed)


@dataclass(slots=True)
class DirectSchedule:
    """When one mesh's discovery and slow probes are due, and its port moves (at most two).

    Times are milliseconds of one monotonic clock, given by the caller.
    """

    discovered_ms: int | None = None  # last discovery started (None: never)
    slow_probe_ms: int | None = None  # last slow probe round
    moved_ms: int | None = None  # when the port was last moved
    moves: int = 0  # port moves made (at most MAX_PORT_MOVES)
    first_discovery_ms: int | None = None  # the first discovery (since the join)
    clash_ms: int | None = None  # a port-mate's clash first seen (a move is due)

    def discovery_due(self, now_ms: int, endpoint_known: bool) -> bool:
        """Whether a discovery starts now (if so, it counts as started)."""
        period = DISCOVER_MS if endpoint_known else DISCOVER_RETRY_MS
        if self.discovered_ms is not None and now_ms - self.discovered_ms < period:
            return False
        self.discovered_ms = now_ms
        if self.first_discovery_ms is None:
            self.first_discovery_ms = now_ms
        return True

    def no_handshake_yet_is_normal(self, now_ms: int) -> bool:
        """Whether "no handshake with us yet" is no failure at ``now_ms``.

        Within :data:`HANDSHAKE_GRACE_MS` of the first discovery (or of a port
        move) the first WireGuard handshake with the relay is still to come.
        """
        since = max(self.first_discovery_ms or 0, self.moved_ms or 0)
        return self.first_discovery_ms is not None and now_ms - since < HANDSHAKE_GRACE_MS

    def slow_probe_due(self, now_ms: int) -> bool:
        """Whether the slow probes go now (if so, they count as sent)."""
        if self.slow_probe_ms is not None and now_ms - self.slow_probe_ms < SLOW_PROBE_MS:
            return False
        self.slow_probe_ms = now_ms
        return True

    def may_move(self, user_port: bool, clash: bool = False) -> bool:
        """Whether the port may move now: never off a port the user chose.

        Once for any reason; a second time only for a ``clash`` (a client
        behind our NAT on the port we moved to: the two derived ports are
        equal, about 1 in 16,384), to the port of the next salt. Never more:
        the moves cannot go on.
        """
        if user_port:
            return False
        return self.moves == 0 or (clash and self.moves < MAX_PORT_MOVES)

    def clash_move_due(
        self,
        now_ms: int,
        clash: bool,
        user_port: bool = False,
        delay_ms: int = CLASH_MOVE_DELAY_MS,
    ) -> bool:
        """Whether a clash moves the port now.

        A ``clash`` seen is kept: the move is due ``delay_ms``
        (:func:`clash_move_delay_ms`) after the first sight, even if the
        port-mate has moved on since (it held our public port as well, so its
        mappings of it may linger; the two move together). Until then our
        record keeps showing the clash. Nothing is kept when the port may not
        move (:meth:`may_move`): a user's port, or the moves used up.
        """
        if not self.may_move(user_port, clash=True):
            self.clash_ms = None
            return False
        if clash and self.clash_ms is None:
            self.clash_ms = now_ms
        return self.clash_ms is not None and now_ms - self.clash_ms >= delay_ms

    @property
    def sessions_allowed(self) -> bool:
        """Whether direct sessions may be held: not while a clash move is due.

        A session on the port we are about to leave breaks at the move (in the
        NAT66 test every pair came up direct on the shared port, then the move
        sent a ping run through the relay), and its attempts leave mappings of
        the shared public port in the NAT: what the move is for.
        """
        return self.clash_ms is None

    def paused(self) -> None:
        """The mesh is down, joining, or we are no client: a clash seen is stale."""
        self.clash_ms = None

    def moved(self, now_ms: int) -> None:
        """The port was moved: discover the new mapping at once."""
        self.moved_ms = now_ms
        self.moves += 1
        self.discovered_ms = None
        self.clash_ms = None

    def settling(self, now_ms: int, seen: str, listen_port: int, endpoint_known: bool) -> bool:
        """Just moved and the relay still sees another port: not the answer yet.

        Then the next discovery is due after ``DISCOVER_RETRY_MS`` (not the
        full period) when the endpoint was known.
        """
        if (
            self.moved_ms is None
            or endpoint_port(seen) == listen_port
            or now_ms - self.moved_ms >= RELOCATE_SETTLE_MS
        ):
            return False
        if endpoint_known:
            self.discovered_ms = now_ms - DISCOVER_MS + DISCOVER_RETRY_MS
        return True
