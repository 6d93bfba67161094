"""Answering DNS messages for ``smeg.`` from a :class:`NameView`: bytes in, bytes out (no I/O).

Hot path: a plain query (one question, class IN, uncompressed name, optional
well-formed OPT record) is parsed by hand and answered from a per-view cache of
rendered wire bodies keyed by (lower-cased qname, qtype); the response is the
client's id and flags, the client's own question bytes (so case is echoed
exactly), then the cached answer/authority bytes, whose compression pointers
only depend on the question's length, which the key fixes. Anything unusual is
handed to dnspython (:func:`dns.message.from_wire`), which also renders cache
misses. Malformed input never raises out of :meth:`Answerer.answer`: FORMERR
when a header with an id is there, silence otherwise (and never an answer to a
response). The sockets are in :mod:`smegmesh.dns.server`.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from smegmesh.dns.names import DEFAULT_TTL, Answer, NameView, Record, resolve

__all__ = [
    "OUR_PAYLOAD",
    "UDP_PLAIN_LIMIT",
    "Answerer",
    "DnsStats",
    "Forward",
    "answer_rcode",
    "formerr",
    "to_wire",
]

log = logging.getLogger("smegmesh.dns")

_TCP_SNDBUF = 65536 + 2

_HDR = struct.Struct("!HHHHHH")
_U16 = struct.Struct("!H")
_QTAIL = struct.Struct("!HH")
_COUNTS = struct.Struct("!HHHH")  # question, answer, authority, additional
_OPT = struct.Struct("!HHIH")  # type, payload size, ttl (ext-rcode, version, flags), rdlen

_QR = 0x8000
_OPCODE = 0x7800
_AA = 0x0400
_TC = 0x0200
_RD = 0x0100
_RA = 0x0080
_DO = 0x8000  # in the OPT ttl's low 16 bits
_RCODE_FORMERR = 1
_RCODE_NOTIMP = 4
#: The largest query answered (a question, one OPT record and its options fit in
#: a few hundred bytes; EDNS padding of a query is a block of 128).
MAX_QUERY_BYTES = 4096
_RCODE_SERVFAIL = 2

UDP_PLAIN_LIMIT = 512
#: EDNS payload size we advertise and honour at most (the DNS flag day 2020 value).
OUR_PAYLOAD = 1232
_OPT_NO_DO = b"\x00" + _OPT.pack(41, OUR_PAYLOAD, 0, 0)
_OPT_DO = b"\x00" + _OPT.pack(41, OUR_PAYLOAD, _DO, 0)

# Question types the fast path leaves to _answer_parsed (refused or FORMERR there).
_SPECIAL_QTYPES = frozenset({41, 249, 250, 251, 252})

ViewSource = NameView | Callable[[], NameView]


@dataclass(slots=True)
class DnsStats:
    """Counters, mostly for tests and debugging (the hot path only bumps ``cached``)."""

    cached: int = 0
    rendered: int = 0
    slow: int = 0
    malformed: int = 0
    dropped: int = 0
    forwarded: int = 0
    forward_failed: int = 0
    truncated: int = 0
    send_failed: int = 0
    #: answers sent, by response code (index = the 12-bit RCODE: BADVERS is 16): one
    #: list bump per answer
    rcodes: list[int] = field(default_factory=lambda: [0] * 4096)

    def count_answer(self, data: bytes) -> None:
        """Count answer ``data`` under its response code (:func:`answer_rcode`)."""
        if len(data) >= _HDR.size:
            self.rcodes[answer_rcode(data)] += 1


def answer_rcode(data: bytes) -> int:
    """The full RCODE of answer ``data`` (at least a header): the header's 4 bits and
    the 8 extended bits of its OPT record, if it has one. BADVERS (16) is header
    RCODE 0 with extended bits 1: read from the header alone it is NOERROR.

    An extended code is read from an OPT record found by walking the records
    (bounded by the answer's length): a forwarded answer's last bytes may be a
    record's data that only look like one. Ours end with an OPT record of no
    options and extended code 0 (all but BADVERS): those bytes say 0 at once.
    """
    code = data[3] & 0x0F
    qd, an, ns, ar = _COUNTS.unpack_from(data, 4)
    if not ar or (data[-11:-8] == b"\x00\x00\x29" and data[-6] == 0 and data[-2:] == b"\0\0"):
        return code
    try:
        i = 12
        for _ in range(qd):
            i = _past_name(data, i) + 4
        for n in range(an + ns + ar):
            i = _past_name(data, i)
            rtype, _cls, ttl, rdlen = _OPT.unpack_from(data, i)
            if rtype == 41 and n >= an + ns:
                return code | int(ttl >> 24) << 4
            i += 10 + rdlen
    except (IndexError, struct.error):
        pass  # cut short: the header's code
    return code


def _past_name(data: bytes, i: int) -> int:
    """Where the (wire, maybe compressed) name at ``i`` of ``data`` ends."""
    while (ln := data[i]) != 0:
        if ln >= 0xC0:
            return i + 2
        i += ln + 1
    return i + 1


@dataclass(frozen=True, slots=True)
class _Cached:
    flags: int  # QR|AA|rcode, without the client's RD
    ancount: int
    nscount: int
    body: bytes  # answer + authority sections, after the question


class Forward:
    """Marker: the query must be sent to the forwarder (``data`` is the client's query)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def formerr(qid: int, flags: int) -> bytes:
    """A FORMERR reply header for query id ``qid`` with the query's ``flags``."""
    return _HDR.pack(qid, _QR | (flags & (_OPCODE | _RD)) | _RCODE_FORMERR, 0, 0, 0, 0)


def _rrsets(records: tuple[Record, ...]) -> list[dns.rrset.RRset]:
    groups: dict[tuple[str, int], list[Record]] = {}
    for rec in records:
        groups.setdefault((rec.name, rec.rtype), []).append(rec)
    out = []
    for (name, rtype), recs in groups.items():
        out.append(
            dns.rrset.from_text_list(
                name,
                recs[0].ttl,
                dns.rdataclass.IN,
                dns.rdatatype.RdataType.make(rtype),
                [r.data for r in recs],
            )
        )
    return out


def to_wire(
    response: dns.message.Message, query: dns.message.Message, tcp: bool, stats: DnsStats
) -> bytes:
    """Render ``response`` within the size the query allows (TC and empty sections if over)."""
    if tcp:
        limit = 65535
    elif query.edns >= 0:
        limit = max(UDP_PLAIN_LIMIT, min(query.payload, OUR_PAYLOAD))
    else:
        limit = UDP_PLAIN_LIMIT
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        stats.truncated += 1
        response.answer = []
        response.authority = []
        response.additional = []
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)


class Answerer:
    """The zone's answers, cached as rendered wire bodies per view.

    ``view_provider`` is either a :class:`NameView` (swap it with :meth:`update`
    when mesh state changes: the cheaper way) or a zero-argument callable
    returning the current view, called once per query (the cache is dropped
    when it returns a different object). With ``forwarding``, names outside
    our zones give a :class:`Forward` marker instead of REFUSED.
    """

    def __init__(
        self,
        view_provider: ViewSource,
        *,
        ttl: int = DEFAULT_TTL,
        forwarding: bool = False,
        cache_size: int = 65536,
        stats: DnsStats | None = None,
    ) -> None:
        if isinstance(view_provider, NameView):
            self._view: NameView = view_provider
            self._provider: Callable[[], NameView] | None = None
        else:
            self._provider = view_provider
            self._view = view_provider()
        self.ttl = int(ttl)
        self.forwarding = forwarding
        self.cache_size = cache_size
        self.stats = stats if stats is not None else DnsStats()
        self._cache: dict[bytes, _Cached] = {}

    def update(self, view: NameView) -> None:
        """Atomically switch to ``view`` (visible to the next query).

        Call it from the event loop's thread (e.g. from the daemon's state-change
        callback), like every other method.
        """
        self._provider = None
        self._view = view
        self._cache = {}

    @property
    def view(self) -> NameView:
        return self._current_view()

    def _current_view(self) -> NameView:
        provider = self._provider
        if provider is not None:
            view = provider()
            if view is not self._view:
                self._view = view
                self._cache = {}
        return self._view

    # The hot path stays one function on purpose: a call per step costs more than the answer.
    def answer(self, data: bytes, *, tcp: bool) -> bytes | Forward | None:  # noqa: C901
        """Answer one DNS message: response bytes, a forward marker, or None (drop)."""
        if self._provider is not None:
            self._current_view()
        n = len(data)
        if n < 17 or n > MAX_QUERY_BYTES:
            return self._slow(data, tcp)
        qid, flags, qd, an, ns, ar = _HDR.unpack_from(data)
        if flags & (_QR | _OPCODE) or qd != 1 or an or ns or ar > 1:
            return self._slow(data, tcp)
        # Question name: uncompressed labels only.
        i = 12
        ln = data[i]
        while ln:
            if ln > 63:
                return self._slow(data, tcp)
            i += ln + 1
            if i >= n:
                return self._slow(data, tcp)
            ln = data[i]
        nend = i + 1
        qend = nend + 4
        if qend > n or nend - 12 > 255 or data[nend + 2 : qend] != b"\x00\x01":
            return self._slow(data, tcp)
        if ar:
            # One OPT record, version 0, well-formed options, nothing after it.
            if n < qend + 11 or data[qend] != 0:
                return self._slow(data, tcp)
            otype, payload, ottl, rdlen = _OPT.unpack_from(data, qend + 1)
            j = qend + 11
            if otype != 41 or ottl & 0x00FF0000 or j + rdlen != n:
                return self._slow(data, tcp)
            while j < n:
                if j + 4 > n:
                    return self._slow(data, tcp)
                j += 4 + _U16.unpack_from(data, j + 2)[0]
            if j != n:
                return self._slow(data, tcp)
            opt = _OPT_DO if ottl & _DO else _OPT_NO_DO
            limit = 65535 if tcp else max(UDP_PLAIN_LIMIT, min(payload, OUR_PAYLOAD))
        elif qend != n:
            return self._slow(data, tcp)
        else:
            opt = b""
            limit = 65535 if tcp else UDP_PLAIN_LIMIT
        key = data[12:nend].lower() + data[nend : nend + 2]
        cached = self._cache.get(key)
        if cached is None:
            if _U16.unpack_from(data, nend)[0] in _SPECIAL_QTYPES:
                return self._slow(data, tcp)
            cached = self._render_miss(data, nend)
            if cached is None:
                return Forward(data)
        else:
            self.stats.cached += 1
        question = data[12:qend]
        out = (
            _HDR.pack(
                qid,
                cached.flags | (flags & _RD),
                1,
                cached.ancount,
                cached.nscount,
                1 if opt else 0,
            )
            + question
            + cached.body
            + opt
        )
        if len(out) > limit:
            self.stats.truncated += 1
            out = (
                _HDR.pack(qid, cached.flags | _TC | (flags & _RD), 1, 0, 0, 1 if opt else 0)
                + question
                + opt
            )
        return out

    def _render_miss(self, data: bytes, nend: int) -> _Cached | None:
        """Resolve and render a fast-path query not in the cache (None: forward it)."""
        labels = []
        i = 12
        ln = data[i]
        while ln:
            labels.append(data[i + 1 : i + 1 + ln])
            i += ln + 1
            ln = data[i]
        labels.append(b"")
        qname = dns.name.Name(labels)
        qtype = _U16.unpack_from(data, nend)[0]
        ans = resolve(self._view, qname.to_text(), qtype, ttl=self.ttl)
        if not ans.authoritative and self.forwarding:
            return None
        msg = dns.message.Message(id=0)
        msg.flags = dns.flags.QR | (dns.flags.AA if ans.authoritative else 0)
        if self.forwarding:
            msg.flags |= dns.flags.RA
        msg.set_rcode(dns.rcode.Rcode(ans.rcode))
        msg.question = [dns.rrset.RRset(qname, dns.rdataclass.IN, qtype)]
        msg.answer = _rrsets(ans.answer)
        msg.authority = _rrsets(ans.authority)
        wire = msg.to_wire()
        _, rflags, _, ancount, nscount, _ = _HDR.unpack_from(wire)
        body = wire[nend + 4 :]
        cached = _Cached(rflags, ancount, nscount, body)
        self.stats.rendered += 1
        cache = self._cache
        if len(cache) >= self.cache_size:
            cache.clear()
        cache[data[12:nend].lower() + data[nend : nend + 2]] = cached
        return cached

    def _slow(self, data: bytes, tcp: bool) -> bytes | Forward | None:
        """Anything the fast path declined: parse with dnspython, validate, answer."""
        self.stats.slow += 1
        if len(data) < 12:
            self.stats.dropped += 1
            log.debug("dns: dropping %d-byte message (shorter than a header)", len(data))
            return None
        qid, flags, qd, an, ns, ar = _HDR.unpack_from(data)
        if flags & _QR:
            self.stats.dropped += 1
            log.debug("dns: dropping a response (QR set)")
            return None
        # Decided from the header before any parsing: a 64 KiB message of ~10,000
        # questions or ~5,000 records held the daemon's event loop 0.15-0.22 s in
        # dnspython (bench/hostile_input_bench.py), and its answer was this anyway.
        if flags & _OPCODE:
            return _HDR.pack(qid, _QR | (flags & (_OPCODE | _RD)) | _RCODE_NOTIMP, 0, 0, 0, 0)
        if len(data) > MAX_QUERY_BYTES or qd != 1 or an or ns or ar > 1:
            self.stats.malformed += 1
            log.debug(
                "dns: %d-byte query with %d/%d/%d/%d records: FORMERR", len(data), qd, an, ns, ar
            )
            return formerr(qid, flags)
        try:
            query = dns.message.from_wire(data, ignore_trailing=False)
        except Exception as exc:
            self.stats.malformed += 1
            log.debug("dns: malformed query (%s): FORMERR", exc)
            return formerr(qid, flags)
        try:
            return self._answer_parsed(query, data, tcp)
        except Exception as exc:
            self.stats.malformed += 1
            log.debug("dns: cannot answer query (%s): FORMERR", exc, exc_info=True)
            return formerr(qid, flags)

    def _answer_parsed(self, query: dns.message.Message, data: bytes, tcp: bool) -> bytes | Forward:
        response = dns.message.make_response(
            query, recursion_available=self.forwarding, our_payload=OUR_PAYLOAD
        )
        if query.edns >= 0:
            response.ednsflags |= query.ednsflags & dns.flags.DO
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return to_wire(response, query, tcp, self.stats)
        if len(query.question) != 1 or query.answer or query.authority:
            response.set_rcode(dns.rcode.FORMERR)
            self.stats.malformed += 1
            return to_wire(response, query, tcp, self.stats)
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)
            return to_wire(response, query, tcp, self.stats)
        q = query.question[0]
        if q.rdtype in (dns.rdatatype.OPT, dns.rdatatype.TSIG, dns.rdatatype.TKEY):
            response.set_rcode(dns.rcode.FORMERR)
            return to_wire(response, query, tcp, self.stats)
        if q.rdclass != dns.rdataclass.IN or q.rdtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            response.set_rcode(dns.rcode.REFUSED)
            return to_wire(response, query, tcp, self.stats)
        ans: Answer = resolve(self._view, q.name.to_text(), int(q.rdtype), ttl=self.ttl)
        if not ans.authoritative and self.forwarding:
            return Forward(data)
        if ans.authoritative:
            response.flags |= dns.flags.AA
        response.set_rcode(dns.rcode.Rcode(ans.rcode))
        response.answer = _rrsets(ans.answer)
        response.authority = _rrsets(ans.authority)
        return to_wire(response, query, tcp, self.stats)
