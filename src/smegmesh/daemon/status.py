"""The node overview (``GET /v1/status``) and overlay ping (``POST /v1/ping``).

:func:`build_status` and :func:`path_to` are pure functions of the mesh views
(:class:`~smegmesh.daemon.api_models.MeshDetail`, which carry each WireGuard
peer's AllowedIPs, handshake and counters as read back from the interface).

The path to an address is what WireGuard does with a packet to it: the peer
whose AllowedIPs contain it with the longest prefix. That peer is the member
itself (``direct``), another member of the mesh (``peer``: a client's assigned
peer, or a client's only peer), or, for an address outside the mesh, the
gateway of a route (``bridge``).

:func:`run_ping` runs the system ``ping -6`` (iputils) with bounded count and
deadline, in a subprocess, never blocking the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from smegmesh.daemon.api_models import (
    MemberStatus,
    MeshDetail,
    MeshStatus,
    NodeInfo,
    NotRestored,
    PathInfo,
    PathKind,
    PingResponse,
    StatusResponse,
)
from smegmesh.daemon.resolve import resolve_node
from smegmesh.daemon.service import unavailable

__all__ = ["PingResult", "build_status", "parse_ping", "path_to", "ping_node", "run_ping"]

#: At most this many pings run at once (each is one subprocess).
MAX_CONCURRENT_PINGS = 4
_ping_slots = asyncio.Semaphore(MAX_CONCURRENT_PINGS)


def _addr(text: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def path_to(address: str, meshes: Sequence[MeshDetail]) -> PathInfo:
    """How this node reaches ``address``: the WireGuard peer with the longest AllowedIPs match."""
    target = _addr(address)
    if target is None:
        return PathInfo(kind="none")
    best: tuple[int, MeshDetail, NodeInfo] | None = None
    for m in meshes:
        for n in m.nodes:
            if n.is_self and _addr(n.overlay_address) == target:
                return PathInfo(kind="self", mesh_id=m.mesh_id)
            if not n.wg_peer:
                continue
            for a in n.allowed_ips:
                try:
                    net = ipaddress.ip_network(a, strict=False)
                except ValueError:
                    continue
                if net.version == 6 and target in net and (best is None or net.prefixlen > best[0]):
                    best = (net.prefixlen, m, n)
    if best is None:
        return PathInfo(kind="none")
    _, m, hop = best
    kind: PathKind
    if _addr(hop.overlay_address) == target:
        kind = "direct"
    elif target in ipaddress.IPv6Network(m.prefix):
        kind = "peer"
    else:
        kind = "bridge"
    return PathInfo(kind=kind, via=hop.public_key, via_alias=hop.alias, mesh_id=m.mesh_id)


def _addr_int(text: str) -> int | None:
    """An IPv6 address as an int (``inet_pton``: 10,000 of them in milliseconds)."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError):
        return None


def member_paths(m: MeshDetail) -> dict[str, PathInfo]:
    """:func:`path_to` for every member of ``m`` at once (public key -> path).

    Linear in members and AllowedIPs: a /128 entry is looked up by address,
    the few wider entries (the mesh prefix on a client's assigned peer, routes)
    are matched by longest prefix.
    """
    host: dict[int, NodeInfo] = {}
    wide: list[tuple[int, int, NodeInfo]] = []  # (prefix length, network, hop)
    for n in m.nodes:
        if not n.wg_peer:
            continue
        for a in n.allowed_ips:
            try:
                net = ipaddress.ip_network(a, strict=False)
            except ValueError:
                continue
            if net.version != 6:
                continue
            if net.prefixlen == 128:
                host.setdefault(int(net.network_address), n)
            else:
                wide.append((net.prefixlen, int(net.network_address), n))
    wide.sort(key=lambda e: -e[0])
    prefix = ipaddress.IPv6Network(m.prefix)
    lo, plen = int(prefix.network_address), prefix.prefixlen
    out: dict[str, PathInfo] = {}
    none = PathInfo(kind="none")
    for n in m.nodes:
        target = _addr_int(n.overlay_address)
        if n.is_self:
            out[n.public_key] = PathInfo.model_construct(kind="self", mesh_id=m.mesh_id)
            continue
        if target is None:
            out[n.public_key] = none
            continue
        hop = host.get(target) or next(
            (h for pl, net, h in wide if target >> (128 - pl) == net >> (128 - pl)), None
        )
        if hop is None:
            out[n.public_key] = none
            continue
        kind: PathKind = (
            "direct" if _addr_int(hop.overlay_address) == target
            else "peer" if target >> (128 - plen) == lo >> (128 - plen)
            else "bridge"
        )  # fmt: skip
        out[n.public_key] = PathInfo.model_construct(  # valid by construction: no validation
            kind=kind, via=hop.public_key, via_alias=hop.alias, mesh_id=m.mesh_id
        )
    return out


def _members(m: MeshDetail) -> list[MemberStatus]:
    """Every member of ``m`` with its path, linear in members.

    A path is the one ``member_paths`` put on the node when the view was built
    (``direct.annotate``), else computed here once for the whole mesh: a
    longest-prefix search per member over every member's AllowedIPs, and a
    search for its hop, cost 30 s of the event loop at 1,000 members.
    """
    paths = member_paths(m) if any(n.path is None for n in m.nodes) else {}
    by_key = {n.public_key: n for n in m.nodes}
    none = PathInfo(kind="none")
    out = []
    for n in m.nodes:
        path = n.path or paths.get(n.public_key, none)
        hop = by_key.get(path.via) if path.via is not None else None
        out.append(_member(n, path, hop))
    return out


