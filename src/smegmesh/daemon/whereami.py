"""The peer side of endpoint discovery: answer ``WhereAmI`` (docs/NAT.md, issue 17).

A client asks its assigned peer which endpoint its WireGuard packets come
from; the peer answers from its own WireGuard status, read once for every
caller of a mesh within ``STATUS_CACHE_S``. The caller is authenticated by the
transport, so a member learns only its own endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from smegmesh.core.record import check_endpoint

__all__ = ["STATUS_CACHE_S", "StatusReads", "observed_endpoint"]

STATUS_CACHE_S = 2.0


def observed_endpoint(status: Any, key: bytes) -> str | None:
    """The endpoint WireGuard last saw ``key``'s packets from (None: no handshake)."""
    if status is None:
        return None
    p = status.peers.get(key)
    if p is None or p.last_handshake is None or not p.endpoint:
        return None
    try:
        return check_endpoint(p.endpoint)
    except ValueError:
        return None


class StatusReads:
    """The WireGuard status reads of a node's meshes that answer ``WhereAmI``."""

    def __init__(self, node: Any) -> None:
        self.node = node
        #: per mesh: the read in flight or done (dropped STATUS_CACHE_S after it finished)
        self._reads: dict[str, asyncio.Future[Any]] = {}

    async def observed(self, rt: Any, key: bytes) -> str | None:
        """Answer ``WhereAmI`` from ``key`` (one status read per mesh per ``STATUS_CACHE_S``).

        Single flight: the first call while there is no read of the mesh
        starts one, every other call awaits that same read (it was written to
        the cache only once finished: each call meanwhile read the whole
        interface again on the one WireGuard thread). The read is dropped
        ``STATUS_CACHE_S`` after it finished, call or not (a mesh left keeps
        nothing, and without ``directPeers`` no loop runs to clean up).
        """
        read = self._reads.get(rt.mesh_id)
        if read is None:
            read = asyncio.ensure_future(self._read_status(rt.ifname))
            self._reads[rt.mesh_id] = read
            read.add_done_callback(lambda done: self._expire_status(rt.mesh_id, done))
        # a caller that gives up (its connection closed) leaves the read to the others
        return observed_endpoint(await asyncio.shield(read), key)

    async def _read_status(self, ifname: str) -> Any:
        with contextlib.suppress(Exception):
            return await asyncio.get_running_loop().run_in_executor(
                self.node._wg_pool, self.node.backend.read, ifname
            )
        return None

    def _expire_status(self, mesh_id: str, read: asyncio.Future[Any]) -> None:
        def drop() -> None:
            if self._reads.get(mesh_id) is read:
                del self._reads[mesh_id]

        asyncio.get_running_loop().call_later(STATUS_CACHE_S, drop)
