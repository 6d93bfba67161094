"""Node-to-node protocol messages of the mesh engine (beyond state sync).

Every message names its mesh: one control port serves all of a node's meshes.
Request -> reply pairs:

* ``Ping`` -> ``Ack``            direct liveness probe (SWIM)
  (a client's ping, id 0, is acked ``ok`` False by a peer that holds the
  client as pruned: ``core.clientside``)
* ``PingReq`` -> ``Ack``         indirect probe: the receiver pings ``target`` for us
* ``Push`` -> ``Ack``            fresh items (gossip push), see ``core.offer``
* ``JoinRequest`` -> ``JoinReply``  a new node presents its token and record
* ``WhoAmI`` -> ``YouAre``       the caller's address as seen by the member (ipDiscovery public)
* ``WhereAmI`` -> ``Observed``   the WireGuard endpoint the member sees the caller's
  handshakes come from (NAT traversal, docs/NAT.md)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from smegmesh.core.cert import MAX_CHAIN, AuthItem, Cert
from smegmesh.core.certwire import auth_from_obj, auth_to_obj
from smegmesh.core.codec import Codec, WireError, decode_item, encode_item
from smegmesh.core.endpoint import no_scope
from smegmesh.core.record import MAX_ENDPOINT_LEN, NodeRecord, Prune, check_endpoint

Item = NodeRecord | Prune | AuthItem

#: The mesh id an ``Ack`` or a ``Want`` carries: none, and a word. Each
#: answers one call, matched by its request id on the channel that call went
#: on, so its mesh is the call's: the field stays (every node decodes any short
#: string there and none reads it as a mesh) but holds only ``~``, which says
#: the replier takes requests naming the mesh by tag (``core.meshtag``; never
#: a mesh id). The id cost 18-33 bytes in about half of all messages
#: (docs/SCALE.md, section 12).
IN_REPLY = "~"


@dataclass(frozen=True, slots=True)
class Ping:
    mesh_id: str
    probe_id: int


@dataclass(frozen=True, slots=True)
class PingReq:
    mesh_id: str
    target: bytes
    probe_id: int


@dataclass(frozen=True, slots=True)
class Ack:
    mesh_id: str
    probe_id: int
    ok: bool = True


@dataclass(frozen=True, slots=True)
class JoinRequest:
    mesh_id: str
    secret: bytes
    record: NodeRecord


@dataclass(frozen=True, slots=True)
class JoinReply:
    mesh_id: str
    items: tuple[Item, ...]
    #: the joiner's admission proof (admitter's chain + a cert for the joiner)
    chain: tuple[Cert, ...] = ()


@dataclass(frozen=True, slots=True)
class WhoAmI:
    """``ipDiscovery: public``: ask a member which address our calls come from."""

    mesh_id: str


@dataclass(frozen=True, slots=True)
class YouAre:
    mesh_id: str
    address: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """Sent instead of a reply when a request is not allowed (carries no details)."""

    mesh_id: str


# Wire codecs (type codes 20-29) ---------------------------------------------------
def _arr(v: object, n: int) -> list[Any]:
    if type(v) is not list or len(v) != n:
        raise WireError(f"expected an array of {n}")
    return v


def _str(v: object) -> str:
    if type(v) is not str or len(v) > 63:
        raise WireError("expected a mesh id string")
    return v


def _uint(v: object) -> int:
    if type(v) is not int or not 0 <= v < 2**63:
        raise WireError("expected a bounded non-negative integer")
    return v


def _bin(v: object, n: int) -> bytes:
    if type(v) is not bytes or len(v) != n:
        raise WireError(f"expected {n} bytes")
    return v


def _dec_ping(b: Any) -> Ping:
    m, p = _arr(b, 2)
    return Ping(_str(m), _uint(p))


def _dec_pingreq(b: Any) -> PingReq:
    m, t, p = _arr(b, 3)
    return PingReq(_str(m), _bin(t, 32), _uint(p))


def _dec_ack(b: Any) -> Ack:
    m, p, ok = _arr(b, 3)
    if type(ok) is not bool:
        raise WireError("expected a boolean")
    return Ack(_str(m), _uint(p), ok)


def _dec_join(b: Any) -> JoinRequest:
    m, secret, rec = _arr(b, 3)
    item = decode_item(rec)
    if not isinstance(item, NodeRecord):
        raise WireError("join needs a node record")
    return JoinRequest(_str(m), _bin(secret, 16), item)


def _dec_join_reply(b: Any) -> JoinReply:
    m, items, chain = _arr(b, 3)
    if type(items) is not list or type(chain) is not list or len(chain) > MAX_CHAIN:
        raise WireError("expected an item list and an admission chain")
    certs = tuple(auth_from_obj(c) for c in chain)
    if not all(type(c) is Cert for c in certs):
        raise WireError("admission chain holds only certificates")
    return JoinReply(_str(m), tuple(decode_item(x) for x in items), certs)  # type: ignore[arg-type]


def _dec_refusal(b: Any) -> Refusal:
    (m,) = _arr(b, 1)
    return Refusal(_str(m))


def _dec_whoami(b: Any) -> WhoAmI:
    (m,) = _arr(b, 1)
    return WhoAmI(_str(m))


def _dec_youare(b: Any) -> YouAre:
    m, a = _arr(b, 2)
    if type(a) is not str or not 0 < len(a) <= 64:
        raise WireError("expected an address")
    try:
        ipaddress.ip_address(no_scope(a))
    except ValueError:
        raise WireError("expected an IP address") from None
    return YouAre(_str(m), a)


@dataclass(frozen=True, slots=True)
class WhereAmI:
    """NAT traversal: ask a member (the assigned peer) where our WireGuard packets come from."""

    mesh_id: str


@dataclass(frozen=True, slots=True)
class Observed:
    """The caller's WireGuard endpoint as the member sees it (``None``: no handshake yet)."""

    mesh_id: str
    endpoint: str | None


