"""The seed corpus of the fuzz targets (:mod:`smegmesh.testbed.fuzztargets`).

Real protocol traffic: a few :class:`~smegmesh.core.meshnode.MeshNode` s talk
through the wire codec (joins, gossip, sync sessions) and every message is
kept; :func:`_by_type` sorts them by message type, :func:`_dedup` keeps a
spread of at most a few per type.
"""

from __future__ import annotations

import functools
import heapq
import random
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MESH", "_by_type", "_dedup", "_mesh_corpus", "_sync_exchange"]


MESH = "amber-falcon-river-k7q2"


@dataclass
class _Capture:
    """A few MeshNodes talking through the wire codec; every message is kept."""

    nodes: dict[bytes, Any] = field(default_factory=dict)
    queue: list[tuple[int, int, Any]] = field(default_factory=list)
    seq: int = 0
    now: int = 0
    wire: list[bytes] = field(default_factory=list)

    def add(self, seed: int) -> Any:
        from smegmesh.core.gossip import GossipParams
        from smegmesh.core.identity import NodeIdentity
        from smegmesh.core.liveness import LivenessParams
        from smegmesh.core.meshnode import MeshNode, MeshSettings
        from smegmesh.core.record import Role

        ident = NodeIdentity.from_seed(bytes([seed]) * 32)
        node = MeshNode(
            ident,
            MESH,
            MeshSettings(
                role=Role.PEER,
                wg_endpoint=f"192.0.2.{seed}:51820",
                control_endpoint=f"192.0.2.{seed}:4000",
                tls_fp=bytes(32),
            ),
            GossipParams(sync_interval_ms=500, pull_interval_ms=1500),
            LivenessParams.from_heartbeat(1000),
            random.Random(seed),
        )
        self.nodes[node.key] = node
        return node

    def outs(self, outs: list[Any]) -> None:
        from smegmesh.core.meshnode import Call

        for o in outs:
            if isinstance(o, Call):
                self.seq += 1
                heapq.heappush(self.queue, (self.now + 5, self.seq, o))
                self._src_of[self.seq] = self._current

    _src_of: dict[int, bytes] = field(default_factory=dict)
    _current: bytes = b""

    def run_until(self, t_end: int, down: frozenset[bytes] = frozenset()) -> None:
        from smegmesh.core.meshnode import Relay
        from smegmesh.core.messages import Ack
        from smegmesh.core.wire import decode, encode

        while self.now < t_end:
            self.now += 5
            while self.queue and self.queue[0][0] <= self.now:
                _, seq, call = heapq.heappop(self.queue)
                src = self._src_of.pop(seq)
                data = encode(call.msg)
                self.wire.append(data)
                caller = self.nodes[src]
                if call.to in down or call.to not in self.nodes:
                    self._current = src
                    self.outs(caller.handle_failure(call.to, call.ctx, self.now))
                    continue
                target = self.nodes[call.to]
                self._current = call.to
                reply, outs = target.handle_request(src, decode(data), self.now)
                self.outs(outs)
                if isinstance(reply, Relay):
                    reply = Ack(reply.msg.mesh_id, reply.msg.probe_id, reply.target not in down)
                rdata = encode(reply)
                self.wire.append(rdata)
                self._current = src
                self.outs(caller.handle_reply(call.to, call.ctx, decode(rdata), self.now))
            for key, node in list(self.nodes.items()):
                if key in down:
                    continue
                deadline = node.next_deadline()
                if deadline is not None and deadline <= self.now:
                    self._current = key
                    self.outs(node.tick(self.now))


@functools.cache
def _mesh_corpus() -> tuple[tuple[bytes, ...], Any, bytes, bytes]:
    """Messages of a small live mesh (joins, gossip, syncs, a crash and its prune).

    Returns (encoded messages, the first member, a member key, a token secret).
    """
    from smegmesh.core.invite import Bootstrap
    from smegmesh.core.messages import JoinReply, Refusal, WhoAmI, YouAre
    from smegmesh.core.wire import decode, encode

    cap = _Capture()
    first = cap.add(1)
    cap._current = first.key
    cap.outs(first.start(0))
    members = [first]
    secret = b""
    for seed in (2, 3, 4):
        node = cap.add(seed)
        token, outs = first.invite(
            cap.now, ttl_ms=3_600_000, uses=5, bootstrap=[Bootstrap("x:1", bytes(32), first.key)]
        )
        secret = token.secret
        cap._current = first.key
        cap.outs(outs)
        req = encode(node.join_request(token.secret, cap.now))
        cap.wire.append(req)
        reply, outs = first.handle_request(node.key, decode(req), cap.now)
        cap.outs(outs)
        assert isinstance(reply, JoinReply)
        cap.wire.append(encode(reply))
        cap._current = node.key
        cap.outs(node.absorb(reply.items, cap.now))
        members.append(node)
        cap.run_until(cap.now + 300)
    cap.run_until(cap.now + 3000)
    # Member 4 crashes: suspicion, then a prune travels.
    cap.run_until(cap.now + 15000, down=frozenset({members[-1].key}))
    cap.wire += _sync_exchange(first, cap.now)
    cap.wire += [
        encode(m)
        for m in (
            WhoAmI(MESH),
            YouAre(MESH, "192.0.2.7"),
            YouAre(MESH, "2001:db8::7"),
            Refusal(MESH),
        )
    ]
    return tuple(cap.wire), first, members[1].key, secret


def _sync_exchange(member: Any, now: int) -> list[bytes]:
    """A sync session from a node holding one record to ``member``: steps both ways."""
    from smegmesh.core.state import MeshState
    from smegmesh.core.sync import SyncSession
    from smegmesh.core.wire import encode

    out: list[bytes] = []
    for keep in (1, 2):
        mine = MeshState(MESH)
        mine.apply_many(list(member.mesh.all_items())[:keep], now)
        session = SyncSession.initiator(mine, now, rng=random.Random(keep))
        sessions: dict[Any, Any] = {}
        msg: Any = session.start()
        for _ in range(20):
            out.append(encode(msg))
            reply, _, _ = SyncSession.respond(member.mesh, sessions, b"\x05" * 32, msg, now)
            out.append(encode(reply))
            nxt, _ = session.receive(reply, now)
            if nxt is None:
                break
            msg = nxt
    return out


def _by_type() -> dict[str, list[bytes]]:
    """Encoded messages of the corpus, grouped by message class name."""
    from smegmesh.core.wire import decode, encode

    out: dict[str, list[bytes]] = {}
    wire, *_ = _mesh_corpus()
    for data in wire:
        msg = decode(data)
        out.setdefault(type(msg).__name__, []).append(data)
        for item in getattr(msg, "items", ()) or ():
            out.setdefault(type(item).__name__, []).append(encode(item))
        rec = getattr(msg, "record", None)
        if rec is not None:
            out.setdefault(type(rec).__name__, []).append(encode(rec))
    return out


def _dedup(seeds: list[bytes], limit: int = 40) -> list[bytes]:
    seen: dict[bytes, None] = {}
    for s in sorted(seeds, key=len):
        seen.setdefault(s, None)
    items = list(seen)
    if len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]
