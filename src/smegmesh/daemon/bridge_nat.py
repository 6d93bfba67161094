"""Bridge masquerading (docs/ROUTING.md): the overlay interfaces between which
this node translates forwarded traffic, applied through ``net.host``.
"""

from __future__ import annotations

import asyncio
import logging

from smegmesh.core.record import Role
from smegmesh.daemon.base import DaemonBase

log = logging.getLogger("smegd")


class BridgeNatOps(DaemonBase):
    """Mixin of the daemon: bridge NAT."""

    def _bridge_nat_interfaces(self) -> frozenset[str]:
        """The overlay interfaces between which this node masquerades forwarded traffic.

        A bridge (``advertiseRoute`` on any mesh, peer in at least two meshes)
        masquerades what it forwards from one mesh into another, so replies
        come back through it even when the destination's own gateway back is
        another bridge (WireGuard's AllowedIPs would drop them; docs/ROUTING.md).
        """
        if not self.config.bridge_masquerade:
            return frozenset()
        if not any(rt.advertise_routes for rt in self.meshes.values()):
            return frozenset()
        names = frozenset(
            rt.ifname for rt in self.meshes.values() if rt.up and rt.role == Role.PEER
        )
        return names if len(names) >= 2 else frozenset()

    async def _apply_bridge_nat(self) -> None:
        want = self._bridge_nat_interfaces()
        if want == self._bridge_nat or self.reconciler is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._wg_pool, self.reconciler.host.set_bridge_nat, want)
        except Exception as e:
            if self._bridge_nat_error != want:
                log.error("cannot set up bridge masquerading: %s (will retry)", e)
            self._bridge_nat_error = want
            return
        self._bridge_nat, self._bridge_nat_error = want, None
        if want:
            log.info("bridge: masquerading traffic forwarded between %s", ", ".join(sorted(want)))
        else:
            log.debug("bridge masquerading off")