def _member(n: NodeInfo, path: PathInfo, hop: NodeInfo | None) -> MemberStatus:
    return MemberStatus(
        public_key=n.public_key,
        alias=n.alias,
        overlay_address=n.overlay_address,
        role=n.role,
        status=n.status,
        is_self=n.is_self,
        # The handshake of the next hop: what carries this member's traffic.
        handshake_age_s=hop.handshake_age_s if hop is not None else None,
        rx_bytes=n.rx_bytes if path.kind == "direct" else 0,
        tx_bytes=n.tx_bytes if path.kind == "direct" else 0,
        last_seen=n.last_seen,
        seen_via=n.seen_via,
        path=path,
        rtt_ms=n.rtt_ms,
    )


def build_status(
    version: str,
    self_key: str | None,
    meshes: Sequence[MeshDetail],
    dns_listen: str | None = None,
    not_restored: Sequence[NotRestored] = (),
    *,
    accept_defaults: bool | None = None,
) -> StatusResponse:
    """The whole node: every mesh, its members with their paths, and the routes in use."""
    out = []
    for m in sorted(meshes, key=lambda d: d.mesh_id):
        me = next((n for n in m.nodes if n.is_self), None)
        out.append(
            MeshStatus(
                mesh_id=m.mesh_id,
                interface=m.interface,
                prefix=m.prefix,
                role=m.role or (me.role if me is not None else None),
                overlay_address=me.overlay_address if me is not None else None,
                members_online=sum(1 for n in m.nodes if n.status == "live"),
                members_total=len(m.nodes),
                members=_members(m),
                routes=list(m.routes),
                exits=[n.public_key for n in m.nodes if n.status == "live" and _is_exit(n)],
                evicted_self=m.evicted_self,
            )
        )
    return StatusResponse(
        version=version,
        public_key=self_key,
        meshes=out,
        dns_listen=dns_listen,
        not_restored=sorted(not_restored, key=lambda u: u.mesh_id),
        accept_defaults=accept_defaults,
    )


def _is_exit(n: NodeInfo) -> bool:
    """``n`` offers an exit of its own (advertiseDefaults), not one passed on by a bridge."""
    return n.role == "peer" and any(r.destination == "::/0" and not r.path for r in n.routes)


# --------------------------------------------------------------------------- ping


@dataclass
class PingResult:
    sent: int = 0
    received: int = 0
    rtt_ms: list[float] = field(default_factory=list)
    error: str | None = None


_REPLY_RE = re.compile(r"icmp_seq=(\d+).*?time[=<]([\d.]+) ms")
_STATS_RE = re.compile(r"(\d+) packets transmitted, (\d+) received")
#: Bytes of ping output read at most (its output is a few lines per echo).
MAX_PING_OUTPUT = 64 * 1024


def parse_ping(output: str) -> PingResult:
    """Replies and totals from iputils ``ping -n`` output."""
    res = PingResult()
    res.rtt_ms = [float(m.group(2)) for m in _REPLY_RE.finditer(output)]
    stats = _STATS_RE.search(output)
    if stats:
        res.sent, res.received = int(stats.group(1)), int(stats.group(2))
    else:
        res.received = len(res.rtt_ms)
    return res


async def run_ping(address: str, count: int, timeout_s: int) -> PingResult:
    """``ping -6`` ``address`` ``count`` times, waiting ``timeout_s`` for each reply."""
    ip = _addr(address)
    if ip is None:
        raise ValueError(f"not an IPv6 address: {address!r}")
    exe = shutil.which("ping")
    if exe is None:
        raise unavailable("the ping program is not installed on the node (iputils-ping)")
    deadline = count * 0.2 + timeout_s  # -i 0.2 between echoes, then wait for the last
    argv = [exe, "-6", "-n", "-c", str(count), "-i", "0.2", "-W", str(timeout_s)]
    argv += ["-w", str(int(deadline) + 1), str(ip)]
    async with _ping_slots:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), deadline + 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return PingResult(sent=count, error="ping did not finish in time")
    res = parse_ping(out[:MAX_PING_OUTPUT].decode("utf-8", "replace"))
    if not res.sent:
        res.sent = count if res.received else 0
    if res.received == 0:
        msg = " ".join(err[:500].decode("utf-8", "replace").split())
        res.error = msg.removeprefix("ping: ") or "no reply"
    return res


async def ping_node(
    node: str,
    mesh_id: str | None,
    meshes: Sequence[MeshDetail],
    count: int,
    timeout_s: int,
    refuse: str | None = None,
) -> PingResponse:
    """Resolve ``node`` among ``meshes``, ping its overlay address, say which path answered.

    Nothing is sent when no WireGuard peer covers the address (it is not on the
    overlay: the packet would leave by the host's other routes), nor when
    ``refuse`` gives a reason (e.g. no WireGuard at all); the answer says why.
    """
    target = resolve_node(node, meshes, mesh_id)
    path = path_to(target.address, meshes)
    if refuse is not None:
        res = PingResult(error=f"{refuse}: not sent")
    elif path.kind == "none":
        res = PingResult(error="no WireGuard peer of this node covers that address: not sent")
    else:
        res = await run_ping(target.address, count, timeout_s)
    avg = round(sum(res.rtt_ms) / len(res.rtt_ms), 3) if res.rtt_ms else None
    return PingResponse(
        mesh_id=target.mesh_id or path.mesh_id,
        public_key=target.node.public_key if target.node is not None else None,
        alias=target.node.alias if target.node is not None else "",
        address=target.address,
        path=path,
        sent=res.sent,
        received=res.received,
        rtt_ms=res.rtt_ms,
        rtt_avg_ms=avg,
        error=res.error,
    )
