"""Crafted DNS messages a hostile client sends: many records in up to 64 KiB.

Each says in its 12-byte header that it carries thousands of questions or
records (compressed to a few bytes each), the most a parser can be made to
build from one message. The server refuses them from the header alone
(docs/DNS.md); ``tests/unit/test_dns_server.py`` and
``bench/hostile_input_bench.py`` use them. Pure ``struct``: the bench loads
this file by path to measure older versions of the server too.
"""

from __future__ import annotations

import struct

__all__ = ["QUESTION", "RECORD", "crafted_messages"]

#: ``a.smeg. AAAA IN``, and a record whose name points at it (compressed)
QUESTION = b"\x01a\x04smeg\x00" + struct.pack("!HH", 28, 1)
RECORD = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 0, 1) + b"\x00"


def crafted_messages(n: int | None = None) -> dict[str, bytes]:
    """What each message is stuffed with -> the message: ``n`` items each, or
    (None) as many as fit in 65,535 bytes, the most one TCP message carries."""
    extra = b"\xc0\x0c" + struct.pack("!HH", 28, 1)
    q, rr, opt = QUESTION, RECORD, struct.pack("!HH", 65001, 0)

    def fill(fixed: int, item: bytes) -> int:
        return n if n is not None else (65535 - 12 - fixed) // len(item)

    k_q, k_rr, k_opt = fill(len(q), extra), fill(len(q), rr), fill(len(q) + 11, opt)
    return {
        "questions": struct.pack("!HHHHHH", 7, 0x0100, k_q + 1, 0, 0, 0) + q + extra * k_q,
        "answers": struct.pack("!HHHHHH", 8, 0x0100, 1, k_rr, 0, 0) + q + rr * k_rr,
        "additional": struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, k_rr) + q + rr * k_rr,
        "one big OPT": struct.pack("!HHHHHH", 10, 0x0100, 1, 0, 0, 1)
        + q
        + b"\x00"
        + struct.pack("!HHIH", 41, 1232, 0, 4 * k_opt)
        + opt * k_opt,
    }
