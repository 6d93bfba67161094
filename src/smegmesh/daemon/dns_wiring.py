"""The daemon's DNS wiring: the meshes' names served by ``dns.server`` and the
alias-clash report (the alias rule: ``views.alias_owners``).
"""

from __future__ import annotations

import logging
from typing import Any

from smegmesh.core.endpoint import listen_error
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
        try:
            await self.dns.start(dh, dp)
        except OSError as e:
            raise listen_error("dnsListen", dh, dp, e) from None
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
                # A member that owns our alias can switch its own to it and back
                # with each version of its record: one WARNING (and one "resolved")
                # per clash, not per switch; status still shows it (alias_conflict).
                again = (msg or rt.alias_clash) == rt.alias_clash_told
                if msg:
                    level = logging.DEBUG if again else logging.WARNING
                    log.log(level, "mesh %s: %s", rt.mesh_id, msg)
                elif rt.alias_clash:
                    level = logging.DEBUG if again else logging.INFO
                    log.log(level, "mesh %s: alias clash resolved", rt.mesh_id)
                    rt.alias_clash_told = rt.alias_clash
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
        from smegmesh.dns.names import NameView
        from smegmesh.dns.nametable import NameTable

        # Under churn a mesh changes many times a second: the names of the
        # members that did not change are reused (their NodeName while their
        # record is the same object), and the table recomputes only the owner
        # names of those that did (dns/nametable.py; ~80 ms -> a few ms per
        # pass at 3,000 members, docs/RESOURCES.md).
        old = self._dns_names
        new: dict[tuple[str, bytes], tuple[object, str, Any]] = {}
        names = []
        for rt in self.meshes.values():
            records = rt.node.live_records()
            devices = self._devices(rt)  # sponsored devices (issue 18)
            # a contested alias resolves to one node or device (reserved, else
            # first admitted: a device is admitted by its sponsor's certificate)
            owners = views.name_owners(records, devices, rt.alias_authority)
            for r in records:
                alias = r.alias if owners.get(r.alias) == r.wg_key else ""
                names.append(node_name(old, new, rt.mesh_id, r, alias))
            for d in devices:
                alias = d.alias if owners.get(d.alias) == d.wg_key else ""
                names.append(node_name(old, new, rt.mesh_id, d, alias))
        self._dns_names = new
        if self._dns_table is None:
            self._dns_table = NameTable()
        self._dns_table.sync(names)
        self._dns_serial += 1
        self.dns.update(NameView.of(self._dns_table, self._dns_serial))


def node_name(
    old: dict[tuple[str, bytes], tuple[object, str, Any]],
    new: dict[tuple[str, bytes], tuple[object, str, Any]],
    mesh_id: str,
    item: Any,
    alias: str,
) -> Any:
    """The NodeName of ``item`` (a record or a device) in ``mesh_id``: ``old``'s if unchanged."""
    from smegmesh.dns.names import NodeName, parse_address

    k = (mesh_id, item.wg_key)
    hit = old.get(k)
    if hit is not None and hit[0] is item and hit[1] == alias:
        name = hit[2]
    else:
        name = NodeName(mesh_id, alias, item.wg_key, parse_address(item.address))
    new[k] = (item, alias, name)
    return name
