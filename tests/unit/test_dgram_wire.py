"""The datagram path's seal/open and its checks before crypto (issue 14, daemon/dgram_wire.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dgram_helpers import SentDatagrams, counter, key_ids
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.messages import Ack, Ping, WhoAmI
from smegmesh.core.wire import encode
from smegmesh.daemon import dgram_replay as dr
from smegmesh.daemon import dgram_wire as dw
from smegmesh.daemon.rpc_common import CLOCK_SKEW_MS
from smegmesh.daemon.rpc_dgram import DatagramServer
from smegmesh.daemon.rpc_server import RpcServer
from smegmesh.daemon.rpc_tls import TlsIdentity

A = NodeIdentity.from_seed(b"a" * 32)
B = NodeIdentity.from_seed(b"b" * 32)
C = NodeIdentity.from_seed(b"c" * 32)
BODY = encode(Ping("m", 7))


def _now() -> int:
    return int(time.time() * 1000)


#: One counter for the requests this test module seals, as a client has one.
_COUNTER = counter()


def _req(
    keys: dw.KeyCache, frm: NodeIdentity = A, to: NodeIdentity = B, body: bytes = BODY, ts: int = 0
) -> bytes:
    return dw.seal(
        keys,
        dw.REQUEST,
        frm.wg_private_key,
        frm.wg_public_key,
        to.wg_public_key,
        42,
        ts or _now(),
        0,
        body,
        _COUNTER,
    )


_BY_ID = {dw.key_id(i.wg_public_key): i.wg_public_key for i in (A, B, C)}


def _open(keys: dw.KeyCache, data: bytes, me: NodeIdentity = B) -> dw.Opened:
    h = dw.parse_header(data, int(time.time() * 1000))
    if h.sender_id not in _BY_ID:
        raise dw.DatagramError("unknown sender id")
    return dw.open_sealed(keys, data, h, me.wg_private_key, _BY_ID[h.sender_id], me.wg_public_key)


def test_round_trip_both_ways_and_overhead() -> None:
    ka, kb = dw.KeyCache(), dw.KeyCache()
    data = _req(ka)
    assert len(data) == len(BODY) + dw.OVERHEAD == len(BODY) + 38
    # the keys go by their first 4 bytes; the time rides in the nonce
    h = dw.parse_header(data, int(time.time() * 1000))
    assert (h.sender_id, h.receiver_id) == (A.wg_public_key[:4], B.wg_public_key[:4])
    assert abs(h.ts_ms - _now()) < 5000
    o = _open(kb, data)
    assert (o.request_id, o.status, o.body, o.sender) == (42, 0, BODY, A.wg_public_key)
    reply = dw.seal(
        kb,
        dw.REPLY,
        B.wg_private_key,
        B.wg_public_key,
        A.wg_public_key,
        42,
        _now(),
        0,
        b"ok",
        counter(),
    )
    back = _open(ka, reply, A)
    assert (back.header.kind, back.body) == (dw.REPLY, b"ok")
    # X25519 once per pair (both directions from it), not per datagram
    _open(kb, _req(ka))
    assert kb.derivations == 1 and ka.derivations == 1


@pytest.mark.parametrize("where", [0, 1, 3, 7, 10, 14, 17, 20, -1])
def test_tampered_header_or_ciphertext_is_refused(where: int) -> None:
    data = bytearray(_req(dw.KeyCache()))
    data[where] ^= 1
    with pytest.raises(dw.DatagramError):
        _open(dw.KeyCache(), bytes(data))


def test_wrong_receiver_key_cannot_open() -> None:
    data = _req(dw.KeyCache(), to=B)
    with pytest.raises(dw.DatagramError, match="forged"):
        dw.open_sealed(
            dw.KeyCache(),
            data,
            dw.parse_header(data, int(time.time() * 1000)),
            C.wg_private_key,
            A.wg_public_key,
            C.wg_public_key,
        )


def test_request_reflected_as_reply_or_to_its_sender_is_refused() -> None:
    data = _req(dw.KeyCache())
    as_reply = bytearray(data)
    as_reply[1] = dw.REPLY  # the kind is authenticated (associated data)
    with pytest.raises(dw.DatagramError):
        _open(dw.KeyCache(), bytes(as_reply))
    # Reflected to A (its sender), sender/receiver swapped: the direction is in the key.
    h = dw.parse_header(data, int(time.time() * 1000))
    swapped = data[:2] + h.receiver_id + h.sender_id + data[10:]
    with pytest.raises(dw.DatagramError):
        _open(dw.KeyCache(), swapped, A)
    # As it is, to A: not for A.
    with pytest.raises(dw.DatagramError):
        dw.open_sealed(dw.KeyCache(), data, h, A.wg_private_key, A.wg_public_key, B.wg_public_key)


def test_replay_and_clock_window_are_refused() -> None:
    cache = dr.ReplayCache(CLOCK_SKEW_MS)
    o = _open(dw.KeyCache(), _req(dw.KeyCache()))
    cache.check(o.sender, o.header.nonce, o.ts_ms, _now())
    with pytest.raises(dw.DatagramError, match="replayed"):
        cache.check(o.sender, o.header.nonce, o.ts_ms, _now())
    old = _open(dw.KeyCache(), _req(dw.KeyCache(), ts=_now() - CLOCK_SKEW_MS - 1000))
    with pytest.raises(dw.DatagramError, match="clock window"):
        cache.check(old.sender, old.header.nonce, old.ts_ms, _now())
    future = _open(dw.KeyCache(), _req(dw.KeyCache(), ts=_now() + CLOCK_SKEW_MS + 1000))
    with pytest.raises(dw.DatagramError, match="clock window"):
        cache.check(future.sender, future.header.nonce, future.ts_ms, _now())


def test_replay_cache_stays_bounded_under_a_flood_and_the_floor_refuses_older() -> None:
    cache = dr.ReplayCache(CLOCK_SKEW_MS, max_entries=100)
    now = _now()
    first = (A.wg_public_key, b"\x00" * 12, now - 5000)
    cache.check(*first, now)
    for i in range(1, 1000):
        cache.check(A.wg_public_key, i.to_bytes(12, "big"), now - 5000 + i, now)
        assert len(cache) <= 100
    assert cache.floor_of(A.wg_public_key) >= now - 5000 + 899
    # The first nonce fell out of the cache, but its replay is below the floor.
    with pytest.raises(dw.DatagramError, match="floor"):
        cache.check(*first, now)
    cache.check(A.wg_public_key, b"\xff" * 12, now, now)  # fresh ones still pass
    # Entries leave once their timestamp leaves the window.
    later = now + CLOCK_SKEW_MS + 10_000
    cache.check(A.wg_public_key, b"\xfe" * 12, later, later)
    assert len(cache) == 1


def test_oversize_and_malformed_are_refused_before_crypto() -> None:
    with pytest.raises(dw.DatagramError, match="too large"):
        _req(dw.KeyCache(), body=b"x" * (dw.MAX_BODY + 1))
    assert len(_req(dw.KeyCache(), body=encode(Ping("m" * 60, 1)))) <= dw.MAX_DATAGRAM
    for bad in (b"", b"SMD", _req(dw.KeyCache()) + b"x" * dw.MAX_DATAGRAM, b"XYZ" + bytes(120)):
        with pytest.raises(dw.DatagramError):
            dw.parse_header(bad, int(time.time() * 1000))


def test_a_clock_near_the_epoch_refuses_a_datagram_and_raises_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: on a node whose clock is near the epoch (no RTC, before
    NTP), a 32-bit time made whole came out negative, and building the AEAD
    nonce raised OverflowError out of ``datagram_received``. It is refused."""
    from smegmesh.daemon import rpc_dgram

    with pytest.raises(dw.DatagramError, match="clock window"):
        dw.parse_header(_req(dw.KeyCache(), ts=(1 << 32) - 16), 5)
    monkeypatch.setattr(rpc_dgram, "_wall_ms", lambda: 5)
    srv = _server({A.wg_public_key})
    srv.datagram_received(_req(dw.KeyCache(), ts=(1 << 32) - 16), ("192.0.2.9", 9))
    assert srv.stats.refused["outside the clock window"] == 1


