"""Node-to-node RPC: gRPC (asyncio) over TLS, mutually authenticated by node identity.

* **Server authentication: pinned TLS.** Every node has a P-256 TLS key and a
  self-signed certificate (gRPC's TLS stack does not take Ed25519 certificates).
  The SHA-256 of the certificate (``tls_fp``) is published in the node's
  *signed* mesh record, and invitation tokens carry it for bootstrap members, so
  the fingerprint is bound to the node identity. A client fetches the server's
  certificate, checks it against the expected fingerprint, and pins it as the
  only trusted root for that channel: no CA, no "skip verification".
* **Client authentication: a signature per call.** The caller signs
  ``domain | server fingerprint | timestamp | SHA-256(body)`` with its
  Ed25519 identity key and sends the signature, its signing key, WireGuard
  key, the body's SHA-256 and length as metadata. The server checks the key
  binding (the WireGuard key is the Curve25519 form of the signing key), the
  clock window and the signature. The
  signature names the server's fingerprint, so it cannot be replayed to another
  node, and it travels inside TLS to a pinned server, so no one else sees it.
* **Limits before work.** The signature covers the body's hash, which travels in
  the metadata, so the server authenticates a call *before reading its body*
  (the method is served as a client-streaming one: the handler decides whether
  to read the one request message at all). Then, still before the read: at
  most :data:`MAX_CALLS_PER_KEY` calls in flight per caller; a caller that is
  no member of any of our meshes (``is_member``) may declare at most
  :data:`MAX_STRANGER_MESSAGE` bytes (a join request), and non-members' calls
  count by source network (an IPv6 /64, an IPv4 address), not by key. A call
  waits for its body in a pool (members: :data:`MAX_AWAITING`; non-members:
  :data:`MAX_STRANGER_CALLS`, :data:`MAX_STRANGER_CALLS_PER_ADDRESS` per
  network): when full, a newcomer takes the place of a waiting call of the
  caller holding the most, if it holds two more. It is then handled in one of
  :data:`MAX_CALLS` slots (the last :data:`RESERVED_CALLS` only for a caller
  with fewer than :data:`FEW_CALLS` there; non-members: as many as wait, and
  :data:`MAX_STRANGER_CALLS_PER_SITE` in flight per IPv6 /48); datagram calls have a pool
  of their own (``daemon/rpc_slots.py``). Members' messages are capped at
  :data:`MAX_MESSAGE` (the protocol pages anything larger: join replies, sync
  steps, pushes). Over a limit the call is rejected at once with
  ``RESOURCE_EXHAUSTED``, never queued. The body must arrive within
  :func:`body_deadline` (2 s and 1 s per 64 KiB declared, at most
  :data:`STRANGER_READ_TIMEOUT_S` for strangers or :data:`READ_TIMEOUT_S`)
  and match the declared length and hash. Refusals are logged
  as one summary line per source per minute (:mod:`smegmesh.daemon.ratelog`).
  Connections: at most :data:`MAX_CONNECTIONS`, :data:`MAX_STREAMS_PER_CONNECTION`
  streams each, closed after :data:`IDLE_CONNECTION_MS` without calls, and
  a TLS/HTTP2 handshake must finish within :data:`HANDSHAKE_TIMEOUT_MS`.
* **Bounded outgoing channels.** A client keeps at most :data:`MAX_CHANNELS`
  outgoing connections (open channels, the certificate fetch of one being
  opened, one still closing; the least recently used idle channel is closed
  to make room, a busy one never: a call that needs a new connection while
  all are busy waits for one within its timeout) and closes a channel idle
  for :data:`CHANNEL_IDLE_S`: a node's connections do not grow with the size
  of the mesh (issue 14). A call's timeout covers its connection: the wait
  for room and for the one attempt at connecting that endpoint, which goes on
  with the client's timeout when a call gives up first (its channel kept, its
  failure backed off). A pinned certificate, once fetched, is kept
  by its fingerprint (at most :data:`MAX_CACHED_CERTIFICATES`): reopening a
  channel needs no second handshake to fetch it.

* **Datagrams for small calls** (issue 14, ``daemon/rpc_dgram.py``,
  ``daemon/dgram_wire.py``): probes, acks, in-sync digest pulls and small
  pushes go as one UDP datagram each way to the same port number, sealed with
  a key from the two nodes' static X25519 (WireGuard) keys, limits checked
  before any crypto; the gRPC stream carries the rest and is the fallback.

One generic unary method carries ``core.wire`` messages as bytes. Whether a
caller may do what it asks (is it a member? does it hold a token?) is decided
by the node, from the authenticated caller key this layer hands it.
"""