def _dec_whereami(b: Any) -> WhereAmI:
    (m,) = _arr(b, 1)
    return WhereAmI(_str(m))


def _dec_observed(b: Any) -> Observed:
    m, e = _arr(b, 2)
    if e is not None:
        if type(e) is not str or not 0 < len(e) <= MAX_ENDPOINT_LEN:
            raise WireError("expected an endpoint")
        try:
            check_endpoint(e)
        except ValueError:
            raise WireError("expected an endpoint") from None
    return Observed(_str(m), e)


#: This module's part of the protocol table (:data:`smegmesh.core.wire.PROTOCOL`).
CODECS = (
    # dgram_request/dgram_reply: may go as one datagram (core/wire.DATAGRAM_REQUESTS)
    Codec(20, Ping, lambda m: [m.mesh_id, m.probe_id], _dec_ping, dgram_request=True),
    Codec(
        21, PingReq, lambda m: [m.mesh_id, m.target, m.probe_id], _dec_pingreq, dgram_request=True
    ),
    Codec(22, Ack, lambda m: [m.mesh_id, m.probe_id, m.ok], _dec_ack, dgram_reply=True),
    Codec(23, JoinRequest, lambda m: [m.mesh_id, m.secret, encode_item(m.record)], _dec_join),
    Codec(
        24,
        JoinReply,
        lambda m: [
            m.mesh_id,
            [encode_item(i) for i in m.items],
            [auth_to_obj(c) for c in m.chain],
        ],
        _dec_join_reply,
    ),
    Codec(25, Refusal, lambda m: [m.mesh_id], _dec_refusal, dgram_reply=True),
    Codec(26, WhoAmI, lambda m: [m.mesh_id], _dec_whoami),
    Codec(27, YouAre, lambda m: [m.mesh_id, m.address], _dec_youare),
    Codec(40, WhereAmI, lambda m: [m.mesh_id], _dec_whereami),
    Codec(41, Observed, lambda m: [m.mesh_id, m.endpoint], _dec_observed),
)
