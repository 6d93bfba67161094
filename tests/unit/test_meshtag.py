"""Requests name their mesh by a short tag to members that take one (core/meshtag.py).

Twenty-second session: every request carried the mesh id, 17-33 bytes (a
probe's whole body is little more). Through the real codec and driver.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from smegmesh.core.addressing import validate_mesh_id
from smegmesh.core.engine import Call, Message, OfferCtx, Out, RequestReceived, Respond
from smegmesh.core.meshtag import MeshTags, mesh_tag
from smegmesh.core.messages import IN_REPLY, Ack, JoinRequest, Ping, PingReq, Refusal
from smegmesh.core.offer import Offer, Push, Want
from smegmesh.core.wire import decode
from smegmesh.daemon.engine_io import EngineIO
from test_meshnode import MESH, converged, mesh_of

KEY = b"\x05" * 32


def _sent(wire: list[bytes]) -> list[object]:
    return [decode(d) for d in wire]


def test_a_tag_is_short_and_never_a_mesh_id() -> None:
    tag = mesh_tag(MESH)
    assert tag.startswith("~") and len(tag) == 9 and tag != mesh_tag(MESH + "x")
    with pytest.raises(ValueError):
        validate_mesh_id(tag)


def test_members_of_this_version_name_the_mesh_by_tag_and_converge() -> None:
    net, nodes = mesh_of(4)
    net.wire.clear()
    net.run_until(net.now + 6000)
    assert converged(nodes)
    requests = [m for m in _sent(net.wire) if isinstance(m, Ping | PingReq | Push | Offer)]
    tagged = [m for m in requests if m.mesh_id == mesh_tag(MESH)]
    assert {type(m).__name__ for m in tagged} >= {"Ping", "Offer"}
    assert len(tagged) >= 0.9 * len(requests)  # the rest: before a member's first answer
    replies = [m for m in _sent(net.wire) if isinstance(m, Ack | Want)]
    assert replies and all(m.mesh_id == IN_REPLY for m in replies)


def test_a_member_that_names_the_mesh_in_its_replies_is_called_in_full() -> None:
    """A node of before this session names the mesh in every reply (and would
    refuse a tag): it is never sent one."""
    net, nodes = mesh_of(3)
    old = nodes[2]
    real = old.step

    def older(inp: object) -> list[Out]:
        outs = real(inp)  # type: ignore[arg-type]
        return [
            Respond(o.request_id, type(o.msg)(MESH, *_rest(o.msg)))
            if isinstance(o, Respond) and isinstance(o.msg, Ack | Want)
            else o
            for o in outs
        ]

    old.step = older  # type: ignore[method-assign]
    for n in nodes:  # what they heard from it while it joined, as a newer node
        n.tags._takers.clear()
    net.wire.clear()
    sent: list[tuple[bytes, Message]] = []
    for n in nodes[:2]:
        named = n.named

        def spy(call: Call, named: object = named) -> Call:
            out = named(call)  # type: ignore[operator]
            sent.append((out.to, out.msg))
            return out

        n.named = spy  # type: ignore[method-assign]
    net.run_until(net.now + 6000)
    assert converged(nodes)
    to_old = [m for to, m in sent if to == old.key]
    to_new = [m for to, m in sent if to != old.key]
    assert to_old and all(getattr(m, "mesh_id", MESH) == MESH for m in to_old)
    assert any(getattr(m, "mesh_id", None) == mesh_tag(MESH) for m in to_new)


def _rest(msg: Ack | Want) -> tuple[object, ...]:
    return (msg.probe_id, msg.ok) if isinstance(msg, Ack) else (msg.keys,)


def test_a_refusal_or_a_new_record_version_calls_in_full_again_and_the_memory_is_bounded() -> None:
    tags = MeshTags(MESH)
    call = Call(KEY, Ping(MESH, 1), None)  # type: ignore[arg-type]
    assert tags.named(call, 5) is call  # not known to take tags
    tags.note_reply(KEY, Ack(MESH, 1), 5)  # an older node's reply
    assert tags.named(call, 5) is call
    tags.note_reply(KEY, Ack(IN_REPLY, 1), 5)
    assert tags.named(call, 5).msg == Ping(tags.tag, 1)
    assert tags.named(call, 6) is call  # restarted since: in full until it answers
    join = Call(KEY, JoinRequest(MESH, bytes(16), None), None)  # type: ignore[arg-type]
    assert tags.named(join, 5) is join
    tags.note_reply(KEY, Refusal(MESH), 5)  # a refusal of a call naming the mesh in full
    assert tags.named(call, 5).msg == Ping(tags.tag, 1)  # says nothing of tags
    tags.note_reply(KEY, Refusal(tags.tag), 5)  # a refusal repeats the mesh as named
    assert tags.named(call, 5) is call
    tags.note_reply(KEY, Ack(IN_REPLY, 1), 5)  # refused once: in full for this version
    assert tags.named(call, 5) is call
    tags.note_reply(KEY, Ack(IN_REPLY, 1), 6)  # restarted: its word counts again
    assert tags.named(call, 6).msg == Ping(tags.tag, 1)
    tags.note_reply(KEY, Ack("", 1), 7)  # an empty reply mesh id says nothing
    assert tags.named(call, 7) is call
    assert tags.untagged(Ping(tags.tag, 3)) == Ping(MESH, 3)
    assert tags.untagged(Ping("other-mesh-id-xxxx", 3)) == Ping("other-mesh-id-xxxx", 3)
    tags.forget(KEY)  # gone from the mesh: nothing kept
    assert KEY not in tags._takers and KEY not in tags._refused


def test_words_are_bounded_and_the_latest_is_forgotten_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review: the bound was checked with keys pushed out in order only, so a
    refreshed word being forgotten first went unseen."""
    monkeypatch.setattr("smegmesh.core.meshtag.MAX_TAKERS", 16)
    tags = MeshTags(MESH)

    def k(i: int) -> bytes:
        return i.to_bytes(32, "big")

    for i in range(15):
        tags.note_reply(k(i), Want(IN_REPLY, ()), 1)
    tags.note_reply(k(0), Want(IN_REPLY, ()), 1)  # a fresh word of the oldest
    tags.note_reply(k(15), Want(IN_REPLY, ()), 1)
    tags.note_reply(k(16), Want(IN_REPLY, ()), 1)  # past the bound: the oldest word goes
    assert len(tags._takers) == 16 and k(0) in tags._takers and k(1) not in tags._takers