from __future__ import annotations

from smegmesh.daemon.rpc_backoff import (
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    MAX_BACKOFF_ENTRIES,
    EndpointBackoff,
    EndpointKey,
)
from smegmesh.daemon.rpc_client import (
    _GRPC_OPTIONS,
    CHANNEL_IDLE_S,
    MAX_CACHED_CERTIFICATES,
    MAX_CHANNELS,
    RpcClient,
)
from smegmesh.daemon.rpc_common import (
    _DOMAIN,
    CLOCK_SKEW_MS,
    FULL_METHOD,
    MAX_MESSAGE,
    METHOD,
    SERVICE,
    TLS_NAME,
    Refused,
    RpcError,
    _signed_blob,
    _signed_digest,
)
from smegmesh.daemon.rpc_server import (
    _SERVER_OPTIONS,
    FEW_CALLS,
    HANDSHAKE_TIMEOUT_MS,
    IDLE_CONNECTION_MS,
    MAX_AWAITING,
    MAX_CALLS,
    MAX_CALLS_PER_KEY,
    MAX_CONNECTIONS,
    MAX_STRANGER_CALLS,
    MAX_STRANGER_CALLS_PER_ADDRESS,
    MAX_STRANGER_CALLS_PER_SITE,
    MAX_STRANGER_MESSAGE,
    MAX_STREAMS_PER_CONNECTION,
    READ_TIMEOUT_S,
    RESERVED_CALLS,
    STRANGER_READ_TIMEOUT_S,
    Handler,
    RpcServer,
    body_deadline,
    callee_key,
    caller_address,
    caller_address_verified,
    parse_grpc_peer,
)
from smegmesh.daemon.rpc_tls import (
    TlsIdentity,
    TlsIdentityError,
    cert_fingerprint,
    fetch_certificate,
)

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_CAP_S",
    "CHANNEL_IDLE_S",
    "CLOCK_SKEW_MS",
    "FEW_CALLS",
    "FULL_METHOD",
    "HANDSHAKE_TIMEOUT_MS",
    "IDLE_CONNECTION_MS",
    "MAX_AWAITING",
    "MAX_BACKOFF_ENTRIES",
    "MAX_CACHED_CERTIFICATES",
    "MAX_CALLS",
    "MAX_CALLS_PER_KEY",
    "MAX_CHANNELS",
    "MAX_CONNECTIONS",
    "MAX_MESSAGE",
    "MAX_STRANGER_CALLS",
    "MAX_STRANGER_CALLS_PER_ADDRESS",
    "MAX_STRANGER_CALLS_PER_SITE",
    "MAX_STRANGER_MESSAGE",
    "MAX_STREAMS_PER_CONNECTION",
    "METHOD",
    "READ_TIMEOUT_S",
    "RESERVED_CALLS",
    "SERVICE",
    "STRANGER_READ_TIMEOUT_S",
    "TLS_NAME",
    "_DOMAIN",
    "_GRPC_OPTIONS",
    "_SERVER_OPTIONS",
    "EndpointBackoff",
    "EndpointKey",
    "Handler",
    "Refused",
    "RpcClient",
    "RpcError",
    "RpcServer",
    "TlsIdentity",
    "TlsIdentityError",
    "_signed_blob",
    "_signed_digest",
    "body_deadline",
    "callee_key",
    "caller_address",
    "caller_address_verified",
    "cert_fingerprint",
    "fetch_certificate",
    "parse_grpc_peer",
]
