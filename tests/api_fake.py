"""An in-memory NodeService for API/CLI tests, and a helper that serves it for real.

The fake keeps meshes in dicts and implements the NodeService contract
(errors included) without networking or WireGuard. End-to-end tests with the
real daemon replace it later. For an answer the real API never gives (a
redirect, a canned body) :func:`stub_http` serves a stdlib request handler.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jmespath
import jmespath.exceptions

from smegmesh.daemon.api import ApiServer, create_app, serve_tcp, serve_unix
from smegmesh.daemon.api_models import (
    AddDeviceResponse,
    DeviceInfo,
    MeshDetail,
    MeshSummary,
    NodeInfo,
    PingResponse,
    RouteInfo,
    SelectedRoute,
    StatusResponse,
)
from smegmesh.daemon.api_models_authority import (
    AdminResponse,
    AliasReserved,
    EvictResponse,
    InviteInfo,
    PolicyResponse,
)
from smegmesh.daemon.config import MeshOptions
from smegmesh.daemon.events import EventBus
from smegmesh.daemon.resolve import resolve_node
from smegmesh.daemon.service import (
    ServiceError,
    conflict,
    invalid_argument,
    refused,
    unavailable,
    unknown_mesh,
)
from smegmesh.daemon.status import build_status, path_to
from smegmesh.testbed.loopback import short_tmpdir

SELF_KEY = "c2VsZi1rZXktc2VsZi1rZXktc2VsZi1rZXktc2VsZg="
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _prefix(mesh_id: str) -> str:
    h = hashlib.sha256(mesh_id.encode()).digest()[:6].hex()
    return f"fd{h[:2]}:{h[2:6]}:{h[6:10]}:{h[10:12]}01::/64"


def _addr(mesh_id: str, key: str) -> str:
    iid = hashlib.sha256(key.encode()).digest()[:8].hex()
    p = _prefix(mesh_id).removesuffix("::/64")
    return f"{p}:{iid[:4]}:{iid[4:8]}:{iid[8:12]}:{iid[12:16]}"


@dataclass
class FakeMesh:
    mesh_id: str
    role: str
    nodes: dict[str, NodeInfo] = field(default_factory=dict)


class FakeNodeService:
    """Genuine (if simple) NodeService: state in dicts, errors as the protocol says."""

    def __init__(self) -> None:
        self.meshes: dict[str, FakeMesh] = {}
        #: meshes that exist "elsewhere" and can be joined with an invite
        self.remote: dict[str, FakeMesh] = {}
        self.invites: dict[str, tuple[str, float, int]] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._n = 0
        #: the daemon's dnsListen, as GET /v1/status reports it
        self.dns_listen: str | None = None
        #: GET /v1/events reads this bus (the daemon's is ``Daemon.events``)
        self.events = EventBus()

    # helpers -------------------------------------------------------------
    def _mesh(self, mesh_id: str) -> FakeMesh:
        try:
            return self.meshes[mesh_id]
        except KeyError:
            raise unknown_mesh(mesh_id) from None

    def _self(self, mesh_id: str) -> NodeInfo:
        return self._mesh(mesh_id).nodes[SELF_KEY]

    def _update_self(self, mesh_id: str, **changes: Any) -> None:
        m = self._mesh(mesh_id)
        m.nodes[SELF_KEY] = m.nodes[SELF_KEY].model_copy(update=changes)

    def _make(self, mesh_id: str, opts: MeshOptions) -> FakeMesh:
        role = opts.role or "peer"
        m = FakeMesh(mesh_id, role)
        m.nodes[SELF_KEY] = NodeInfo(
            public_key=SELF_KEY,
            role=role,
            overlay_address=_addr(mesh_id, SELF_KEY),
            wg_endpoint=f"{opts.endpoint or '192.0.2.1'}:{opts.wgport or 51820}"
            if role == "peer"
            else None,
            control_endpoint="192.0.2.1:4000",
            last_seen=time.time(),
            keepalive_s=opts.keepalive or 0,
            is_self=True,
        )
        return m

    def add_remote_mesh(self, mesh_id: str, peers: int = 2) -> str:
        """A mesh other nodes run; returns a valid invitation token for it."""
        m = FakeMesh(mesh_id, "peer")
        for i in range(peers):
            key = f"peer{i}-" + "k" * 38 + "="
            m.nodes[key] = NodeInfo(
                public_key=key,
                alias=f"peer{i}",
                role="peer",
                overlay_address=_addr(mesh_id, key),
                wg_endpoint=f"198.51.100.{i + 1}:51820",
                control_endpoint=f"198.51.100.{i + 1}:4000",
                last_seen=time.time() - 30 * i,
                handshake_age_s=12.0 + i,
                wg_peer=True,
                rx_bytes=1500 * (i + 1),
                tx_bytes=2_500_000 * (i + 1),
                routes=[RouteInfo(destination="::/0", path=[])] if i == 0 else [],
                services={"http": "80"},
                allowed_ips=[f"{_addr(mesh_id, key)}/128", *(["::/0"] if i == 0 else [])],
            )
        self.remote[mesh_id] = m
        tok = "inv-" + secrets.token_urlsafe(12)
        self.invites[tok] = (mesh_id, time.time() + 3600, 1)
        return tok

    # NodeService ---------------------------------------------------------
    async def new_mesh(self, opts: MeshOptions) -> str:
        self.calls.append(("new_mesh", (opts,)))
        self._n += 1
        mesh_id = f"brave-otter-lamp-{self._n:04x}"
        self.meshes[mesh_id] = self._make(mesh_id, opts)
        return mesh_id

    async def invite(self, mesh_id: str, ttl_s: int, uses: int, strict: bool = False) -> str:
        self.calls.append(("invite", (mesh_id, ttl_s, uses)))
        self._mesh(mesh_id)
        tok = "inv-" + secrets.token_urlsafe(12)
        self.invites[tok] = (mesh_id, time.time() + ttl_s, uses)
        return tok

    async def join_mesh(self, token: str, opts: MeshOptions) -> str:
        self.calls.append(("join_mesh", (token, opts)))
        if token not in self.invites:
            raise refused("invitation token is not valid")
        mesh_id, expires, uses = self.invites[token]
        if time.time() > expires:
            raise refused("invitation token has expired")
        if uses <= 0:
            raise refused("invitation token has been used up")
        if mesh_id in self.meshes:
            raise conflict(f"already a member of mesh {mesh_id!r}")
        remote = self.remote.get(mesh_id)
        if remote is None:
            raise unavailable(f"no member of mesh {mesh_id!r} could be reached")
        self.invites[token] = (mesh_id, expires, uses - 1)
        m = self._make(mesh_id, opts)
        m.nodes.update(remote.nodes)
        self.meshes[mesh_id] = m
        return mesh_id

    async def leave_mesh(self, mesh_id: str, *, force: bool = False) -> None:
        self.calls.append(("leave_mesh", (mesh_id,)))
        self._mesh(mesh_id)
        del self.meshes[mesh_id]

    async def list_meshes(self) -> list[MeshSummary]:
        return [
            MeshSummary(
                mesh_id=m.mesh_id,
                interface=f"smeg{i}",
                prefix=_prefix(m.mesh_id),
                role=m.role,  # type: ignore[arg-type]
                overlay_address=m.nodes[SELF_KEY].overlay_address,
                node_count=len(m.nodes),
            )
            for i, m in enumerate(self.meshes.values())
        ]

    async def get_mesh(self, mesh_id: str) -> MeshDetail:
        if mesh_id == "boom":
            raise RuntimeError("simulated bug in the daemon")
        m = self._mesh(mesh_id)
        return MeshDetail(
            mesh_id=mesh_id,
            interface="smeg0",
            prefix=_prefix(mesh_id),
            self_key=SELF_KEY,
            leader=min(m.nodes),
            nodes=sorted(m.nodes.values(), key=lambda n: n.public_key),
            # what a daemon reports when an exit offers ::/0 (see add_remote_mesh)
            routes=[
                SelectedRoute(
                    destination=r.destination,
                    gateway=n.public_key,
                    gateway_alias=n.alias,
                    path=list(r.path),
                    path_length=len(r.path),
                )
                for n in m.nodes.values()
                for r in n.routes
            ],
        )

    async def put_alias(self, mesh_id: str, alias: str) -> str:
        self._update_self(mesh_id, alias=alias.lower())
        return alias.lower()

    async def put_description(self, mesh_id: str, description: str) -> None:
        self._update_self(mesh_id, description=description)

    async def set_service(self, mesh_id: str, key: str, value: str) -> None:
        services = dict(self._self(mesh_id).services)
        services[key] = value
        self._update_self(mesh_id, services=services)

    async def delete_service(self, mesh_id: str, key: str) -> None:
        services = dict(self._self(mesh_id).services)
        if key not in services:
            raise ServiceError("unknown_service", f"no service {key!r} on this node", 404)
        del services[key]
        self._update_self(mesh_id, services=services)

    async def query_mesh(self, mesh_id: str, expr: str) -> Any:
        doc = (await self.get_mesh(mesh_id)).model_dump(mode="json")
        try:
            return jmespath.search(expr, doc)
        except jmespath.exceptions.JMESPathError as e:
            raise invalid_argument(f"bad JMESPath query: {' '.join(str(e).split())}") from None

    async def _details(self) -> list[MeshDetail]:
        return [await self.get_mesh(m) for m in sorted(self.meshes)]

    async def get_status(self) -> StatusResponse:
        return build_status("0.0-fake", SELF_KEY, await self._details(), self.dns_listen)

    async def ping(
        self, node: str, mesh_id: str | None, count: int, timeout_s: int
    ) -> PingResponse:
        """Resolution and paths as the daemon does them; every covered address answers."""
        self.calls.append(("ping", (node, mesh_id, count, timeout_s)))
        if mesh_id is not None:
            self._mesh(mesh_id)
        details = await self._details()
        target = resolve_node(node, details, mesh_id)
        path = path_to(target.address, details)
        ok = path.kind != "none"
        return PingResponse(
            mesh_id=target.mesh_id or path.mesh_id,
            public_key=target.node.public_key if target.node else None,
            alias=target.node.alias if target.node else "",
            address=target.address,
            path=path,
            sent=count,
            received=count if ok else 0,
            rtt_ms=[0.5] * count if ok else [],
            rtt_avg_ms=0.5 if ok else None,
            error=None if ok else "no reply",
        )

    async def get_graph(self, mesh_id: str | None, fmt: str) -> bytes:
        meshes = [self._mesh(mesh_id)] if mesh_id else list(self.meshes.values())
        lines = ["graph smegmesh {"]
        for m in meshes:
            lines.append(f'  subgraph "cluster_{m.mesh_id}" {{')
            for n in m.nodes.values():
                lines.append(f'    "{n.public_key[:8]}" [label="{n.alias or n.public_key[:8]}"];')
            lines.append("  }")
        lines.append("}")
        dot = "\n".join(lines) + "\n"
        if fmt == "dot":
            return dot.encode()
        if fmt == "svg":
            return b'<svg xmlns="http://www.w3.org/2000/svg"><!-- ' + dot.encode() + b" --></svg>"
        return PNG_MAGIC + b"\x00fake-png\xff"

    async def evict(self, mesh_id: str, node: str, cascade: bool) -> EvictResponse:
        self.calls.append(("evict", (mesh_id, node, cascade)))
        m = self._mesh(mesh_id)
        found = [k for k, n in m.nodes.items() if n.alias == node or k.startswith(node)]
        if len(found) != 1:
            raise ServiceError("unknown_node", f"no node matches {node!r}", 404)
        del m.nodes[found[0]]
        return EvictResponse(evicted=[found[0]])

    async def set_admin(self, mesh_id: str, node: str, admin: bool) -> AdminResponse:
        self._mesh(mesh_id)
        return AdminResponse(node=node, admin=admin, admins=[SELF_KEY])

    async def set_policy(self, mesh_id: str, policy: str) -> PolicyResponse:
        self._mesh(mesh_id)
        return PolicyResponse(mesh_id=mesh_id, invite_policy=policy)

    async def reserve_alias(self, mesh_id: str, alias: str, node: str | None) -> AliasReserved:
        self._mesh(mesh_id)
        return AliasReserved(alias=alias.lower(), node=node)

    async def list_invites(self, mesh_id: str) -> list[InviteInfo]:
        self._mesh(mesh_id)
        return []

    async def revoke_invite(self, mesh_id: str, token_id: str) -> InviteInfo:
        self._mesh(mesh_id)
        raise ServiceError("unknown_invite", f"no invitation with id {token_id!r}", 404)

    async def add_device(
        self,
        mesh_id: str,
        name: str,
        public_key: str | None = None,
        keep_key: bool = False,
        via: str | None = None,
    ) -> AddDeviceResponse:
        self.calls.append(("add_device", (mesh_id, name, public_key, keep_key, via)))
        self._mesh(mesh_id)
        info = DeviceInfo(
            public_key=public_key or "D" * 43 + "=",
            alias=name,
            overlay_address="fd00::d",
            sponsor=SELF_KEY,
            added=0.0,
        )
        return AddDeviceResponse(device=info, config="[Interface]\n", has_private_key=False)

    async def list_devices(self, mesh_id: str) -> list[DeviceInfo]:
        self._mesh(mesh_id)
        return []

    async def remove_device(self, mesh_id: str, device: str) -> DeviceInfo:
        self._mesh(mesh_id)
        raise ServiceError("unknown_device", f"no device {device!r}", 404)

    async def device_config(self, mesh_id: str, device: str) -> AddDeviceResponse:
        self.calls.append(("device_config", (mesh_id, device)))
        self._mesh(mesh_id)
        raise ServiceError("unknown_device", f"no device {device!r}", 404)


# --------------------------------------------------------------------------- serving


class LoopThread:
    """An asyncio loop in a background thread (the API server runs there)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@contextmanager
