"""The UDP port a new mesh's WireGuard interface listens on.

Checked against the host before the mesh takes it (a bind test: WireGuard
binds the port on every address, v4 and v6): a requested ``--wgport`` that
another process or WireGuard interface holds is a clear error; an automatic
choice skips ports in use, from 51820 up, and says which one it took.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Collection

from smegmesh.daemon import service as svc

__all__ = ["DEFAULT_WG_PORT", "SCAN_LIMIT", "choose_wg_port", "udp_port_free"]

log = logging.getLogger("smegd")

DEFAULT_WG_PORT = 51820
#: ports tried for an automatic choice before giving up
SCAN_LIMIT = 1000


def udp_port_free(port: int) -> bool:
    """True if UDP ``port`` can be bound on all addresses (v6 and v4) right now."""
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:  # no IPv6 on this host
        s = None
    if s is not None:
        with s:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                s.bind(("::", port))
                return True
            except OSError:
                return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4:
        try:
            s4.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def choose_wg_port(
    mesh_id: str,
    requested: int | None,
    taken: Collection[int],
    *,
    is_free: Callable[[int], bool] = udp_port_free,
) -> int:
    """The listen port for mesh ``mesh_id``; ``taken``: ports of this node's other meshes.

    Raises ``ServiceError`` (409) when ``requested`` is in use, 503 when no port is free.
    """
    if requested is not None:
        if requested in taken:
            raise svc.conflict(
                f"--wgport {requested}: another mesh of this node listens on that port"
            )
        if not is_free(requested):
            raise svc.conflict(
                f"--wgport {requested}: UDP port {requested} is in use on this host "
                "(another process or WireGuard interface); choose another port, or leave "
                "--wgport out to take the next free one"
            )
        return requested
    skipped: list[int] = []
    for port in range(DEFAULT_WG_PORT, min(65536, DEFAULT_WG_PORT + SCAN_LIMIT)):
        if port in taken:
            continue
        if not is_free(port):
            skipped.append(port)
            continue
        if skipped:
            shown = ", ".join(str(p) for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
            log.info(
                "mesh %s: WireGuard listens on UDP port %d (in use on this host: %s)",
                mesh_id,
                port,
                shown,
            )
        else:
            log.info("mesh %s: WireGuard listens on UDP port %d", mesh_id, port)
        return port
    raise svc.unavailable(
        f"no free UDP port for WireGuard in {DEFAULT_WG_PORT}-{DEFAULT_WG_PORT + SCAN_LIMIT - 1}; "
        "give one with --wgport"
    )