def test_a_datagram_from_our_own_key_is_refused_on_the_full_keys() -> None:
    """The sender is never the receiver, checked once the ids are resolved to
    full keys (version 3: two keys that share a 4-byte id are not one)."""
    srv = _server({A.wg_public_key, B.wg_public_key})
    srv.datagram_received(_req(dw.KeyCache(), frm=B, to=B), ("192.0.2.9", 9))
    assert srv.stats.refused["sender is the receiver"] == 1 and srv.keys.derivations == 0


def test_a_version_1_request_gets_a_version_1_notice_and_costs_no_crypto() -> None:
    """A node not upgraded yet (80-byte header, magic SMD) is told at once to use
    the stream, in its own format, within the token bucket; it is never answered
    with anything else."""
    srv = _server({A.wg_public_key})
    out = SentDatagrams()
    srv.connection_made(out)  # type: ignore[arg-type]
    nonce = os.urandom(12)
    v1 = b"SMD\x01" + A.wg_public_key + B.wg_public_key + nonce + os.urandom(60)
    srv.datagram_received(v1, ("192.0.2.11", 4000))
    assert out.sent == [(b"SMD\x03" + nonce, ("192.0.2.11", 4000))]
    assert srv.stats.refused["older version"] == 1 and srv.keys.derivations == 0
    # a reply-kind or short v1 datagram gets nothing
    for other in (b"SMD\x02" + v1[4:], v1[:100]):
        srv.datagram_received(other, ("192.0.2.11", 4000))
    assert len(out.sent) == 1
    # and the notice is never larger than what it answers (no amplification)
    assert len(out.sent[0][0]) < len(v1) and dw.NOTICE_FMT.size < dw.OVERHEAD


