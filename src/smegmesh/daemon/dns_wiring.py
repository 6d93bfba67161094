"""The daemon's DNS wiring: the meshes' names served by ``dns.server`` and the
alias-clash report (the alias rule: ``views.alias_owners``).
"""

from __future__ import annotations

import logging

from smegmesh.daemon import views
from smegmesh.daemon.base import DaemonBase

log = logging.getLogger("smegd")


class DnsOps(DaemonBase):
    """Mixin of the daemon: names for the embedded DNS server."""

    async def _start_dns(self) -> None:
        """The embedded DNS server on ``dnsListen`` (names filled by :meth:`_update_dns`)."""
        from smegmesh.dns.names import NameView
        from smegmesh.dns.server import DnsServer

        cfg = self.config
        self.dns = DnsServer(NameView(), ttl=cfg.dns_ttl, forwarder=cfg.dns_forwarder)
        dh, dp = cfg.dns_listen_addr  # type: ignore[misc]
        await self.dns.start(dh, dp)
        log.info("DNS on %s", cfg.dns_listen)

    def _report_alias_clashes(self) -> None:
        """Log when this node's alias is lost to another claimant (docs/QUERY.md)."""
        for rt in self.meshes.values():
            version = rt.node.mesh.version
            if version == rt.alias_checked:
                continue
            rt.alias_checked = version
            msg = views.alias_conflict(
                rt.node.live_records(),
                self.identity.wg_public_key,
                rt.alias_authority,
            )
            if msg != rt.alias_clash:
                if msg:
                    log.warning("mesh %s: %s", rt.mesh_id, msg)
                elif rt.alias_clash:
                    log.info("mesh %s: alias clash resolved", rt.mesh_id)
                rt.alias_clash = msg

    def _update_dns(self) -> None:
        if self.dns is None:
            return
        # Rebuild (and bump the SOA serial, dropping the answer cache) only when
        # a mesh changed, joined or left: not on every pass of the apply loop.
        key = tuple(sorted((m, rt.node.mesh.version) for m, rt in self.meshes.items()))
        if key == self._dns_key:
            return
        self._dns_key = key
        from smegmesh.dns.names import NameView, NodeName, parse_address

        names = []
        for rt in self.meshes.values():
            records = rt.node.live_records()
            # a contested alias resolves to one node (reserved, else first admitted)
            owners = views.alias_owners(records, rt.alias_authority)
            for r in records:
                alias = r.alias if owners.get(r.alias) == r.wg_key else ""
                names.append(NodeName(rt.mesh_id, alias, r.wg_key, parse_address(r.address)))
            for d in self._devices(rt):  # sponsored devices (issue 18)
                alias = d.alias if d.alias not in owners else ""
                names.append(NodeName(rt.mesh_id, alias, d.wg_key, parse_address(d.address)))
        self._dns_serial += 1
        self.dns.update(NameView(names, serial=self._dns_serial))
