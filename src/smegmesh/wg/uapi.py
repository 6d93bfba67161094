"""The WireGuard cross-platform UAPI text protocol (``get=1`` / ``set=1``).

Pure formatting and parsing (keys hex-encoded on the wire) plus a tiny
blocking client for a unix socket. Used by the userspace backend to drive
wireguard-go; see https://www.wireguard.com/xplatform/.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence

from smegmesh.core.wgconfig import InterfaceStatus, PeerStatus
from smegmesh.core.wgdiff import (
    AddPeer,
    RemovePeer,
    SetListenPort,
    SetPrivateKey,
    UpdatePeer,
    WgOp,
)
from smegmesh.wg.base import InterfaceNotFound, WgError
from smegmesh.wg.resolver import ResolveFn, literal_only

__all__ = ["ResolveFn", "UapiClient", "UapiError", "format_set", "parse_get"]


class UapiError(WgError):
    """The device answered with a non-zero errno."""

    def __init__(self, errno: int, request: str) -> None:
        super().__init__(f"UAPI {request} failed: errno={errno}")
        self.errno = errno


def _peer_lines(op: AddPeer | UpdatePeer | RemovePeer, resolve: ResolveFn) -> list[str]:
    if isinstance(op, RemovePeer):
        return [f"public_key={op.public_key.hex()}", "remove=true"]
    if isinstance(op, AddPeer):
        p = op.peer
        lines = [f"public_key={p.public_key.hex()}"]
        ep = resolve(p.endpoint) if p.endpoint is not None else None
        if ep is not None:
            lines.append(f"endpoint={ep}")
        lines.append(f"persistent_keepalive_interval={p.keepalive}")
        lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={ip}" for ip in sorted(p.allowed_ips))
        return lines
    lines = [f"public_key={op.public_key.hex()}", "update_only=true"]
    ep = resolve(op.endpoint) if op.endpoint is not None else None
    if ep is not None:
        lines.append(f"endpoint={ep}")
    if op.keepalive is not None:
        lines.append(f"persistent_keepalive_interval={op.keepalive}")
    if op.allowed_ips is not None:
        lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={ip}" for ip in sorted(op.allowed_ips))
    return lines


def format_set(ops: Sequence[WgOp], resolve: ResolveFn | None = None) -> list[str]:
    """``set=1`` requests (full text, each ending in a blank line) for ``ops``.

    Device-level keys must precede peer sections in one request, so a device
    op that follows a peer op starts a new request.
    """
    res = resolve or literal_only
    requests: list[list[str]] = []
    cur: list[str] = []
    in_peers = False
    for op in ops:
        if isinstance(op, SetPrivateKey | SetListenPort):
            if in_peers:
                requests.append(cur)
                cur, in_peers = [], False
            if isinstance(op, SetPrivateKey):
                cur.append(f"private_key={op.private_key.hex()}")
            else:
                cur.append(f"listen_port={op.listen_port}")
        else:
            in_peers = True
            cur.extend(_peer_lines(op, res))
    if cur:
        requests.append(cur)
    if not all(line.isprintable() for req in requests for line in req):
        # one key=value a line: a value with a newline would set keys of its own
        raise WgError("refusing a UAPI value that is not one printable line")
    return ["set=1\n" + "".join(line + "\n" for line in req) + "\n" for req in requests]


def parse_get(name: str, text: str) -> InterfaceStatus:
    """Parse a ``get=1`` answer (without the trailing blank line) into a status."""
    private_key: bytes | None = None
    listen_port: int | None = None
    peers: dict[bytes, PeerStatus] = {}
    cur: dict[str, object] | None = None
    errno = 0

    def flush() -> None:
        if cur is None:
            return
        key = cur["public_key"]
        assert isinstance(key, bytes)
        sec = int(str(cur.get("hs_sec", 0)))
        nsec = int(str(cur.get("hs_nsec", 0)))
        ips = cur.get("allowed", [])
        assert isinstance(ips, list)
        endpoint = cur.get("endpoint")
        peers[key] = PeerStatus(
            public_key=key,
            endpoint=str(endpoint) if endpoint is not None else None,
            allowed_ips=frozenset(ips),
            keepalive=int(str(cur.get("keepalive", 0))),
            last_handshake=(sec + nsec / 1e9) if sec or nsec else None,
            rx_bytes=int(str(cur.get("rx", 0))),
            tx_bytes=int(str(cur.get("tx", 0))),
        )

    for line in text.split("\n"):
        if not line:
            continue
        k, sep, v = line.partition("=")
        if not sep:
            raise WgError(f"malformed UAPI line {line!r}")
        if k == "public_key":
            flush()
            cur = {"public_key": bytes.fromhex(v), "allowed": []}
        elif k == "errno":
            errno = int(v)
        elif cur is None:
            if k == "private_key":
                private_key = bytes.fromhex(v)
            elif k == "listen_port":
                listen_port = int(v)
        elif k == "allowed_ip":
            allowed = cur["allowed"]
            assert isinstance(allowed, list)
            allowed.append(v)
        elif k == "endpoint":
            cur["endpoint"] = v
        elif k == "persistent_keepalive_interval":
            cur["keepalive"] = v
        elif k == "last_handshake_time_sec":
            cur["hs_sec"] = v
        elif k == "last_handshake_time_nsec":
            cur["hs_nsec"] = v
        elif k == "rx_bytes":
            cur["rx"] = v
        elif k == "tx_bytes":
            cur["tx"] = v
    flush()
    if errno:
        raise UapiError(errno, "get")
    public_key = None
    if private_key is not None and any(private_key):
        from smegmesh.core.wgdiff import public_key_of

        public_key = public_key_of(private_key)
    else:
        private_key = None
    return InterfaceStatus(
        name=name,
        public_key=public_key,
        listen_port=listen_port,
        peers=peers,
        private_key=private_key,
    )


class UapiClient:
    """Blocking client for one UAPI socket path; one connection per request."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    def _exchange(self, request: str) -> str:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            try:
                s.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise InterfaceNotFound(f"{self.path}: {exc.strerror}") from exc
            s.sendall(request.encode())
            chunks: list[bytes] = []
            tail = b""
            while True:
                data = s.recv(1 << 18)
                if not data:
                    break
                chunks.append(data)
                tail = (tail + data)[-2:]
                if tail == b"\n\n":
                    break
        except OSError as exc:
            raise WgError(f"UAPI {self.path}: {exc}") from exc
        finally:
            s.close()
        text = b"".join(chunks).decode()
        if not text.endswith("\n\n"):
            raise WgError(f"UAPI {self.path}: truncated answer")
        return text

    def get(self, name: str) -> InterfaceStatus:
        return parse_get(name, self._exchange("get=1\n\n"))

    def set(self, requests: Iterable[str]) -> None:
        for req in requests:
            answer = self._exchange(req).strip()
            if answer != "errno=0":
                try:
                    errno = int(answer.rpartition("=")[2])
                except ValueError:
                    errno = -1
                raise UapiError(errno, "set")

    def ping(self) -> bool:
        """True if something answers on the socket (cheap: connect only)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
            return True
        except OSError:
            return False
        finally:
            s.close()
