"""Kernel WireGuard through generic netlink (pyroute2 ``WireGuard``).

Devices are links of kind ``wireguard``. Message building and dump parsing
are pure functions (:func:`build_set_requests`, :func:`parse_dump`), unit
tested without the module; the backend itself only moves them over netlink.
A device dump may be split over several messages, with one peer's allowed IPs
continued in the next message: :func:`parse_dump` merges by public key.
"""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from smegmesh.core.endpoint import split_host_port
from smegmesh.core.wgconfig import InterfaceStatus, PeerStatus
from smegmesh.core.wgdiff import (
    AddPeer,
    RemovePeer,
    SetListenPort,
    SetPrivateKey,
    UpdatePeer,
    WgOp,
    public_key_of,
)
from smegmesh.net.netlink import PerThread, iproute_class, off_loop, wireguard_class
from smegmesh.wg.base import BackendUnavailable, InterfaceNotFound, WgError
from smegmesh.wg.resolver import (
    EndpointResolver,
    Report,
    ResolveFn,
    SentNames,
    literal_only,
    resolve_ops,
)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _set_endpoint(d: dict[str, Any], endpoint: str, resolve: ResolveFn) -> None:
    """``endpoint_addr``/``endpoint_port`` of ``d``; left out if it does not resolve now."""
    ep = resolve(endpoint)
    if ep is not None:
        d["endpoint_addr"], d["endpoint_port"] = split_host_port(ep)


@dataclass
class SetRequest:
    """Arguments of one ``pyroute2.WireGuard.set`` call."""

    private_key: str | None = None  # base64
    listen_port: int | None = None
    peer: dict[str, Any] | None = None

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.private_key is not None:
            out["private_key"] = self.private_key
        if self.listen_port is not None:
            out["listen_port"] = self.listen_port
        if self.peer is not None:
            out["peer"] = self.peer
        return out


def peer_dict(
    op: AddPeer | UpdatePeer | RemovePeer, resolve: ResolveFn = literal_only
) -> dict[str, Any]:
    """The pyroute2 peer structure for one peer operation."""
    if isinstance(op, RemovePeer):
        return {"public_key": _b64(op.public_key), "remove": True}
    if isinstance(op, AddPeer):
        p = op.peer
        d: dict[str, Any] = {"public_key": _b64(p.public_key)}
        if p.endpoint is not None:
            _set_endpoint(d, p.endpoint, resolve)
        d["persistent_keepalive"] = p.keepalive
        d["replace_allowed_ips"] = True
        d["allowed_ips"] = sorted(p.allowed_ips)
        return d
    d = {"public_key": _b64(op.public_key), "update_only": True}
    if op.endpoint is not None:
        _set_endpoint(d, op.endpoint, resolve)
    if op.keepalive is not None:
        d["persistent_keepalive"] = op.keepalive
    if op.allowed_ips is not None:
        d["replace_allowed_ips"] = True
        d["allowed_ips"] = sorted(op.allowed_ips)
    return d


def build_set_requests(ops: Sequence[WgOp], resolve: ResolveFn = literal_only) -> list[SetRequest]:
    """One request for the device settings (if any), then one per peer op, in order."""
    out: list[SetRequest] = []
    dev = SetRequest()
    for op in ops:
        if isinstance(op, SetPrivateKey):
            dev.private_key = _b64(op.private_key)
        elif isinstance(op, SetListenPort):
            dev.listen_port = op.listen_port
        else:
            if dev.private_key is not None or dev.listen_port is not None:
                out.append(dev)
                dev = SetRequest()
            out.append(SetRequest(peer=peer_dict(op, resolve)))
    if dev.private_key is not None or dev.listen_port is not None:
        out.append(dev)
    return out


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def _key(value: Any) -> bytes | None:
    if value is None:
        return None
    raw = base64.b64decode(value)
    return raw if any(raw) else None


@dataclass
class _PeerAcc:
    key: bytes
    endpoint: str | None = None
    keepalive: int = 0
    handshake: float | None = None
    rx: int = 0
    tx: int = 0
    ips: set[str] = field(default_factory=set)


def _endpoint_text(ep: Any) -> str | None:
    if ep is None:
        return None
    addr, port = ep["addr"], ep["port"]
    if addr is None:
        return None
    return f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"


