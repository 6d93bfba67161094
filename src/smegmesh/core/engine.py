"""The engine boundary: typed inputs and outputs of :class:`~smegmesh.core.meshnode.MeshNode`.

A driver (:mod:`smegmesh.core.driver`, used by the daemon and the simulator)
feeds one :data:`Input` at a time to ``MeshNode.step`` and carries out the
:data:`Out` values it returns, in order:

* :class:`Call`: send ``msg`` to member ``to``; report the reply
  (:class:`ReplyReceived`) or the failure (:class:`CallFailed`, also at
  ``timeout_ms``) back with the same ``Call``;
* :class:`Respond`: the reply to the request ``request_id`` (given in
  :class:`RequestReceived`); it may come later than the request (a relayed
  ping answers when the target did);
* :class:`Changed`: the state changed for these node keys (update WireGuard,
  DNS, persistence...).

Nothing here does I/O; the types only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from smegmesh.core.messages import (
    Ack,
    JoinReply,
    JoinRequest,
    Observed,
    Ping,
    PingReq,
    Refusal,
    WhereAmI,
    WhoAmI,
    YouAre,
)
from smegmesh.core.offer import Offer, Want
from smegmesh.core.record import Role
from smegmesh.core.sync import Push, SyncEnd, SyncSession, SyncStart, SyncStep

__all__ = [
    "Call",
    "CallCtx",
    "CallFailed",
    "Changed",
    "ClockStepped",
    "Input",
    "Leave",
    "MeshSettings",
    "Message",
    "NotAllowed",
    "OfferCtx",
    "Out",
    "PeerPingCtx",
    "ProbeCtx",
    "PushCtx",
    "RelayCtx",
    "ReplyReceived",
    "RequestReceived",
    "Respond",
    "Start",
    "SyncCtx",
    "TimerFired",
    "TooManyInvites",
    "UpdateSelf",
]

#: Every node-to-node message of the protocol (see :mod:`smegmesh.core.codecs`).
Message = (
    Ping
    | PingReq
    | Ack
    | JoinRequest
    | JoinReply
    | Refusal
    | WhoAmI
    | YouAre
    | WhereAmI
    | Observed
    | Push
    | Offer
    | Want
    | SyncStart
    | SyncStep
    | SyncEnd
)


class NotAllowed(Exception):
    """A local command refused: this node may not do that in this mesh (not an admin, policy)."""


class TooManyInvites(NotAllowed):
    """``invite`` refused: the record holds as many outstanding invitations as it may."""


@dataclass(frozen=True, slots=True)
class MeshSettings:
    """This node's own settings in a mesh (its record's local fields)."""

    role: Role = Role.PEER
    wg_endpoint: str | None = None
    control_endpoint: str | None = None
    tls_fp: bytes | None = None


# Reply contexts: what the engine needs back with a reply ------------------------------
@dataclass(frozen=True, slots=True)
class PushCtx:
    """A push of ``keys`` (the reply is an ``Ack``); ``deltas``: records in it as deltas.

    ``tree``: a forward along the dissemination tree (1; ``core.treecast``), or
    its one retry after a failure (2); 0: not a tree push.
    """

    keys: frozenset[bytes]
    deltas: bool = False
    tree: int = 0


@dataclass(frozen=True, slots=True)
class OfferCtx:
    """An offer of ``keys`` (the reply is a ``Want``; see ``core.offer``)."""

    keys: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class ProbeCtx:
    """A failure-detector probe (direct ``Ping`` or indirect ``PingReq``)."""

    target: bytes
    probe_id: int


@dataclass(frozen=True, slots=True)
class PeerPingCtx:
    """A client's ping of its assigned peer."""

    peer: bytes


@dataclass(slots=True)
class SyncCtx:
    """One anti-entropy session we started."""

    session: SyncSession
    follow: int = 0  # follow-up sessions so far (state larger than one page)


@dataclass(frozen=True, slots=True)
class RelayCtx:
    """The ping we send for a member's ``PingReq``: its answer goes to ``request_id``."""

    request_id: int
    probe_id: int


CallCtx = PushCtx | OfferCtx | ProbeCtx | PeerPingCtx | SyncCtx | RelayCtx


# Outputs -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Call:
    """Send ``msg`` to member ``to``; feed the reply or the failure back with this ``Call``.

    ``timeout_ms``: fail the call after this long (None: the driver's RPC timeout).
    ``unanswered``: the engine needs no answer (a push along the tree,
    ``core.treecast``): a driver that can may send it as one datagram that
    asks for none, and then feeds back nothing, neither a reply nor a
    failure; one that cannot makes it an ordinary call.
    """

    to: bytes
    msg: Message
    ctx: CallCtx
    timeout_ms: int | None = None
    unanswered: bool = False


@dataclass(frozen=True, slots=True)
class Respond:
    """The reply to request ``request_id``."""

    request_id: int
    msg: Message


@dataclass(frozen=True, slots=True)
class Changed:
    """Mesh state changed for ``keys``."""

    keys: frozenset[bytes]


Out = Call | Respond | Changed


class OnChanged(Protocol):
    """``MeshNode._on_changed``'s signature, for the mixins that call it (one place)."""

    def __call__(
        self,
        changed: set[bytes],
        now_ms: int,
        src: bytes | None,
        hops: int | None = None,
        revived: frozenset[bytes] = frozenset(),
    ) -> list[Out]: ...


# Inputs ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TimerFired:
    """The engine's deadline (``next_deadline``) passed.

    ``late_ms``: how long after that deadline the timer ran (the adapter's
    measure of its own stall; the simulator's timers are on time).
    """

    now_ms: int
    late_ms: int = 0


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A request from member ``src`` (authenticated by the transport)."""

    src: bytes
    msg: Message
    now_ms: int
    request_id: int = 0


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """The reply to ``call``."""

    call: Call
    msg: Message
    now_ms: int


@dataclass(frozen=True, slots=True)
class CallFailed:
    """``call`` got no reply (unreachable, timeout, malformed answer)."""

    call: Call
    now_ms: int


@dataclass(frozen=True, slots=True)
class ClockStepped:
    """The wall clock was stepped by ``delta_ms`` (forward: > 0) since the last input.

    Inputs carry the wall clock: what is signed (records, prunes, statements)
    and what is compared with other nodes' times must stay on it. The
    engine's own timers (probe schedule, probe in flight, suspicions,
    silences, gossip rounds, windows and budgets) measure time as it passes:
    they move by the step, so a clock set back an hour does not hold them
    an hour and one set forward does not end them at once. The adapter finds
    a step where the wall clock and a monotonic clock part (``daemon.runtime``).
    """

    delta_ms: int


@dataclass(frozen=True, slots=True)
class Start:
    """Local command: publish (or re-publish after a restart) our record."""

    now_ms: int


@dataclass(frozen=True, slots=True)
class UpdateSelf:
    """Local command: change fields of our record (alias, services, routes...)."""

    now_ms: int
    changes: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Leave:
    """Local command: publish our leave tombstone."""

    now_ms: int


Input = (
    TimerFired
    | RequestReceived
    | ReplyReceived
    | CallFailed
    | ClockStepped
    | Start
    | UpdateSelf
    | Leave
)
