"""Sans-I/O anti-entropy between two replicas of a mesh state.

One :class:`SyncSession` per exchange; the initiator sends requests and the
responder answers each one (request/reply transport). Flow::

    I -> R  SyncStart(salt, root digest, count)
    R -> I  SyncEnd                          if the digests are equal (in sync)
            SyncStep(...)                    otherwise
    ...     SyncStep <-> SyncStep            descend into differing subtrees
    R -> I  SyncEnd                          when R has nothing more to say

A :class:`SyncStep` carries, for the subtrees where the two sides differ:

* ``nodes``: ``(depth, prefix, 16 child hashes)``: the sender's children of a
  tree node; the receiver compares with its own and goes on with the
  differing children only;
* ``leaves``: ``(depth, prefix, entries)``: the sender's full list of
  ``(key, record version+1, prune version+1, entry hash)`` under a small node
  (at most :data:`LEAF_MAX` keys, or the deepest level). The receiver answers
  with the items the sender lacks or holds older (``items``) and asks for the
  ones it lacks or holds older (``wants``);
* ``items``: records/prunes for the other side to merge (by reference where
  it holds their parts, when both sides take references: ``core.sync_refs``);
* ``wants``: keys whose items the sender asks for.

Child and entry hashes are truncated to :data:`HASH_LEN` bytes, salted with a
per-session random salt: a (2^-32) false match only delays repair to a later
session, because the full 32-byte root digest still differs. A side whose
subtree is empty where the other's is not sends everything it has there at
once, so a new replica gets the whole state in one round trip.

Costs: in sync, one small request and a 6-byte reply (~80 bytes). One changed
key in a mesh of N nodes: ``log16(N / LEAF_MAX)`` levels of 16 x 4 bytes, one
leaf list of a few entries, then the item itself (~0.8 KB at 10,000 nodes).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from smegmesh.core.codec import KEY_ID_LEN, Elided, Registry
from smegmesh.core.elide import expand, expand_again
from smegmesh.core.offer import Push
from smegmesh.core.paging import page
from smegmesh.core.record import RecordError
from smegmesh.core.state import DEPTH, FANOUT, Item, MeshState
from smegmesh.core.state_gate import senders_faults
from smegmesh.core.sync_messages import (
    CODECS,
    DIGEST_LEN,
    HASH_LEN,
    SALT_LEN,
    Leaf,
    LeafEntry,
    NodeHashes,
    SyncEnd,
    SyncMessage,
    SyncStart,
    SyncStep,
)
from smegmesh.core.sync_refs import (
    RESPONDER_TAKES_REFS,
    TAKES_REFS,
    by_reference,
    note_wants,
)
from smegmesh.core.sync_table import (
    MAX_DONE_SESSIONS,
    MAX_RESPONDER_SESSIONS,
    MAX_SESSIONS_PER_INITIATOR,
    SESSION_TIMEOUT_MS,
    expire,
    forget_done,
    make_room,
)
from smegmesh.core.sync_versions import held_records_left_out, newer

__all__ = [
    "CODECS",
    "HASH_LEN",
    "LEAF_MAX",
    "MAX_DONE_SESSIONS",
    "MAX_RESPONDER_SESSIONS",
    "MAX_SESSIONS_PER_INITIATOR",
    "SESSION_TIMEOUT_MS",
    "Push",
    "SyncEnd",
    "SyncSession",
    "SyncStart",
    "SyncStep",
]

LEAF_MAX = 4
MAX_STEP_NODES = 4096
#: Steps a session takes, on either side. An honest session descends the
#: tree, one level a round trip: about DEPTH + 2 of them (items past a page
#: go to a later session). Past this the session ends, so a member that
#: always asks something cannot keep one going for ever.
MAX_SESSION_ROUNDS = 4 * (DEPTH + 2)
MAX_STEP_WANTS = 8192
#: Bytes of a step's questions (nodes, leaves, wants), on top of one page of items:
#: a step stays well under the transport's 1 MiB message cap.
QUESTION_BYTES = 256 * 1024
# Upper bounds of the encoded sizes (msgpack) of one node, leaf, leaf entry, want.
_NODE_BYTES = 1 + 9 + 9 + 2 + FANOUT * HASH_LEN
_LEAF_BYTES = 1 + 9 + 9 + 5
_ENTRY_BYTES = 1 + 2 + 32 + 9 + 9 + 2 + HASH_LEN
_WANT_BYTES = 2 + 32
_EMPTY = bytes(HASH_LEN)


def _child_hashes(state: MeshState, depth: int, prefix: int, salt: bytes) -> bytes:
    out = bytearray()
    base = prefix << 4
    for c in range(FANOUT):
        s, n = state.node(depth + 1, base + c)
        if n == 0:
            out += _EMPTY
        else:
            h = hashlib.sha256(salt + s.to_bytes(32, "big") + n.to_bytes(8, "big")).digest()
            out += h[:HASH_LEN] if h[:HASH_LEN] != _EMPTY else b"\x00\x00\x00\x01"
    return bytes(out)


def _entry_h(salt: bytes, h: int) -> bytes:
    return hashlib.sha256(salt + h.to_bytes(32, "big")).digest()[:HASH_LEN]


@dataclass(eq=False)
class SyncSession:
    """One anti-entropy exchange; see the module docstring.

    ``bytes_sent``/``bytes_received`` count encoded message sizes,
    ``merged`` the keys this side changed, ``rejected`` the number of invalid
    items dropped (a count: a session kept open by a hostile member must not
    hold on to what it sent), ``rounds`` the steps received.
    """

    state: MeshState
    session_id: int
    salt: bytes
    is_initiator: bool
    now_ms: int = 0
    done: bool = False
    bytes_sent: int = 0
    bytes_received: int = 0
    messages: int = 0
    merged: set[bytes] = field(default_factory=set)
    rejected: int = 0
    #: the sender's faults among the items merged since the node last took
    #: them (``take_errors``): for its count and log of refused items
    step_errors: list[RecordError] = field(default_factory=list)
    rounds: int = 0
    count_bytes: bool = True
    #: This side left items out of a step (more than a page): another session is due.
    truncated: bool = False
    #: The other side takes items by reference (see :data:`TAKES_REFS`).
    peer_takes_refs: bool = False
    #: Responder: the hash of the last ``SyncStep`` received and the reply it
    #: got. The same step again (a datagram resent, or a reply too big for a
    #: datagram, which makes the caller repeat the call over the stream) gets
    #: the same reply without advancing the session: a step is safe to execute
    #: twice. (A step crafted to hash alike gets that reply again, nothing else.)
    last: tuple[int, SyncMessage] | None = None
    #: Responder: hashes of the steps answered before ``last`` (at most
    #: :data:`MAX_SESSION_ROUNDS`). A copy of one delivered late (a datagram
    #: overtaken by the same step resent over the stream) was answered already:
    #: it is not run again, so it cannot replace ``last`` nor end the session.
    answered: set[int] = field(default_factory=set)

    # ------------------------------------------------------------------ construction

    @classmethod
    def initiator(
        cls,
        state: MeshState,
        now_ms: int,
        *,
        rng: random.Random,
        count_bytes: bool = True,
    ) -> SyncSession:
        """A session we start; ``rng`` draws its id and salt (the engine's, passed in)."""
        sid, salt = rng.getrandbits(32) | TAKES_REFS, rng.randbytes(SALT_LEN)
        return cls(state, sid, salt, True, now_ms, count_bytes=count_bytes)

    def take_errors(self) -> list[RecordError]:
        """The sender's faults merged since the last call (at most the last 8)."""
        out, self.step_errors = self.step_errors, []
        return out

    @staticmethod
    def is_sync_message(msg: object) -> bool:
        return isinstance(msg, SyncStart | SyncStep | SyncEnd)

    @classmethod
    def respond(
        cls,
        state: MeshState,
        sessions: dict[tuple[bytes, int], SyncSession],
        src: bytes,
        msg: SyncMessage,
        now_ms: int,
        *,
        count_bytes: bool = False,
    ) -> tuple[SyncMessage, SyncSession, set[bytes]]:
        """Responder side: answer ``msg`` from ``src``; keeps open sessions in ``sessions``.

        Returns ``(reply, session, keys merged by this message)``. Byte
        counting (an extra encode per message) is off by default here. Finished
        sessions are removed from ``sessions``, and so are ones idle for
        :data:`SESSION_TIMEOUT_MS`; at most :data:`MAX_RESPONDER_SESSIONS` are
        held, :data:`MAX_SESSIONS_PER_INITIATOR` per initiator.
        """
        expire(sessions, now_ms)
        slot = (src, msg.session_id)
        if isinstance(msg, SyncStart):
            session = cls(state, msg.session_id, msg.salt, False, now_ms, count_bytes=count_bytes)
            session.peer_takes_refs = bool(msg.session_id & TAKES_REFS)
            sessions.pop(slot, None)
            make_room(sessions, src)
        else:
            found = sessions.pop(slot, None)
            # hashed only for a session of ours that answered a step (a stranger's
            # session id costs a lookup, not a pass over its step)
            if found is not None and found.last is not None:
                h = hash(msg)
                if found.last[0] == h:
                    found.now_ms = now_ms
                    sessions[slot] = found  # the same step again: the same reply
                    return found.last[1], found, set()
                if h in found.answered:  # late: its caller had its reply; it goes nowhere
                    found.now_ms = now_ms
                    sessions[slot] = found
                    return SyncEnd(state.mesh_id, msg.session_id), found, set()
            if found is None or found.done:  # unknown, expired or over: stop
                dead = cls(state, msg.session_id, b"", False, now_ms, done=True, count_bytes=False)
                return SyncEnd(state.mesh_id, msg.session_id), dead, set()
            session = found
        reply, merged = session.receive(msg, now_ms)
        assert reply is not None
        if isinstance(msg, SyncStep):
            if session.last is not None:
                session.answered.add(session.last[0])
            session.last = (hash(msg), reply)
        if not session.done or session.last is not None:
            # re-inserted: the dict is in order of last activity; a session
            # over after a step stays (done) to answer that step again
            sessions[slot] = session
            if session.done:
                forget_done(sessions, slot)
        return reply, session, merged

    @staticmethod
    def open_count(sessions: dict[tuple[bytes, int], SyncSession]) -> int:
        """Responder sessions not over (those over are kept a while for a repeated step)."""
        return sum(1 for s in sessions.values() if not s.done)

    # ------------------------------------------------------------------ driving

    def start(self) -> SyncStart:
        """The initiator's first request."""
        if not self.is_initiator:
            raise RuntimeError("only the initiator starts a session")
        s, n = self.state.root()
        msg = SyncStart(
            self.state.mesh_id, self.session_id, self.salt, self.state.digest()[:DIGEST_LEN], n
        )
        del s
        self._count_out(msg)
        return msg

    def receive(self, msg: SyncMessage, now_ms: int) -> tuple[SyncMessage | None, set[bytes]]:
        """Consume a message at ``now_ms``; returns ``(message to send or None, keys merged)``.

        The initiator gets None when the session is complete. The responder
        always gets a reply (``SyncEnd`` when it has nothing to say).
        """
        self.now_ms = now_ms
        self._count_in(msg)
        if self.is_initiator and msg.session_id == self.session_id | RESPONDER_TAKES_REFS:
            self.peer_takes_refs = True
        elif msg.session_id != self.session_id:
            self.done = True
            return (None if self.is_initiator else self._end()), set()
        if msg.mesh_id != self.state.mesh_id:
            self.done = True
            return (None if self.is_initiator else self._end()), set()
        if isinstance(msg, SyncEnd):
            self.done = True
            return (None if self.is_initiator else self._end()), set()
        if isinstance(msg, SyncStart):
            if self.is_initiator:
                self.done = True
                return None, set()
            reply = self._on_start(msg)
            merged: set[bytes] = set()
        else:
            self.rounds += 1
            if self.rounds > MAX_SESSION_ROUNDS:  # an honest one needs about DEPTH + 2
                self.done = self.truncated = True
                return (None if self.is_initiator else self._end()), set()
            reply, merged = self._on_step(msg)
        if reply is None or not (reply.has_questions() or reply.items):
            self.done = True
            return (None if self.is_initiator else self._end()), merged
        if not (reply.has_questions() or self.is_initiator or _by_ref(reply)):
            # our answer needs no answer (one with references may: what the
            # other side cannot resolve it wants whole in its next step)
            self.done = True
        self._count_out(reply)
        return reply, merged

    # ------------------------------------------------------------------ protocol

    def _end(self) -> SyncEnd:
        m = SyncEnd(self.state.mesh_id, self._out_id())
        self._count_out(m)
        return m

    def _out_id(self) -> int:
        """The session id our messages carry (a responder's says whether it takes references)."""
        if not self.is_initiator and self.session_id & TAKES_REFS:
            return self.session_id | RESPONDER_TAKES_REFS
        return self.session_id

    def _on_start(self, msg: SyncStart) -> SyncStep | None:
        if msg.digest == self.state.digest()[:DIGEST_LEN]:
            return None
        nodes: list[NodeHashes] = []
        leaves: list[Leaf] = []
        send: set[bytes] = set()
        self._expand(0, 0, msg.count == 0, nodes, leaves, send)
        return self._step(nodes, leaves, self.state.items_for(sorted(send)), [])

    def _expand(
        self,
        depth: int,
        prefix: int,
        their_empty: bool,
        nodes: list[NodeHashes],
        leaves: list[Leaf],
        send: set[bytes],
    ) -> None:
        """We differ from the other side at node (depth, prefix): say what we have.

        The keys whose items we send go into ``send``.
        """
        st = self.state
        _, mine = st.node(depth, prefix)
        if their_empty:
            send.update(st.keys_under(depth, prefix))
        elif mine <= LEAF_MAX or depth == DEPTH:
            leaves.append((depth, prefix, self._entries(depth, prefix)))
        else:
            nodes.append((depth, prefix, _child_hashes(st, depth, prefix, self.salt)))

    def _entries(self, depth: int, prefix: int) -> tuple[LeafEntry, ...]:
        st = self.state
        out = []
        for k in sorted(st.keys_under(depth, prefix)):
            rv, pv = st.versions_of(k)
            out.append((k, rv, pv, _entry_h(self.salt, st.entry_hash_of(k))))
        return tuple(out)

    def _on_step(self, msg: SyncStep) -> tuple[SyncStep | None, set[bytes]]:
        st = self.state
        merged, wants = self._take(msg.items)
        nodes: list[NodeHashes] = []
        leaves: list[Leaf] = []
        sent: set[bytes] = set()
        held: dict[bytes, int] = {}  # key sent in answer to a leaf -> their record version + 1
        same_record: set[bytes] = set()  # sent for the prune: they hold our record
        # Each (depth, prefix) is answered once: a step repeating one (a few
        # bytes each) would otherwise cost a walk of that subtree per copy.
        # Distinct ones at every level cover the state at most DEPTH + 1 times.
        seen: set[tuple[int, int]] = set()
        for depth, prefix, theirs in msg.nodes[:MAX_STEP_NODES]:
            if depth >= DEPTH or (depth, prefix) in seen:
                continue
            seen.add((depth, prefix))
            mine = _child_hashes(st, depth, prefix, self.salt)
            for c in range(FANOUT):
                t = theirs[c * HASH_LEN : (c + 1) * HASH_LEN]
                if t != mine[c * HASH_LEN : (c + 1) * HASH_LEN]:
                    self._expand(depth + 1, (prefix << 4) + c, t == _EMPTY, nodes, leaves, sent)
        seen.clear()
        for depth, prefix, entries in msg.leaves[:MAX_STEP_NODES]:
            if (depth, prefix) in seen:
                continue
            seen.add((depth, prefix))
            theirs_map = {e[0]: e for e in entries}
            for k in st.keys_under(depth, prefix):
                if k not in theirs_map:
                    sent.add(k)
            for k, trv, tpv, th in theirs_map.values():
                if k not in st:
                    wants.append(k)  # whole: we hold nothing of it
                    continue
                if th == _entry_h(self.salt, st.entry_hash_of(k)):
                    continue
                rv, pv = st.versions_of(k)
                tie = rv == trv and pv == tpv
                if tie or newer(rv, pv, trv, tpv):
                    sent.add(k)
                    held[k] = trv
                    if rv == trv and not tie:
                        same_record.add(k)
                if tie or newer(trv, tpv, rv, pv):
                    # by id: we hold a record of it, so references will do
                    wants.append(k[:KEY_ID_LEN] if rv and self.peer_takes_refs else k)
        note_wants(st, msg.wants, sent, held)
        wants = list(dict.fromkeys(wants))  # a key unresolved and behind in a leaf: once
        whole_ids = {w[:KEY_ID_LEN] for w in wants if len(w) == 32}  # whole wins over an id
        wants = [w for w in wants if len(w) == 32 or w not in whole_ids]
        out: list[Item | Elided] = held_records_left_out(st.items_for(sorted(sent)), same_record)
        if self.peer_takes_refs:
            out = by_reference(out, held, self.now_ms)
        return self._step(nodes, leaves, out, wants), merged

    def _take(self, items: tuple[Item | Elided, ...]) -> tuple[set[bytes], list[bytes]]:
        """Merge a step's items: the keys changed, and those to want whole.

        Items by reference are made whole from our state (``core.sync_refs``);
        one it cannot resolve (we hold another chain or record than the sender
        thought) is wanted by its whole key, which gets the whole item.
        """
        got = expand(self.state, items)
        changed, errors = self.state.apply_many(got.items, self.now_ms)
        if got.missing:  # a prune of the record the same step brought resolves now
            again = expand_again(self.state, items, got)
            more, errors_again = self.state.apply_many(again, self.now_ms)
            changed, errors = changed | more, errors + errors_again
        self.merged |= changed
        faults = senders_faults(got.errors + errors)
        self.rejected += len(faults)
        self.step_errors = (self.step_errors + faults)[-8:]
        return set(changed), got.missing

    def _step(
        self,
        nodes: list[NodeHashes],
        leaves: list[Leaf],
        items: list[Item | Elided] | list[Item],
        wants: list[bytes],
    ) -> SyncStep | None:
        if not (nodes or leaves or items or wants):
            return None
        # Bounded steps: questions within QUESTION_BYTES, one page of items; what
        # is left out is found again by a later session (see ``truncated``).
        room = QUESTION_BYTES
        n_nodes = min(len(nodes), MAX_STEP_NODES, room // _NODE_BYTES)
        room -= n_nodes * _NODE_BYTES
        n_leaves = 0
        for _d, _p, entries in leaves[:MAX_STEP_NODES]:
            cost = _LEAF_BYTES + _ENTRY_BYTES * len(entries)
            if cost > room:
                break
            room -= cost
            n_leaves += 1
        n_wants = min(len(wants), MAX_STEP_WANTS, room // _WANT_BYTES)
        paged, cut = page(items, memo=self.state.memo)
        if cut or (n_nodes, n_leaves, n_wants) != (len(nodes), len(leaves), len(wants)):
            self.truncated = True
        return SyncStep(
            self.state.mesh_id,
            self._out_id(),
            tuple(nodes[:n_nodes]),
            tuple(leaves[:n_leaves]),
            tuple(paged),
            tuple(wants[:n_wants]),
        )

    def _count_out(self, msg: Any) -> None:
        self.messages += 1
        if self.count_bytes:
            self.bytes_sent += len(_SYNC_CODECS.encode(msg))

    def _count_in(self, msg: Any) -> None:
        if self.count_bytes:
            self.bytes_received += len(_SYNC_CODECS.encode(msg))


#: The sync messages alone: their encoded sizes (a session counts its bytes).
_SYNC_CODECS = Registry(CODECS)


def _by_ref(step: SyncStep) -> bool:
    return any(type(i) is Elided for i in step.items)