def parse_dump(name: str, messages: Iterable[Any]) -> InterfaceStatus:
    """Merge the (possibly multi-part) ``WG_CMD_GET_DEVICE`` dump into one status."""
    private_key: bytes | None = None
    listen_port: int | None = None
    peers: dict[bytes, _PeerAcc] = {}
    for msg in messages:
        pk = _key(_attr(msg, "WGDEVICE_A_PRIVATE_KEY"))
        if pk is not None:
            private_key = pk
        port = _attr(msg, "WGDEVICE_A_LISTEN_PORT")
        if port is not None:
            listen_port = int(port)
        for peer in _attr(msg, "WGDEVICE_A_PEERS") or ():
            key = _key(peer.get_attr("WGPEER_A_PUBLIC_KEY"))
            if key is None:
                continue
            acc = peers.get(key)
            if acc is None:
                acc = peers[key] = _PeerAcc(key)
            ep = peer.get_attr("WGPEER_A_ENDPOINT")
            if ep is not None:
                acc.endpoint = _endpoint_text(ep)
            ka = peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL")
            if ka is not None:
                acc.keepalive = int(ka)
            hs = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
            if hs is not None and (hs["tv_sec"] or hs["tv_nsec"]):
                acc.handshake = hs["tv_sec"] + hs["tv_nsec"] / 1e9
            rx = peer.get_attr("WGPEER_A_RX_BYTES")
            if rx is not None:
                acc.rx = int(rx)
            tx = peer.get_attr("WGPEER_A_TX_BYTES")
            if tx is not None:
                acc.tx = int(tx)
            for aip in peer.get_attr("WGPEER_A_ALLOWEDIPS") or ():
                addr = aip.get("addr")
                if addr:
                    acc.ips.add(str(addr))
    return InterfaceStatus(
        name=name,
        public_key=public_key_of(private_key) if private_key else None,
        listen_port=listen_port,
        peers={
            k: PeerStatus(k, a.endpoint, frozenset(a.ips), a.keepalive, a.handshake, a.rx, a.tx)
            for k, a in peers.items()
        },
        private_key=private_key,
    )


def _close_socks(socks: tuple[Any, Any]) -> None:
    for obj in socks:
        with contextlib.suppress(Exception):
            obj.close()


class KernelBackend:
    """WireGuard devices in the kernel (needs the ``wireguard`` module)."""

    kind = "kernel"

    def __init__(self, netns: str | None = None, *, report: Report | None = None) -> None:
        self.netns = netns
        self._lock = threading.RLock()
        self._resolve = EndpointResolver(report=report)
        self._names = SentNames(self._resolve)
        #: (IPRoute, WireGuard): pyroute2's sync sockets run an event loop of
        #: their own, so each is used in the thread that made it (smegd makes
        #: the backend in its event loop, where making one raised "This event
        #: loop is already running", and uses it in its WireGuard worker)
        self._socks: PerThread[tuple[Any, Any]] = PerThread(self._make_socks, _close_socks)
        self._known: set[str] = set()
        off_loop(self._probe, timeout=None)  # BackendUnavailable if not

    def _probe(self) -> None:
        self._socks.get()
        self._socks.close()

    def _make_socks(self) -> tuple[Any, Any]:
        """This thread's (IPRoute, WireGuard) sockets."""
        try:
            iproute, wireguard = iproute_class(), wireguard_class()
        except ImportError as exc:  # pragma: no cover - pyroute2 is a dependency
            raise BackendUnavailable(f"pyroute2 missing: {exc}") from exc
        ipr = iproute(netns=self.netns) if self.netns else iproute()
        try:
            wg = wireguard(netns=self.netns) if self.netns else wireguard()
        except Exception as exc:
            ipr.close()
            raise BackendUnavailable(
                f"kernel WireGuard unavailable ({exc}); load the wireguard module"
            ) from exc
        return ipr, wg

    @property
    def _ipr(self) -> Any:
        return self._socks.get()[0]

    @property
    def _wg(self) -> Any:
        return self._socks.get()[1]

    def _exists(self, name: str) -> bool:
        return bool(self._ipr.link_lookup(ifname=name))

    def ensure_interface(self, name: str) -> bool:
        with self._lock:
            self._known.add(name)
            if self._exists(name):
                return False
            try:
                self._ipr.link("add", ifname=name, kind="wireguard")
            except Exception as exc:
                raise WgError(f"cannot create wireguard device {name}: {exc}") from exc
            return True

    def read(self, name: str) -> InterfaceStatus:
        with self._lock:
            try:
                return parse_dump(name, self._wg.info(name))
            except Exception as exc:
                if not self._exists(name):
                    raise InterfaceNotFound(name) from exc
                raise WgError(f"{name}: {exc}") from exc

    def apply(self, name: str, ops: Sequence[WgOp]) -> list[WgOp]:
        with self._lock:
            send, applied = resolve_ops(ops, self._resolve)
            for req in build_set_requests(send):
                try:
                    self._wg.set(name, **req.kwargs())
                except Exception as exc:
                    raise WgError(f"{name}: set {req}: {exc}") from exc
            self._names.note(name, send, applied)
            return applied

    def check(self, name: str) -> bool:
        with self._lock:
            if self._exists(name):
                return False
            self.ensure_interface(name)
            return True

    def moved_endpoints(self, name: str, wanted: Mapping[bytes, str]) -> list[bytes]:
        with self._lock:
            return self._names.moved(name, wanted)

    def remove_interface(self, name: str) -> None:
        with self._lock:
            self._names.forget(name)
            self._known.discard(name)
            if self._exists(name):
                with contextlib.suppress(Exception):
                    self._ipr.link("del", ifname=name)

    def close(self) -> None:
        self._resolve.close()
        with self._lock:
            self._socks.close()