def test_a_version_2_request_gets_a_version_2_notice_and_costs_no_crypto() -> None:
    """Thirty-second session: version 3 (18-byte header) replaced version 2
    (30 bytes: 8-byte key ids, 12-byte nonce). A node of version 2 is told in
    its own format (magic 0xD2, kind 3, its 12-byte nonce) to use the stream."""
    srv = _server({A.wg_public_key})
    out = SentDatagrams()
    srv.connection_made(out)  # type: ignore[arg-type]
    nonce = os.urandom(12)
    v2 = b"\xd2\x01" + A.wg_public_key[:8] + B.wg_public_key[:8] + nonce + os.urandom(40)
    srv.datagram_received(v2, ("192.0.2.12", 4000))
    assert out.sent == [(b"\xd2\x03" + nonce, ("192.0.2.12", 4000))]
    assert srv.stats.refused["older version"] == 1 and srv.keys.derivations == 0
    for other in (b"\xd2\x02" + v2[2:], v2[:50]):  # a reply, or shorter than any request
        srv.datagram_received(other, ("192.0.2.12", 4000))
    assert len(out.sent) == 1 and len(out.sent[0][0]) < len(v2)


def test_the_nonce_carries_32_bits_of_time_made_whole_by_the_receivers_clock() -> None:
    """The 32-bit time wraps every 49.7 days: the receiver takes the time nearest
    its own clock, so a datagram sent just before a wrap opens just after it,
    and one sent outside the clock window is still known to be so."""
    wrap = (1 << 32) * 400  # a time whose low 32 bits are 0 (in 2024)
    for sent, now in ((wrap - 3, wrap + 2), (wrap + 2, wrap - 3), (_now(), _now() + 1)):
        assert dw.full_time(sent % (1 << 32), now) == sent
    data = _req(dw.KeyCache(), ts=wrap - 3)
    h = dw.parse_header(data, wrap + 2)
    assert h.ts_ms == wrap - 3
    o = dw.open_sealed(dw.KeyCache(), data, h, B.wg_private_key, A.wg_public_key, B.wg_public_key)
    assert o.body == BODY
    far = dw.parse_header(_req(dw.KeyCache(), ts=wrap - 3 * CLOCK_SKEW_MS), wrap)
    assert far.ts_ms == wrap - 3 * CLOCK_SKEW_MS  # the replay cache refuses it by time


def test_nonces_one_process_seals_never_repeat_and_replies_have_their_own() -> None:
    """Requests and replies between two nodes are sealed with one key: the
    counter's top bit keeps them apart, and within a millisecond it counts."""
    c = dw.NonceCounter((1 << 32) - 2)  # a random start near the end: it wraps
    got = [c.next(dw.REQUEST) for _ in range(5)] + [c.next(dw.REPLY) for _ in range(5)]
    assert len(set(got)) == 10
    assert all(n < dw.REPLY_BIT for n in got[:5]) and all(n >= dw.REPLY_BIT for n in got[5:])
    ka = dw.KeyCache()
    same_ms = [_req(ka, ts=1_700_000_000_000) for _ in range(1000)]
    assert len({dw.request_nonce(d) for d in same_ms}) == 1000


def test_low_order_public_key_is_refused() -> None:
    with pytest.raises(dw.DatagramError, match="low-order"):
        dw.KeyCache().aead(A.wg_private_key, bytes(32), bytes(32), A.wg_public_key)


def _server(member: set[bytes]) -> DatagramServer:
    async def handler(_src: bytes, _body: bytes) -> bytes:
        raise AssertionError("never reached")

    rpc = RpcServer(TlsIdentity.generate(), handler)
    return DatagramServer(rpc, key_ids(B, *member))


