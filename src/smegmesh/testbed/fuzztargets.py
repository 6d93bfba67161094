"""Fuzz targets: every decoder of untrusted input, with the errors each may raise.

Shared by ``bench/fuzz.py`` (the coverage-guided campaign, atheris) and
``tests/unit/test_fuzz.py`` (a bounded run in CI). A target takes bytes and either
returns, raises one of its *allowed* error types (the input was rejected, with a
message), or fails: any other exception, including ``AssertionError`` from the
invariants checked on accepted input, is a crash.

Targets:

* ``wire`` - :func:`smegmesh.core.wire.decode` of any bytes (allowed: ``WireError``);
  a decoded message must re-encode and decode to itself.
* ``wire:<Type>`` - the same, with the envelope fixed to one message type so every
  input reaches that type's decoder: records and prunes, the liveness and join
  messages of :mod:`smegmesh.core.messages`, the sync messages of
  :mod:`smegmesh.core.sync`.
* ``join`` - what a stranger's bytes reach: decode, then a member's
  :meth:`MeshNode.handle_request` from a non-member (the join request path:
  admission check, record validation), which must never raise.
* ``member`` - the same from a member (ping, ping-req, push, sync sessions).
* ``founded`` - the same on a member of a founded mesh: pushes with items by
  reference and deltas (:mod:`smegmesh.core.elide`, :mod:`smegmesh.core.delta`).
* ``founded-join`` - a stranger's requests to a member of a founded mesh:
  joins checked against the token's grant and admitted with a certificate.
* ``token`` - :func:`smegmesh.core.invite.parse_token`, on text and on the
  msgpack body inside a well-formed prefix (allowed: ``TokenError``).
* ``dns`` - :meth:`DnsServer.answer` (UDP and TCP sizes), which never raises;
  an answer carries the query's id and fits the transport's size limit.
* ``config`` - :func:`smegmesh.daemon.config.load_config` on a YAML file
  (allowed: ``ConfigError``).
"""

from __future__ import annotations

import atexit
import base64
import functools
import itertools
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from smegmesh.testbed.fuzzcorpus import MESH, STRANGER_SEED, _by_type, _dedup, _mesh_corpus

__all__ = ["Target", "check", "mutate", "targets"]


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]
    seeds: Callable[[], list[bytes]]
    modules: tuple[str, ...]  # measured for line coverage
    max_len: int = 4096
    doc: str = ""


def check(target: Target, data: bytes) -> BaseException | None:
    """Run one case: None if it passed or was rejected with an allowed error."""
    try:
        target.run(data)
    except target.allowed:
        return None
    except RecursionError as exc:  # a stack overflow on nested input is a crash too
        return exc
    except Exception as exc:
        return exc
    return None


# --------------------------------------------------------------------------- wire


def _wire_roundtrip(data: bytes) -> None:
    from smegmesh.core.wire import decode, encode

    msg = decode(data)
    again = decode(encode(msg))
    assert again == msg, "decode(encode(m)) != m"


def _wire_seeds() -> list[bytes]:
    groups = _by_type()
    return _dedup([s for seeds in groups.values() for s in seeds], 200)


def _type_code(name: str) -> int:
    from smegmesh.core import wire

    for codec in wire.PROTOCOL.codecs():
        if codec.cls.__name__ == name:
            return codec.code
    raise KeyError(name)


def _message_types() -> list[str]:
    """Every registered wire message class, by type code (new ones get a target too)."""
    from smegmesh.core import wire

    return [c.cls.__name__ for c in wire.PROTOCOL.codecs()]


def _typed_target(name: str) -> Target:
    """Bytes after a fixed ``[1, code,`` envelope head: all reach ``name``'s decoder."""
    from smegmesh.core import wire
    from smegmesh.core.wire import WireError

    code = _type_code(name)
    head = b"\x93\x01" + msgpack.packb(code)
    decoder_module = next(c for c in wire.PROTOCOL.codecs() if c.code == code).decode.__module__

    def run(data: bytes) -> None:
        _wire_roundtrip(head + data)

    def seeds() -> list[bytes]:
        out = [s[len(head) :] for s in _by_type().get(name, []) if s.startswith(head)]
        return _dedup(out) or [msgpack.packb([])]

    return Target(
        f"wire:{name}",
        run,
        (WireError,),
        seeds,
        tuple(dict.fromkeys(("smegmesh.core.wire", decoder_module))),
        doc=f"wire.decode of a {name} (type code {code}) body",
    )


