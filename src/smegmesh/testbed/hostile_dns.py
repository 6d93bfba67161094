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


def crafted_messages(n: int = 5000) -> dict[str, bytes]:
    """What each message is stuffed with -> the message (``n`` items each, ~50 KiB)."""
    extra = b"\xc0\x0c" + struct.pack("!HH", 28, 1)
    q, rr = QUESTION, RECORD
    return {
        "questions": struct.pack("!HHHHHH", 7, 0x0100, n + 1, 0, 0, 0) + q + extra * n,
        "answers": struct.pack("!HHHHHH", 8, 0x0100, 1, n, 0, 0) + q + rr * n,
        "additional": struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, n) + q + rr * n,
        "one big OPT": struct.pack("!HHHHHH", 10, 0x0100, 1, 0, 0, 1)
        + q
        + b"\x00"
        + struct.pack("!HHIH", 41, 1232, 0, 4 * n)
        + struct.pack("!HH", 65001, 0) * n,
    }
