"""The seed corpus of the fuzz targets (:mod:`smegmesh.testbed.fuzztargets`).

Real protocol traffic: a few :class:`~smegmesh.core.meshnode.MeshNode` s talk
through the wire codec (joins, gossip, sync sessions, a crash and its prune)
and every message is kept; :func:`_by_type` sorts them by message type,
:func:`_dedup` keeps a spread of at most a few per type.
"""

from __future__ import annotations

import functools
import random
from typing import Any

__all__ = [
    "MESH",
    "STRANGER_SEED",
    "_by_type",
    "_dedup",
    "_founded_corpus",
    "_founded_join_corpus",
    "_mesh_corpus",
    "_sync_exchange",
]


MESH = "amber-falcon-river-k7q2"
#: The identity seed of the stranger the join targets' requests come from.
STRANGER_SEED = b"\x77" * 32


def _capture_net() -> Any:
    """A few MeshNodes talking through the wire codec (the shared driver); every message is kept."""
    from smegmesh.testbed.loopnet import LoopNet

    class _Capture(LoopNet):
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
            return self.attach(node)

    return _Capture()


@functools.cache
def _mesh_corpus() -> tuple[tuple[bytes, ...], Any, bytes, bytes, int]:
    """Messages of a small live mesh (joins, gossip, syncs, a crash and its prune).

    Returns (encoded messages, the first member, a member key, a token secret, the time).
    """
    from smegmesh.core.invite import Bootstrap
    from smegmesh.core.messages import JoinReply, Refusal, WhoAmI, YouAre
    from smegmesh.core.wire import decode, encode

    cap = _capture_net()
    first = cap.add(1)
    cap.handle_outs(first, first.start(0))
    members = [first]
    secret = b""
    for seed in (2, 3, 4):
        node = cap.add(seed)
        token, outs = first.invite(
            cap.now,
            ttl_ms=3_600_000,
            uses=5,
            bootstrap=[Bootstrap("x:1", bytes(32), first.key)],
            secret=bytes([seed]) * 16,
        )
        secret = token.secret
        cap.handle_outs(first, outs)
        req = encode(node.join_request(token.secret, cap.now))
        cap.wire.append(req)
        reply, outs = first.handle_request(node.key, decode(req), cap.now)
        cap.handle_outs(first, outs)
        assert isinstance(reply, JoinReply)
        cap.wire.append(encode(reply))
        cap.handle_outs(node, node.absorb(reply.items, cap.now))
        members.append(node)
        cap.run_until(cap.now + 300)
    cap.run_until(cap.now + 3000)
    # Member 4 crashes: suspicion, then a prune travels.
    cap.down.add(members[-1].key)
    cap.run_until(cap.now + 15000)
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
    return tuple(cap.wire), first, members[1].key, secret, cap.now


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
    from smegmesh.core.codec import Elided
    from smegmesh.core.wire import decode, encode

    out: dict[str, list[bytes]] = {}
    wire, *_ = _mesh_corpus()
    for data in wire:
        msg = decode(data)
        out.setdefault(type(msg).__name__, []).append(data)
        for item in getattr(msg, "items", ()) or ():
            if not isinstance(item, Elided):  # a push's form of an item (in Push seeds)
                out.setdefault(type(item).__name__, []).append(encode(item))
        rec = getattr(msg, "record", None)
        if rec is not None:
            out.setdefault(type(rec).__name__, []).append(encode(rec))
    return out