# --------------------------------------------------------------------------- handlers


@functools.cache
def _handler_node() -> tuple[Any, bytes, bytes]:
    from smegmesh.core.identity import NodeIdentity

    _, first, member, _secret, _now = _mesh_corpus()
    stranger = NodeIdentity.from_seed(STRANGER_SEED).wg_public_key
    return first, member, stranger


#: the handler node's clock: on from the corpus's last event, 1 ms per message
_TICKS = itertools.count(1)


def _request(node: Any, src: bytes, now: int, data: bytes) -> None:
    """Decode ``data`` and hand it to ``node`` as a request from ``src``, a tick after ``now``."""
    from smegmesh.core.wire import WireError, decode

    try:
        msg = decode(data)
    except WireError:
        return
    node.handle_request(src, msg, now + next(_TICKS))


def _handle(data: bytes, *, member: bool) -> None:
    node, member_key, stranger = _handler_node()
    _request(node, member_key if member else stranger, _mesh_corpus()[4], data)


def _founded_of(member: bool) -> tuple[tuple[bytes, ...], Any, bytes, int]:
    """The founded mesh's corpus: a member's pushes, or a stranger's joins."""
    from smegmesh.testbed.fuzzcorpus import _founded_corpus, _founded_join_corpus

    return _founded_corpus() if member else _founded_join_corpus()


def _founded(data: bytes, *, member: bool) -> None:
    _seeds, node, src, now = _founded_of(member)
    _request(node, src, now, data)


def _founded_seeds(*, member: bool) -> list[bytes]:
    return list(_founded_of(member)[0])


def _join_seeds() -> list[bytes]:
    groups = _by_type()
    return _dedup(groups.get("JoinRequest", []) + groups.get("SyncStart", [])[:5], 60)


def _member_seeds() -> list[bytes]:
    groups = _by_type()
    names = ("Ping", "PingReq", "Push", "Offer", "SyncStart", "SyncStep", "SyncEnd")
    return _dedup([s for n in names for s in groups.get(n, [])], 120)


# --------------------------------------------------------------------------- token


def _token(data: bytes) -> None:
    from smegmesh.core.invite import PREFIX, parse_token

    if data[:1] == b"\x00":
        text = PREFIX + base64.urlsafe_b64encode(data[1:]).decode().rstrip("=")
    else:
        text = data[1:].decode("utf-8", "replace")
    tok = parse_token(text)
    assert parse_token(tok.encode()) == tok, "parse_token(t.encode()) != t"