def served_unix(
    service: FakeNodeService | None = None, path: Path | None = None
) -> Iterator[tuple[Path, FakeNodeService]]:
    service = service or FakeNodeService()
    path = path or short_tmpdir() / "smegd.sock"
    lt = LoopThread()
    try:
        server: ApiServer = lt.run(serve_unix(create_app(service), path))
        try:
            yield path, service
        finally:
            lt.run(server.stop())
    finally:
        lt.close()


@contextmanager
def served_tcp(
    token: str,
    service: FakeNodeService | None = None,
    *,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[tuple[str, FakeNodeService]]:
    """The API on a free TCP port of 127.0.0.1: its base URL (``https://`` with
    ``tls``, a (certificate, key) pair of PEM files) and the service behind it."""
    service = service or FakeNodeService()
    lt = LoopThread()
    try:
        port = free_port()
        cert, key = tls if tls is not None else (None, None)
        server: ApiServer = lt.run(
            serve_tcp(
                create_app(service, token=token),
                "127.0.0.1",
                port,
                tls_certificate=cert,
                tls_key=key,
            )
        )
        try:
            yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", service
        finally:
            lt.run(server.stop())
    finally:
        lt.close()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listened on a moment ago (to serve on,
    or to be an API nobody answers at)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- stub servers


class StubHandler(BaseHTTPRequestHandler):
    """A request handler for :func:`stub_http` that logs nothing; :meth:`send_json` answers."""

    def send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


@contextmanager
def stub_http(
    handler: type[BaseHTTPRequestHandler],
    *,
    unix: Path | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[str]:
    """``handler`` served in a thread until the block ends: on the unix socket
    ``unix`` (its path is yielded), else on a free port of 127.0.0.1 (its base
    URL, ``https://`` with ``tls``, a (certificate, key) pair of PEM files)."""
    server: socketserver.BaseServer
    if unix is not None:
        server = _UnixHTTPServer(str(unix), handler)
        where = str(unix)
    else:
        server = tcp = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            tcp.socket = ctx.wrap_socket(tcp.socket, server_side=True)
        where = f"{'https' if tls else 'http'}://127.0.0.1:{tcp.server_address[1]}"
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield where
    finally:
        server.shutdown()
        server.server_close()