def _founded_mesh() -> tuple[list[Any], Any, dict[bytes, Any], list[Any], int]:
    """A founded mesh of 8: identities, founding record, chains, records, and a
    time at which its certificates are settled (chains then go by reference)."""
    from smegmesh.core.elide import SETTLED_MS
    from smegmesh.core.identity import NodeIdentity
    from smegmesh.testbed.founded import NOW, Mesh

    ids = [NodeIdentity.from_seed(bytes([0x21 + i]) * 32) for i in range(8)]
    m = Mesh(name="fuzz-founded", founder=ids[0], now=NOW)
    for i, who in enumerate(ids[1:], start=1):
        m.admit(who, ids[(i - 1) // 2])  # chains of a few levels
    recs = [
        m.record(who, m.t + 1, control_endpoint=f"[2001:db8::{i + 1:x}]:4000", tls_fp=bytes(32))
        for i, who in enumerate(ids)
    ]
    return ids, m.founding, m.chains, recs, m.t + SETTLED_MS + 60_000


def _founded_member(who: Any, founding: Any, recs: list[Any], now: int) -> Any:
    """A started MeshNode of ``who`` holding the founded mesh's ``recs`` (none: a joiner)."""
    from smegmesh.core.identity import verify_many
    from smegmesh.core.state import MeshState
    from smegmesh.testbed.founded import member_node

    state = MeshState(founding.mesh_id, admission=True, verifier=verify_many)
    changed, errors = state.apply_many([founding, *recs], now)
    assert not errors and len(changed) == 1 + len(recs), errors  # else the seeds do nothing
    node = member_node(who, founding.mesh_id, state)
    if recs:
        node.start(now)
    return node


@functools.cache
def _founded_join_corpus() -> tuple[tuple[bytes, ...], Any, bytes, int]:
    """A stranger's requests to a member of a founded mesh: joins, a sync.

    Every mesh ``smegctl create`` makes is founded: a join there is checked
    against the token's grant and admitted with a certificate (the token
    ledger), which the unfounded mesh of :func:`_mesh_corpus` never runs.
    Seeds: a join with the token's secret (admitted once: the same join again
    gets the same certificate), one with another secret
    (refused), and a sync start. Returns (encoded requests, the handler node,
    the stranger's key, the time).
    """
    from smegmesh.core.identity import NodeIdentity
    from smegmesh.core.invite import Bootstrap
    from smegmesh.core.sync import SyncSession
    from smegmesh.core.wire import encode

    ids, founding, _chains, recs, now = _founded_mesh()
    node = _founded_member(ids[1], founding, recs, now)
    boot = [Bootstrap("[2001:db8::2]:4000", bytes(32), ids[1].wg_public_key)]
    ttl = 365 * 86_400_000  # the longest an invitation lives
    token, _outs = node.invite(now, ttl_ms=ttl, uses=5, bootstrap=boot, secret=b"\x33" * 16)
    stranger = NodeIdentity.from_seed(STRANGER_SEED)
    joiner = _founded_member(stranger, founding, [], now)
    seeds = (
        encode(joiner.join_request(token.secret, now)),
        encode(joiner.join_request(b"\x34" * 16, now)),
        encode(SyncSession.initiator(joiner.mesh, now, rng=random.Random(2)).start()),
    )
    return seeds, node, stranger.wg_public_key, now


@functools.cache
def _founded_corpus() -> tuple[tuple[bytes, ...], Any, bytes, int]:
    """Pushes to a member of a founded mesh, their items by reference and as deltas.

    Every mesh ``smegctl create`` makes is founded, and its pushes name what
    the receiver holds by reference (``core.elide``) and send a new version of
    a held record as a delta (``core.delta``). The small mesh of
    :func:`_mesh_corpus` is not founded, so none of its pushes carries a
    reference, and its deltas are of versions the handler already holds
    (dropped before any rebuild). The first five seeds are each about a member
    of its own, so running one does not spoil another: a new version by
    reference, a delta (both taken), a delta whose signature fails (rebuilt
    from the held record and refused on every run, never changing the state),
    a prune by reference (taken), and a record by reference whose signature
    fails (rebuilt and refused on every run). The sixth carries the five
    together (the items after its first forgery are refused unchecked).

    Returns (encoded pushes, the handler node, the sender's key, the time).
    """
    from smegmesh.core.delta import delta_of
    from smegmesh.core.elide import elide
    from smegmesh.core.offer import Push
    from smegmesh.core.record import NodeRecord, Prune
    from smegmesh.core.record_model import WIRE_SIGNATURE
    from smegmesh.core.wire import encode

    ids, founding, chains, recs, now = _founded_mesh()
    mesh_id = founding.mesh_id
    node = _founded_member(ids[1], founding, recs, now)

    def later(k: int) -> NodeRecord:
        rec: NodeRecord = recs[k].evolve(ids[k], now, alias=f"n{k}")
        return rec

    def forged(item: Any, at: int) -> Any:  # the signature field replaced
        fields = list(item.fields)
        fields[at] = bytes(64)
        return type(item)(item.kind, tuple(fields))

    prune = Prune.create(
        ids[2], mesh_id, now_ms=now, target_record=recs[6], by_chain=chains[ids[2].wg_public_key]
    )
    items = [
        elide(later(3), now),
        delta_of(later(4), recs[4]),
        forged(delta_of(later(5), recs[5]), 4),  # key id, base, version, time, sig
        elide(prune, now),
        forged(elide(later(7), now), WIRE_SIGNATURE),
    ]
    wire = tuple(encode(Push(mesh_id, (item,))) for item in items)
    return (*wire, encode(Push(mesh_id, tuple(items)))), node, ids[2].wg_public_key, now


def _dedup(seeds: list[bytes], limit: int = 40) -> list[bytes]:
    seen: dict[bytes, None] = {}
    for s in sorted(seeds, key=len):
        seen.setdefault(s, None)
    items = list(seen)
    if len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]
