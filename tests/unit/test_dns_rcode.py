"""The response code of an answer as counted (``smegd_dns_answers_total``, dns.answer)."""

from __future__ import annotations

import dns.edns
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.TXT import TXT

from smegmesh.dns.answer import answer_rcode


def test_answer_rcode_reads_the_opt_record_not_bytes_that_look_like_one() -> None:
    """A forwarded answer is counted too: its last 11 bytes may be a record's data
    that look like an OPT record (a name's TXT), and an OPT record may carry
    options (a cookie). Before: the first counted as BADVERS (or any of 4,096
    codes, a series each), the second as NOERROR."""
    q = dns.message.make_query("x.example.", "TXT")
    r = dns.message.make_response(q)
    mimic = b"\x00\x00\x29\x10\x00\x01\x00\x00\x00\x00\x00"  # root, OPT, ..., ext rcode 1
    txt = TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [mimic])
    r.answer.append(dns.rrset.from_rdata("x.example.", 60, txt))
    r.additional.append(dns.rrset.from_rdata("y.example.", 60, txt))
    wire = r.to_wire()
    assert wire[-11:] == mimic
    assert answer_rcode(wire) == dns.rcode.NOERROR
    q1 = dns.message.make_query("db.smeg.", "AAAA", use_edns=0)
    bad = dns.message.make_response(q1)
    bad.use_edns(0, options=[dns.edns.GenericOption(10, b"\x01" * 8)])  # a cookie
    bad.set_rcode(dns.rcode.BADVERS)
    assert answer_rcode(bad.to_wire()) == dns.rcode.BADVERS
    assert answer_rcode(dns.message.make_response(q).to_wire()) == dns.rcode.NOERROR
    assert answer_rcode(bad.to_wire()[:20]) == 0  # cut short: the header's code
