"""Bridge masquerading and the forwarding guard (docs/ROUTING.md): the overlay
interfaces between which this node translates forwarded traffic, and what it
forwards from them, applied through ``net.host`` as one nftables table.
"""

from __future__ import annotations

import asyncio
import logging

from smegmesh.core.desired import ForwardGuard, forward_guard
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

    def _forward_guard(self) -> ForwardGuard:
        """What this node forwards from its mesh interfaces (``core.desired.ForwardGuard``)."""
        return forward_guard(
            (rt.ifname, rt.mesh_id, rt.role, rt.advertise_defaults) for rt in self.meshes.values()
        )

    async def _apply_bridge_nat(self) -> None:
        nat, guard = self._bridge_nat_interfaces(), self._forward_guard()
        want = (nat, guard)
        if want == self._bridge_nat or self.reconciler is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._wg_pool, self.reconciler.host.set_rules, nat, guard)
        except Exception as e:
            if self._bridge_nat_error != want:
                log.error(
                    "cannot set up bridge masquerading and the forwarding guard: %s (will retry)", e
                )
            self._bridge_nat_error = want
            return
        old = self._bridge_nat
        self._bridge_nat, self._bridge_nat_error = want, None
        if old is None or old[0] != nat:
            if nat:
                log.info(
                    "bridge: masquerading traffic forwarded between %s", ", ".join(sorted(nat))
                )
            else:
                log.debug("bridge masquerading off")
        if old is None or old[1] != guard:
            _log_guard(guard)


def _log_guard(guard: ForwardGuard) -> None:
    non_exits = guard.non_exits()
    if non_exits:
        log.info(
            "forwarding guard: traffic from %s leaves only into this node's meshes "
            "(not an exit there: advertiseDefaults is off); drops are counted in nftables "
            "table ip6 smegmesh and logged by the kernel",
            ", ".join(sorted(non_exits)),
        )
    if guard.foreign_sources():
        log.info(
            "forwarding guard: a packet from a mesh interface with a source in another "
            "of this node's meshes is dropped (%s)",
            ", ".join(sorted(guard.interfaces)),
        )