def test_a_member_gets_deltas_again_at_its_next_record_version_or_after_it_left() -> None:
    """Review: the record version of a failed push of deltas, and forget, were
    not covered (dropping either passed the unit suite)."""
    tags = MeshTags(MESH)
    tags.note_delta_failed(KEY, 5)
    assert not tags.takes_deltas(KEY, 5) and tags.takes_deltas(KEY, 6)
    tags.forget(KEY)
    assert tags.takes_deltas(KEY, 5)


def test_a_mesh_id_no_longer_than_a_tag_goes_as_it_is() -> None:
    short = MeshTags("sim")
    short.note_reply(KEY, Ack(IN_REPLY, 1), 5)
    c = Call(KEY, Offer("sim", ()), OfferCtx(frozenset()))
    assert short.named(c, 5) is c


def test_the_daemon_finds_its_mesh_by_tag_among_the_callers_and_refuses_an_ambiguous_one() -> None:
    def rt(mesh_id: str, members: set[bytes]) -> SimpleNamespace:
        node = SimpleNamespace(tags=MeshTags(mesh_id), is_member=members.__contains__)
        return SimpleNamespace(node=node)

    a, b = rt(MESH, {KEY}), rt("other-mesh-name-k7q2", {KEY})
    d = SimpleNamespace(meshes={MESH: a, "other-mesh-name-k7q2": b})
    assert EngineIO._mesh_by_tag(d, mesh_tag(MESH), KEY) is a  # type: ignore[arg-type]
    assert EngineIO._mesh_by_tag(d, "~zzzzzzzz", KEY) is None  # type: ignore[arg-type]
    d.meshes["twin"] = rt(MESH, set())  # a mesh with the same tag the caller is not in
    assert EngineIO._mesh_by_tag(d, mesh_tag(MESH), KEY) is a  # type: ignore[arg-type]
    d.meshes["twin"] = rt(MESH, {KEY})  # and one it is in: refused
    assert EngineIO._mesh_by_tag(d, mesh_tag(MESH), KEY) is None  # type: ignore[arg-type]


def test_a_node_answers_a_tagged_request_as_one_naming_the_mesh() -> None:
    net, nodes = mesh_of(3)
    net.run_until(net.now + 3000)
    a, b = nodes[0], nodes[1]
    full, _ = b.handle_request(a.key, Ping(MESH, 9), net.now)
    tagged, _ = b.handle_request(a.key, Ping(mesh_tag(MESH), 9), net.now)
    assert full == tagged == Ack(IN_REPLY, 9)


def test_a_member_that_refuses_tags_is_refused_once_per_record_version() -> None:
    """Review (same session): a member that answers with ``~`` but refuses a
    tagged request (a collision of tags in its meshes) was marked again by its
    next answer and refused again, about every other call, for ever."""
    net, nodes = mesh_of(4)
    mid = nodes[3]
    real = mid.step
    refused: list[str] = []

    def refusing(inp: object) -> list[Out]:
        msg = getattr(inp, "msg", None)
        if isinstance(inp, RequestReceived) and getattr(msg, "mesh_id", "").startswith("~"):
            refused.append(type(msg).__name__)
            return [Respond(inp.request_id, Refusal(msg.mesh_id))]  # type: ignore[union-attr]
        return real(inp)  # type: ignore[arg-type]

    mid.step = refusing  # type: ignore[method-assign]
    for n in nodes:
        n.tags._takers.clear()
    net.run_until(net.now + 30_000)
    assert 1 <= len(refused) <= 3  # one per caller (review: 0 passed too)
    assert all(mid.key in {r.wg_key for r in n.live_records()} for n in nodes[:3])


def test_a_swarm_member_serves_a_request_naming_its_mesh_by_tag() -> None:
    """Review (same session): the swarm refused a request whose mesh id was not
    its own before the engine saw it, so founded swarms refused tags."""
    import asyncio

    from smegmesh.core.wire import encode
    from smegmesh.testbed.swarm_worker import Worker

    async def answered() -> Message:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(Ack(IN_REPLY, 1))
        return await fut

    calls: list[object] = []
    port = SimpleNamespace(request=lambda *a: calls.append(a) or asyncio.ensure_future(answered()))
    worker = SimpleNamespace(
        stats=SimpleNamespace(served=0),
        plan=SimpleNamespace(mesh_id=MESH),
        _drv=lambda m: None,
        _schedule=lambda m: None,
    )
    member = SimpleNamespace(port=port, node=SimpleNamespace(tags=MeshTags(MESH)))

    async def serve(mesh: str) -> object:
        body = encode(Ping(mesh, 1))
        return decode(await Worker._serve(worker, member, KEY, body, None))  # type: ignore[arg-type]

    assert asyncio.run(serve(mesh_tag(MESH))) == Ack(IN_REPLY, 1)
    assert isinstance(asyncio.run(serve("another-mesh-id-k7q2")), Refusal)
    assert len(calls) == 1