def _token_seeds() -> list[bytes]:
    from smegmesh.core.invite import Bootstrap, new_token

    out = []
    for i, boots in enumerate(
        (["[2001:db8::1]:4000"], ["192.0.2.1:4000", "peer.example:4000"], ["garbage", "[::1"])
    ):
        tok = new_token(
            MESH,
            now_ms=1_700_000_000_000,
            ttl_ms=3_600_000,
            uses=i + 1,
            bootstrap=[Bootstrap(b, bytes([i]) * 32, bytes([i + 1]) * 32) for b in boots],
            secret=bytes([i + 7]) * 16,
        )
        text = tok.encode()
        raw = text[len("smeg1.") :]
        out.append(b"\x00" + base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        out.append(b"\x01" + text.encode())
    return out


# --------------------------------------------------------------------------- dns


@functools.cache
def _dns_server() -> Any:
    from smegmesh.core.addressing import overlay_address
    from smegmesh.core.identity import NodeIdentity
    from smegmesh.dns import DnsServer, NameView, NodeName

    nodes = []
    for i, (mesh, alias) in enumerate(
        [(MESH, "db"), (MESH, "web"), ("blue-owl-2b", "web"), ("blue-owl-2b", "")]
    ):
        key = NodeIdentity.from_seed(bytes([i + 1]) * 32).wg_public_key
        nodes.append(NodeName(mesh, alias, key, overlay_address(mesh, key)))
    return DnsServer(NameView(nodes), ttl=5)


def _dns(data: bytes) -> None:
    server = _dns_server()
    tcp = bool(data[:1]) and data[0] & 1 == 1
    query = data[1:]
    out = server.answer(query, tcp=tcp)
    if isinstance(out, bytes):
        assert len(query) >= 12, "answered a message shorter than a header"
        assert out[:2] == query[:2], "answer id differs from the query's"
        assert out[2] & 0x80, "answer without QR"
        assert len(out) <= (65535 if tcp else 1232), "answer over the size limit"


def _dns_seeds() -> list[bytes]:
    import dns.message

    from smegmesh.core.addressing import overlay_address
    from smegmesh.core.identity import NodeIdentity

    key = NodeIdentity.from_seed(b"\x01" * 32).wg_public_key
    out = []
    queries: list[tuple[str, str, dict[str, Any]]] = [
        (f"db.{MESH}.smeg.", "AAAA", {}),
        ("DB.smeg.", "AAAA", {"use_edns": 0, "payload": 4096}),
        ("web.smeg.", "TXT", {}),
        (f"web.{MESH}.smeg.", "A", {"want_dnssec": True}),
        ("smeg.", "SOA", {}),
        ("smeg.", "NS", {}),
        (overlay_address(MESH, key).reverse_pointer + ".", "PTR", {}),
        ("example.com.", "A", {}),
        ("smeg.", "AXFR", {}),
        (f"nobody.{MESH}.smeg.", "ANY", {}),
    ]
    for name, rdtype, kw in queries:
        wire = dns.message.make_query(name, rdtype, **kw).to_wire()
        out += [b"\x00" + wire, b"\x01" + wire]
    return out


# --------------------------------------------------------------------------- config


@functools.cache
def _config_dir() -> Path:
    shm = Path("/dev/shm")
    path = Path(tempfile.mkdtemp(prefix="smeg-fuzz-config-", dir=shm if shm.is_dir() else None))
    atexit.register(shutil.rmtree, path, True)
    return path


def _config(data: bytes) -> None:
    from smegmesh.daemon.config import load_config

    path = _config_dir() / "smegd.yaml"
    path.write_bytes(data)
    load_config(path)


def _config_seeds() -> list[bytes]:
    compat = Path(__file__).resolve().parents[3] / "tests" / "compat"
    out = [p.read_bytes() for p in sorted(compat.glob("*.yaml"))] if compat.is_dir() else []
    return [
        *out,
        b"baseConfiguration:\n  role: peer\n  publicEndpoint: 2001:db8::10\n",
        b"baseConfiguration:\n  role: client\n  keepAliveWg: 25\n"
        b"dnsListen: '[::1]:5353'\ndnsTtl: 5\ndnsForwarder: 127.0.0.53\n",
        b"baseConfiguration:\n  role: peer\n  ipDiscovery: outgoing\n  advertiseRoute: true\n"
        b"apiListen: 127.0.0.1:8080\napiToken: 0123456789abcdef0123\nstubWg: true\n",
        b"heartbeatInterval: 2\ntimeout: 10\nsyncInterval: 1\nclusterSize: 32\n",
        b"{}\n",
        b"- a\n- b\n",
        b"a: &x [1, 2]\nb: *x\n",
    ]


# --------------------------------------------------------------------------- table


#: modules measured for line coverage
_RECORD_MODS = (
    "smegmesh.core.record",
    "smegmesh.core.record_fields",
    "smegmesh.core.record_model",
    "smegmesh.core.record_decode",
)
_WIRE_MODS = ("smegmesh.core.wire", "smegmesh.core.messages", "smegmesh.core.sync", *_RECORD_MODS)
_HANDLER_MODS = (
    "smegmesh.core.meshnode",
    "smegmesh.core.invite",
    "smegmesh.core.state",
    "smegmesh.core.state_store",
    "smegmesh.core.state_gate",
    *_RECORD_MODS,
    "smegmesh.core.sync",
)


@functools.cache
def targets() -> dict[str, Target]:
    """name -> Target (built on first use: the seed corpus runs a small mesh)."""
    from smegmesh.core.invite import TokenError
    from smegmesh.core.wire import WireError
    from smegmesh.daemon.config import ConfigError

    out = [
        Target("wire", _wire_roundtrip, (WireError,), _wire_seeds, _WIRE_MODS, doc="wire.decode"),
        *(_typed_target(n) for n in _message_types()),
        Target(
            "join",
            functools.partial(_handle, member=False),
            (),
            _join_seeds,
            _HANDLER_MODS,
            doc="decode + MeshNode.handle_request from a stranger",
        ),
        Target(
            "member",
            functools.partial(_handle, member=True),
            (),
            _member_seeds,
            _HANDLER_MODS,
            doc="decode + MeshNode.handle_request from a member",
        ),
        Target(
            "founded-join",
            functools.partial(_founded, member=False),
            (),
            functools.partial(_founded_seeds, member=False),
            (*_HANDLER_MODS, "smegmesh.core.admission", "smegmesh.core.cert"),
            doc="decode + MeshNode.handle_request, a stranger to a founded mesh (joins)",
        ),
        Target(
            "founded",
            functools.partial(_founded, member=True),
            (),
            functools.partial(_founded_seeds, member=True),
            (*_HANDLER_MODS, "smegmesh.core.elide", "smegmesh.core.delta", "smegmesh.core.cert"),
            doc="decode + MeshNode.handle_request, a founded mesh's member (references, deltas)",
        ),
        Target(
            "token",
            _token,
            (TokenError,),
            _token_seeds,
            ("smegmesh.core.invite",),
            max_len=2100,
            doc="invite.parse_token",
        ),
        Target(
            "dns",
            _dns,
            (),
            _dns_seeds,
            ("smegmesh.dns.server", "smegmesh.dns.names"),
            max_len=1500,
            doc="DnsServer.answer (UDP/TCP)",
        ),
        Target(
            "config",
            _config,
            (ConfigError,),
            _config_seeds,
            ("smegmesh.daemon.config",),
            doc="daemon.config.load_config",
        ),
    ]
    return {t.name: t for t in out}


# --------------------------------------------------------------------------- mutation


def mutate(rng: random.Random, data: bytes, seeds: list[bytes], max_len: int) -> bytes:
    """A cheap libFuzzer-like mutation (for the bounded CI run without atheris)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # set an interesting byte
            buf[rng.randrange(len(buf))] = rng.choice(
                [
                    0x00,
                    0x01,
                    0x7F,
                    0x80,
                    0xC0,
                    0xC1,
                    0xCC,
                    0xDC,
                    0xDD,
                    0xDE,
                    0xDF,
                    0xFF,
                    0x90,
                    0x91,
                    0x93,
                    0xA0,
                    0xC4,
                    0xD9,
                    0xDA,
                    0xDB,
                ]
            )
        elif op == 2:  # insert random bytes
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and buf:  # delete a range
            i = rng.randrange(len(buf))
            del buf[i : i + rng.randint(1, 8)]
        elif op == 4 and buf:  # truncate
            del buf[rng.randrange(len(buf)) :]
        elif op == 5 and seeds:  # splice with another seed
            other = rng.choice(seeds)
            i = rng.randrange(len(buf) + 1)
            j = rng.randrange(len(other) + 1)
            buf = buf[:i] + other[j:]
        elif op == 6 and buf:  # duplicate a range
            i = rng.randrange(len(buf))
            buf[i:i] = buf[i : i + rng.randint(1, 16)]
        elif buf:  # big-endian integer edge values
            i = rng.randrange(len(buf))
            buf[i : i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff"])
    return bytes(buf[:max_len])