def test_stranger_garbage_and_strays_cost_no_x25519() -> None:
    srv = _server({A.wg_public_key})
    addr = ("192.0.2.7", 4000)
    stranger = _req(dw.KeyCache(), frm=C)
    not_ours = _req(dw.KeyCache(), to=C)
    for data in (stranger, not_ours, b"garbage" * 20, os.urandom(500)):
        srv.datagram_received(data, addr)
    assert srv.keys.derivations == 0
    assert srv.stats.refused["not a member"] == 1
    assert srv.stats.refused["not for us"] == 1
    assert sum(srv.stats.refused.values()) == 4
    # A member's forged datagram does reach the key derivation (once per pair).
    forged = bytearray(_req(dw.KeyCache()))
    forged[-1] ^= 1
    srv.datagram_received(bytes(forged), addr)
    assert srv.keys.derivations == 1 and srv.stats.refused["forged or corrupt"] == 1


def test_token_bucket_per_source_address_bounds_crypto_work() -> None:
    srv = _server({A.wg_public_key})
    junk = bytearray(_req(dw.KeyCache()))
    junk[-1] ^= 1
    for _ in range(1000):
        srv.datagram_received(bytes(junk), ("192.0.2.8", 4000))
    assert srv.stats.refused["rate limited"] >= 700
    assert srv.stats.refused["forged or corrupt"] <= 300


def test_server_answers_a_fresh_request_once_and_a_replay_never() -> None:
    calls: list[bytes] = []

    async def handler(src: bytes, body: bytes) -> bytes:
        calls.append(src)
        return encode(Ack("m", 7))

    async def main() -> None:
        rpc = RpcServer(TlsIdentity.generate(), handler)
        srv = DatagramServer(rpc, key_ids(B, A))
        out = SentDatagrams()
        srv.connection_made(out)  # type: ignore[arg-type]
        data = _req(dw.KeyCache())
        for _ in range(3):
            srv.datagram_received(data, ("192.0.2.9", 5000))
        while srv._tasks:
            await asyncio.gather(*srv._tasks)
        assert calls == [A.wg_public_key]  # executed once
        assert srv.stats.refused["replayed"] == 2
        assert len(out.sent) == 1  # one reply, to the source address, sealed back to A
        reply, addr = out.sent[0]
        assert addr == ("192.0.2.9", 5000)
        o = _open(dw.KeyCache(), reply, A)
        assert (o.header.kind, o.status, o.request_id, o.body) == (
            dw.REPLY,
            dw.OK,
            42,
            encode(Ack("m", 7)),
        )
        assert rpc.calls_in_flight == 0

    asyncio.run(main())


def test_server_says_use_the_stream_for_other_types_without_running_them() -> None:
    async def handler(_src: bytes, _body: bytes) -> bytes:
        raise AssertionError("a non-whitelisted request must not run")

    async def main() -> None:
        rpc = RpcServer(TlsIdentity.generate(), handler)
        srv = DatagramServer(rpc, key_ids(B, A))
        out = SentDatagrams()
        srv.connection_made(out)  # type: ignore[arg-type]
        join_like = encode(WhoAmI("m"))  # small, but not idempotent-whitelisted
        srv.datagram_received(_req(dw.KeyCache(), body=join_like), ("192.0.2.9", 5000))
        assert not srv._tasks
        (reply, _addr), *_ = out.sent
        o = _open(dw.KeyCache(), reply, A)
        assert (o.status, o.body) == (dw.USE_STREAM, b"")

    asyncio.run(main())


@settings(max_examples=300, deadline=None)
@given(
    junk=st.binary(max_size=1400),
    head=st.sampled_from(
        [
            b"",
            b"\xd3\x01",
            b"\xd3\x02",
            b"\xd3\x04" + A.wg_public_key[:4],
            b"\xd3\x01" + A.wg_public_key[:4] + B.wg_public_key[:4],
            b"\xd3\x05" + A.wg_public_key[:4] + B.wg_public_key[:4],
            b"\xd2\x01" + A.wg_public_key[:8] + B.wg_public_key[:8],
            b"SMD\x01" + A.wg_public_key,
        ]
    ),
)
def test_any_bytes_are_dropped_without_an_exception(junk: bytes, head: bytes) -> None:
    srv = _server({A.wg_public_key})
    data = head + junk
    srv.datagram_received(data, ("192.0.2.10", 4000))  # never raises, never answers
    assert sum(srv.stats.refused.values()) == 1
    with contextlib.suppress(dw.DatagramError):  # only ever this error
        dw.parse_header(data, int(time.time() * 1000))


# -- requests in parts -----------------------------------------------------------


