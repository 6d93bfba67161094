"""One node-to-node datagram, sealed and opened (pure: no sockets; issue 14).

Small idempotent calls (a probe and its ack, an in-sync digest pull, a small
push) travel as single UDP datagrams instead of gRPC calls over TLS; see
``daemon/rpc_dgram.py`` for the sockets and docs/TRANSPORT.md for why.

Layout, version 3 (all integers big-endian)::

    header  = magic u8 (0xD3) | kind u8 (1 request, 4 request part, 5 request
              that asks for no answer; replies: 2 ok, 6 "use the stream",
              7 refused) | sender key id (4) | receiver key id (4)
              | nonce (8)                                               -- 18 bytes
    nonce   = send time, ms since the epoch mod 2^32, u32 | counter u32
    sealed  = ChaCha20-Poly1305(key, aead nonce, inner, associated data = header)
    aead nonce = send time u48 (the receiver's clock fills in the upper bits:
              the nearest time to its own) | counter u32 | 0 u16
    inner   = request id u32 | body                    -- 4 bytes; kind 5: body
    part    = body of a request part: index u8 | count u8 | chunk

38 bytes of overhead a datagram, 34 for a request that asks for no answer
(version 2 had 51: 8-byte key ids, a 12-byte nonce of the full time and 48
random bits, and the reply status in a byte of its own; version 1 had 113). A *key
id* is the first 4 bytes of a WireGuard public key: the receiver finds the
sender's full key among its meshes' members (:meth:`StateStore.members_by_id`,
an O(1) look-up in the digest tree's buckets) and its own among its keys; the
AEAD key is derived from the full keys, so an id only *names* a key and proves
nothing. Members whose keys share 4 bytes (one pair in a mesh of ~93,000 by
chance, 0.001 in one of 3,000; 2^32 work to make on purpose) are all tried,
up to :data:`MAX_ID_CANDIDATES`, each within its own limits: one that made
its key to share a member's id costs that member nothing but a second
opening. An id naming more (four made on purpose) is told to use the stream.
The sender is never the receiver: checked on the full keys, once resolved.

The time in the nonce is authenticated (the header is the associated data)
and serves the clock window and replay cache; 32 bits of milliseconds wrap
every 49.7 days, far beyond the clock window, so the receiver knows the full
time. The counter is the sender's (:class:`NonceCounter`): one per datagram client
(requests) and one per server (replies, its top bit set), each from a random
start; a daemon has one of each, so two datagrams one key seals never share
a nonce unless 2^31 go in one millisecond, or the clock steps back and a
fresh random start meets the old one in the same millisecond (2^-31 a
datagram then; so would a second client sealing as the same key).

A request body too large for one datagram (a record with a deep admission
chain, a prune: 1.2-4.7 KB) goes as up to :data:`MAX_PARTS` request parts, each
sealed on its own (own nonce, replay checked), every chunk but the last exactly
:data:`PART_CHUNK` bytes; :class:`Reassembly` joins them, bounded per sender
and in all. Replies are always one datagram.

The key of one direction is ``HKDF-SHA256(X25519(my wg private, their wg
public), info = INFO + sender key + receiver key)``: the two nodes' static
WireGuard keys (the X25519 form of their identities) authenticate both ends,
nothing else is sent. The kind is in the associated data, so a request cannot
be turned into a reply; the direction is in the key, so a datagram cannot be
reflected to its sender. Replays are refused by :class:`~smegmesh.daemon.dgram_replay.ReplayCache`
(``(sender, nonce)`` within the clock window, bounded, with a floor).

A request of kind 5 (:data:`UNANSWERED`) is a push along the dissemination
tree (``core.treecast``) that asks for no answer: the receiver runs it and
sends nothing back, not even a notice. It goes only to a member that said
in an answer that it takes them (``treecast.TAKES_UNANSWERED``) and whose
endpoint answered a datagram lately; a node older than this kind drops it
as not a smegmesh datagram, and the lazy path of the tree repairs the loss.

A version 1 or 2 request (from a node not yet upgraded) is answered with a
"use the stream" notice of its version (``dgram_old.old_notice_for``), so mixed
versions talk over the stream until both ends speak version 3 (a version 3
request to a node of version 2 is dropped unseen there: the call falls back
to the stream after its datagram timeout, and the endpoint is then reached
over the stream, ``rpc_dgram_client``).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = 0xD3
REQUEST = 1
REPLY = 2
REQUEST_PART = 4
UNANSWERED = 5
#: Requests that may ask for no answer (``UNANSWERED``): pushes, one datagram each.
UNANSWERED_REQUESTS = frozenset({"Push"})
#: reply status: 0 ok, 1 "use the stream" (repeat the call over gRPC), 2 refused
OK, USE_STREAM, REFUSED = 0, 1, 2
#: The kind a reply of each status goes as (:data:`REPLY` for "ok"), and back.
REPLY_KINDS = {OK: REPLY, USE_STREAM: 6, REFUSED: 7}
_STATUS_OF = {k: s for s, k in REPLY_KINDS.items()}
_REQUEST_KINDS = (REQUEST, REQUEST_PART, UNANSWERED)
INFO = b"smegmesh datagram v3"
KEY_LEN = 32
#: Bytes of a WireGuard public key that name it in a header.
KEY_ID_LEN = 4
#: Keys one id may name that are tried (members by the sender id, ours by the receiver id).
MAX_ID_CANDIDATES = 4
NONCE_LEN = 8
#: Bytes of the nonce that hold the send time (ms since the epoch, mod 2^32);
#: the rest is the sender's counter.
NONCE_TIME_LEN = 4
#: The counter's bit that is set in replies (requests and replies between two
#: nodes are sealed with one key: their counters never meet).
REPLY_BIT = 1 << 31
TAG_LEN = 16
HEADER = struct.Struct(">BB4s4s8s")  # 18 bytes
INNER = struct.Struct(">I")  # 4 bytes; none in a request that asks for no answer
#: Largest datagram: the IPv6 minimum MTU (1280) minus IPv6 (40) and UDP (8) headers.
MAX_DATAGRAM = 1232
#: Bytes of a datagram besides the body (header, inner header, AEAD tag): 38.
OVERHEAD = HEADER.size + INNER.size + TAG_LEN
#: Largest body one datagram carries: 1,194 bytes.
MAX_BODY = MAX_DATAGRAM - OVERHEAD
PART = struct.Struct(">BB")  # index, count
#: Request bytes per part: 1,192.
PART_CHUNK = MAX_BODY - PART.size
#: Most parts of one request, so the largest request body is 4,768 bytes.
MAX_PARTS = 4
MAX_REQUEST = MAX_PARTS * PART_CHUNK
#: Requests being reassembled, in all and per sender (memory: at most
#: MAX_REASSEMBLING x MAX_REQUEST = 1.2 MB), and how long a part waits for the rest.
MAX_REASSEMBLING = 256
MAX_REASSEMBLING_PER_SENDER = 4
REASSEMBLY_MS = 3000
#: Requests recently completed, remembered so a resent part does not start a new one.
MAX_COMPLETED = 1024
#: IP + UDP header bytes of one datagram on the wire (for the wire accounting).
UDP_IPV4_HEADERS = 28
UDP_IPV6_HEADERS = 48
#: Derived keys kept per (my key, sender, receiver), 32 bytes each (about 250
#: bytes with the directory entry, 8 MB if all are used): both directions of
#: 16,384 nodes, more than ``maxMembers``' default (10,000). (A node pays for
#: the pairs that talk to it: ~1.5 MB at 3,000 members.)
MAX_CACHED_KEYS = 32_768
#: Our own X25519 private keys kept as key objects (one for smegd; a swarm
#: process speaks for many members).
MAX_PRIVATE_KEYS = 4096


class DatagramError(ValueError):
    """A datagram that is not ours, not for us, forged, replayed or out of bounds."""


def key_id(key: bytes) -> bytes:
    """The id a header names a WireGuard public key by: its first :data:`KEY_ID_LEN` bytes."""
    return key[:KEY_ID_LEN]


def full_time(ts32: int, now_ms: int) -> int:
    """The time (ms since the epoch) nearest ``now_ms`` whose low 32 bits are ``ts32``."""
    return now_ms + ((ts32 - now_ms + (1 << 31)) % (1 << 32)) - (1 << 31)


@dataclass(frozen=True, slots=True)
class Header:
    kind: int  # REPLY for a reply of any status
    sender_id: bytes
    receiver_id: bytes
    nonce: bytes
    #: the send time the nonce carries, made whole by the receiver's clock
    #: (ms since the epoch; authenticated once opened)
    ts_ms: int
    #: a reply's status (its kind on the wire); OK for a request
    status: int = OK

    @property
    def aead_nonce(self) -> bytes:
        return _aead_nonce(self.ts_ms, self.nonce)


def _aead_nonce(ts_ms: int, nonce: bytes) -> bytes:
    """The 12-byte ChaCha20-Poly1305 nonce: the full time, the counter, two zero bytes."""
    return ts_ms.to_bytes(6, "big") + nonce[NONCE_TIME_LEN:] + b"\0\0"


@dataclass(frozen=True, slots=True)
class Opened:
    header: Header
    sender: bytes  # the sender's full WireGuard key (resolved from its id)
    receiver: bytes  # ours
    request_id: int
    status: int
    body: bytes

    @property
    def ts_ms(self) -> int:
        return self.header.ts_ms


class NonceCounter:
    """The counter half of the nonces one process seals (see the module doc).

    ``start``: a random 32-bit value (``os.urandom``), so a restarted node
    does not begin where it began before.
    """

    def __init__(self, start: int) -> None:
        self._n = start % REPLY_BIT

    def next(self, kind: int) -> int:
        """The next counter value for a datagram of ``kind`` (replies have :data:`REPLY_BIT`)."""
        self._n = (self._n + 1) % REPLY_BIT
        return self._n | (REPLY_BIT if kind == REPLY else 0)


#: A clear, unauthenticated notice (magic, kind 3, the request's nonce: 10 bytes)
#: a server sends instead of a reply when the sender is not one of its members
#: yet: "I cannot check you: use the stream". Smaller than any request (no
#: amplification), sent within the per-address token bucket. The caller takes
#: it only from the address the request went to and only for that request's
#: nonce (its time and the sender's counter: a member that got a request of
#: ours could guess the next), and all it can do is send the call to the
#: stream, which authenticates the same way.
NOTICE = 3
NOTICE_FMT = struct.Struct(">BB8s")


def notice(nonce: bytes) -> bytes:
    """The "unknown sender: use the stream" notice answering a request with ``nonce``."""
    return NOTICE_FMT.pack(MAGIC, NOTICE, nonce)


def parse_notice(data: bytes) -> bytes | None:
    """The nonce a notice answers, or None if ``data`` is not a notice."""
    if len(data) != NOTICE_FMT.size:
        return None
    magic, kind, nonce = NOTICE_FMT.unpack(data)
    return nonce if magic == MAGIC and kind == NOTICE else None


def request_nonce(data: bytes) -> bytes:
    """The nonce of a datagram this side sealed (to match a notice to its call)."""
    return data[HEADER.size - NONCE_LEN : HEADER.size]


def parse_header(data: bytes, now_ms: int) -> Header:
    """The clear header, bounds checked (no crypto): raises :class:`DatagramError`.

    ``now_ms``: the receiver's clock (ms since the epoch), which makes the
    nonce's 32-bit time whole.
    """
    if not OVERHEAD <= len(data) <= MAX_DATAGRAM:
        raise DatagramError("bad length")
    magic, kind, sender, receiver, nonce = HEADER.unpack_from(data)
    if magic != MAGIC or not (kind in _REQUEST_KINDS or kind in _STATUS_OF):
        raise DatagramError("not a smegmesh datagram")
    ts = full_time(int.from_bytes(nonce[:NONCE_TIME_LEN], "big"), now_ms)
    if not 0 <= ts < 1 << 48:  # a clock near the epoch (no RTC, before NTP)
        raise DatagramError("outside the clock window")
    if kind in _STATUS_OF:
        return Header(REPLY, sender, receiver, nonce, ts, _STATUS_OF[kind])
    return Header(kind, sender, receiver, nonce, ts)


class KeyCache:
    """Derived per-direction keys, bounded LRU: one X25519 per pair of nodes.

    A miss derives both directions of the pair (the request's and its reply's)
    from one X25519; what is kept is the 32-byte key (an AEAD object, with its
    OpenSSL context, is 2.3 KB and takes 0.8 us to make, so one is made per
    use), which keeps a directory of :data:`MAX_CACHED_KEYS` directions at
    about 8 MB. The X25519 form of our own private key is kept per key (making
    it from bytes costs 30 us, two thirds of the exchange).

    ``derivations`` counts the X25519 operations (tests spy on it: nothing a
    stranger sends may reach one).
    """

    def __init__(self, max_entries: int = MAX_CACHED_KEYS) -> None:
        self._max = max_entries
        self._keys: OrderedDict[tuple[bytes, bytes, bytes], bytes] = OrderedDict()
        self._privates: OrderedDict[bytes, X25519PrivateKey] = OrderedDict()
        self.derivations = 0

    def has(self, my_private: bytes, sender: bytes, receiver: bytes) -> bool:
        """Whether the key of this direction is at hand (no X25519 to open or seal)."""
        return (my_private, sender, receiver) in self._keys

    def aead(
        self, my_private: bytes, their_public: bytes, sender: bytes, receiver: bytes
    ) -> ChaCha20Poly1305:
        """The AEAD of the direction ``sender -> receiver`` (one of them is us)."""
        slot = (my_private, sender, receiver)
        key = self._keys.get(slot)
        if key is not None:
            self._keys.move_to_end(slot)
            return ChaCha20Poly1305(key)
        shared = self._exchange(my_private, their_public)
        for a, b in ((receiver, sender), (sender, receiver)):  # the asked-for one last
            k = HKDF(hashes.SHA256(), KEY_LEN, salt=None, info=INFO + a + b).derive(shared)
            self._keys[(my_private, a, b)] = k
            self._keys.move_to_end((my_private, a, b))
        while len(self._keys) > self._max:
            self._keys.popitem(last=False)
        return ChaCha20Poly1305(self._keys[slot])

    def _exchange(self, my_private: bytes, their_public: bytes) -> bytes:
        self.derivations += 1
        priv = self._privates.get(my_private)
        if priv is None:
            priv = X25519PrivateKey.from_private_bytes(my_private)
            self._privates[my_private] = priv
            if len(self._privates) > MAX_PRIVATE_KEYS:
                self._privates.popitem(last=False)
        else:
            self._privates.move_to_end(my_private)
        try:
            shared = priv.exchange(X25519PublicKey.from_public_bytes(their_public))
        except ValueError:  # cryptography refuses an all-zero result (low-order point)
            raise DatagramError("low-order key") from None
        if not any(shared):
            raise DatagramError("low-order key")
        return shared


def seal(
    keys: KeyCache,
    kind: int,
    my_private: bytes,
    sender: bytes,
    receiver: bytes,
    request_id: int,
    ts_ms: int,
    status: int,
    body: bytes,
    counter: NonceCounter,
) -> bytes:
    """One datagram from ``sender`` (us, ``my_private``) to ``receiver`` (full keys)."""
    if len(body) > MAX_BODY:
        raise DatagramError("body too large for a datagram")
    count = counter.next(kind).to_bytes(NONCE_LEN - NONCE_TIME_LEN, "big")
    nonce = (ts_ms % (1 << 32)).to_bytes(NONCE_TIME_LEN, "big") + count
    wire_kind = REPLY_KINDS[status] if kind == REPLY else kind
    header = HEADER.pack(MAGIC, wire_kind, key_id(sender), key_id(receiver), nonce)
    aead = keys.aead(my_private, receiver, sender, receiver)
    inner = body if kind == UNANSWERED else INNER.pack(request_id) + body
    return header + aead.encrypt(_aead_nonce(ts_ms, nonce), inner, header)


def open_sealed(
    keys: KeyCache, data: bytes, header: Header, my_private: bytes, sender: bytes, receiver: bytes
) -> Opened:
    """Decrypt a datagram whose header passed :func:`parse_header` and the caller's
    checks (``receiver``: our key of the header's receiver id; ``sender``: the
    member key of its sender id); raises :class:`DatagramError`."""
    aead = keys.aead(my_private, sender, sender, receiver)
    try:
        inner = aead.decrypt(header.aead_nonce, data[HEADER.size :], data[: HEADER.size])
    except InvalidTag:
        raise DatagramError("forged or corrupt") from None
    if header.kind == UNANSWERED:
        return Opened(header, sender, receiver, 0, OK, inner)
    if len(inner) < INNER.size:
        raise DatagramError("bad length")
    (rid,) = INNER.unpack_from(inner)
    return Opened(header, sender, receiver, rid, header.status, inner[INNER.size :])


#: Who may have sealed a datagram whose ids name several keys: ``(their full
#: key, our key, our private key)``, at most :data:`MAX_ID_CANDIDATES` tried.
Candidate = tuple[bytes, bytes, bytes]


def open_any(
    keys: KeyCache, data: bytes, header: Header, candidates: list[Candidate]
) -> tuple[Opened, Candidate]:
    """The datagram opened by the first candidate whose key opens it, and that
    candidate (at most :data:`MAX_ID_CANDIDATES` AEAD openings); raises
    :class:`DatagramError`."""
    err = DatagramError("forged or corrupt")
    for c in candidates[:MAX_ID_CANDIDATES]:
        theirs, mine, my_private = c
        try:
            return open_sealed(keys, data, header, my_private, theirs, mine), c
        except DatagramError as e:
            err = e
    raise err


def split_request(body: bytes) -> list[bytes]:
    """The part bodies of a request too large for one datagram (at most
    :data:`MAX_PARTS`; raises :class:`DatagramError` if larger)."""
    if not MAX_BODY < len(body) <= MAX_REQUEST:
        raise DatagramError("not a body for request parts")
    chunks = [body[i : i + PART_CHUNK] for i in range(0, len(body), PART_CHUNK)]
    return [PART.pack(i, len(chunks)) + c for i, c in enumerate(chunks)]


def parse_part(body: bytes) -> tuple[int, int, bytes]:
    """``(index, count, chunk)`` of a request part, bounds checked."""
    if len(body) <= PART.size:
        raise DatagramError("bad part")
    index, count = PART.unpack_from(body)
    chunk = body[PART.size :]
    if not 2 <= count <= MAX_PARTS or index >= count:
        raise DatagramError("bad part")
    if index < count - 1 and len(chunk) != PART_CHUNK:
        raise DatagramError("bad part")  # only the last may be short: no slack to fill
    return index, count, chunk


class Reassembly:
    """Request parts joined into requests, bounded (pure: the caller gives the time).

    A partial request waits at most ``ttl_ms``; at most ``per_sender`` per
    sender and ``max_entries`` in all are held (the oldest is dropped for a
    new one). Parts are added only after they were opened and replay checked,
    i.e. from a member, so a sender can fill only its own share.
    """

    def __init__(
        self,
        max_entries: int = MAX_REASSEMBLING,
        per_sender: int = MAX_REASSEMBLING_PER_SENDER,
        ttl_ms: int = REASSEMBLY_MS,
    ) -> None:
        self._max = max_entries
        self._per_sender = per_sender
        self._ttl = ttl_ms
        #: (sender, request id) -> [first part at, count, {index: chunk}], oldest first
        self._partial: OrderedDict[tuple[bytes, int], tuple[int, int, dict[int, bytes]]] = (
            OrderedDict()
        )
        self._by_sender: dict[bytes, int] = {}
        self._completed: OrderedDict[tuple[bytes, int], int] = OrderedDict()
        self.dropped = 0  # partial requests given up (expired or pushed out)

    def __len__(self) -> int:
        return len(self._partial)

    def _drop(self, key: tuple[bytes, int]) -> None:
        del self._partial[key]
        n = self._by_sender[key[0]] - 1
        if n:
            self._by_sender[key[0]] = n
        else:
            del self._by_sender[key[0]]

    def _expire(self, now_ms: int) -> None:
        while self._partial:
            key, (at, _c, _p) = next(iter(self._partial.items()))
            if now_ms - at < self._ttl:
                break
            self._drop(key)
            self.dropped += 1
        while self._completed:
            key, at = next(iter(self._completed.items()))
            if now_ms - at < self._ttl:
                break
            del self._completed[key]

    def add(self, sender: bytes, request_id: int, body: bytes, now_ms: int) -> bytes | None:
        """Add one part (its body); the whole request once its last part is in."""
        index, count, chunk = parse_part(body)
        self._expire(now_ms)
        key = (sender, request_id)
        if key in self._completed:
            return None  # a resent part of a request already answered
        entry = self._partial.get(key)
        if entry is None:
            if self._by_sender.get(sender, 0) >= self._per_sender:
                old = next(k for k in self._partial if k[0] == sender)
                self._drop(old)
                self.dropped += 1
            if len(self._partial) >= self._max:
                self._drop(next(iter(self._partial)))
                self.dropped += 1
            entry = self._partial[key] = (now_ms, count, {})
            self._by_sender[sender] = self._by_sender.get(sender, 0) + 1
        elif entry[1] != count:
            raise DatagramError("bad part")
        parts = entry[2]
        parts[index] = chunk
        if len(parts) < count:
            return None
        self._drop(key)
        self._completed[key] = now_ms
        if len(self._completed) > MAX_COMPLETED:
            self._completed.popitem(last=False)
        return b"".join(parts[i] for i in range(count))