def test_split_and_join_a_request_in_parts() -> None:
    body = os.urandom(3 * dw.PART_CHUNK + 5)
    parts = dw.split_request(body)
    assert len(parts) == 4 and all(len(p) <= dw.MAX_BODY for p in parts)
    r = dw.Reassembly()
    # out of order, each added once: joined when the last one is in
    assert [r.add(A.wg_public_key, 9, p, 0) for p in (parts[2], parts[0], parts[3])] == [None] * 3
    assert r.add(A.wg_public_key, 9, parts[1], 1) == body
    assert len(r) == 0
    # a resent part of the answered request starts nothing
    assert r.add(A.wg_public_key, 9, parts[0], 2) is None and len(r) == 0
    with pytest.raises(dw.DatagramError):
        dw.split_request(os.urandom(dw.MAX_REQUEST + 1))
    with pytest.raises(dw.DatagramError):
        dw.split_request(BODY)  # one datagram carries it


@pytest.mark.parametrize(
    "part",
    [
        dw.PART.pack(0, 1) + b"x",  # one part is no request in parts
        dw.PART.pack(0, dw.MAX_PARTS + 1) + b"x" * dw.PART_CHUNK,  # too many parts
        dw.PART.pack(2, 2) + b"x",  # index past the count
        dw.PART.pack(0, 2) + b"x" * 10,  # a short chunk before the last: slack
        dw.PART.pack(0, 2),  # no chunk
        b"\x00",
    ],
)
def test_malformed_parts_are_refused(part: bytes) -> None:
    with pytest.raises(dw.DatagramError):
        dw.Reassembly().add(A.wg_public_key, 1, part, 0)


def test_reassembly_is_bounded_per_sender_in_all_and_in_time() -> None:
    """A member that sends first parts only holds at most its own share, and a
    partial request is given up after REASSEMBLY_MS."""
    first = dw.split_request(os.urandom(2 * dw.PART_CHUNK))[0]
    r = dw.Reassembly(max_entries=5, per_sender=2, ttl_ms=1000)
    for rid in range(10):  # a bad member floods first parts
        r.add(A.wg_public_key, rid, first, 0)
    assert len(r) == 2
    r.add(B.wg_public_key, 1, first, 0)
    for rid in range(10):
        r.add(C.wg_public_key, rid, first, 0)
    assert len(r) == 5  # A 2, B 1, C 2: B's partial request survived both floods
    assert r.dropped == 16
    # a count that disagrees with the first part is refused
    with pytest.raises(dw.DatagramError):
        r.add(B.wg_public_key, 1, dw.split_request(os.urandom(3 * dw.PART_CHUNK))[1], 0)
    whole = os.urandom(2 * dw.PART_CHUNK)
    parts = dw.split_request(whole)
    r.add(B.wg_public_key, 2, parts[0], 10)  # full: the oldest partial (A's) makes room
    assert len(r) == 5 and r.dropped == 17
    assert r.add(B.wg_public_key, 2, parts[1], 900) == whole
    assert r.add(B.wg_public_key, 1, dw.split_request(os.urandom(2 * dw.PART_CHUNK))[1], 900)
    r.add(A.wg_public_key, 50, first, 1500)  # everything older than 1 s has expired
    assert len(r) == 1


def test_a_replys_status_is_its_kind_and_an_unanswered_request_has_no_inner_header() -> None:
    """Version 3: a reply's status rides in the kind byte (2 ok, 6 use the
    stream, 7 refused), authenticated as the header is; a request that asks
    for no answer carries no request id: 38 and 34 bytes of overhead."""
    ka, kb = dw.KeyCache(), dw.KeyCache()
    for status, kind in ((dw.OK, 2), (dw.USE_STREAM, 6), (dw.REFUSED, 7)):
        reply = dw.seal(
            kb, dw.REPLY, B.wg_private_key, B.wg_public_key, A.wg_public_key, 9,
            _now(), status, b"r", _COUNTER,
        )  # fmt: skip
        assert reply[1] == kind and len(reply) == 1 + dw.OVERHEAD
        o = _open(ka, reply, A)
        assert (o.header.kind, o.status, o.request_id, o.body) == (dw.REPLY, status, 9, b"r")
        forged = bytearray(reply)
        forged[1] = 2 if kind != 2 else 7  # another status: the tag fails
        with pytest.raises(dw.DatagramError):
            _open(ka, bytes(forged), A)
    push = dw.seal(
        ka, dw.UNANSWERED, A.wg_private_key, A.wg_public_key, B.wg_public_key, 0,
        _now(), dw.OK, BODY, _COUNTER,
    )  # fmt: skip
    assert len(push) == len(BODY) + dw.OVERHEAD - dw.INNER.size == len(BODY) + 34
    o = _open(kb, push)
    assert (o.header.kind, o.request_id, o.body) == (dw.UNANSWERED, 0, BODY)
