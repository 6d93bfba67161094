"""Host networking of an overlay interface: link state, MTU, addresses, routes, forwarding.

:class:`HostNetwork` uses pyroute2 (``IPRoute``, optionally inside a named
network namespace). Ownership rules, so nothing we did not create is touched:

- Routes: every route we add carries the route protocol number
  :data:`ROUTE_PROTO` (0x5e); :meth:`HostNetwork.read` reports only those, so
  the diff can only ever remove our own routes, and :meth:`remove` deletes
  exactly those.
- Addresses, MTU and link state: only on the overlay interface, which the
  daemon itself created. Link-local addresses are ignored.
- Bridge masquerading and the forwarding guard
  (:meth:`HostNetwork.set_rules`): one nftables table, ``ip6 smegmesh``, that
  the daemon owns whole; it is replaced atomically (one ``nft -f``
  transaction) and deleted when no longer needed. Nothing outside that table
  is touched.
- IPv6 forwarding (``net.ipv6.conf.all.forwarding``, per network namespace):
  interfaces *claim* it; we switch it on if it was off, and switch it back off
  only when the last claim goes and it was us who switched it on. Note that
  with forwarding on, Linux ignores router advertisements on interfaces whose
  ``accept_ra`` is 1 (as for any router); set ``accept_ra=2`` on uplinks that
  rely on SLAAC.

:class:`MemoryHost` is the in-process stand-in for tests and the simulator.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import subprocess
import threading
from collections.abc import Sequence
from operator import methodcaller
from typing import Any, Protocol

from smegmesh.core.desired import ForwardGuard
from smegmesh.core.wgconfig import HostStatus, Route
from smegmesh.core.wgdiff import (
    AddAddress,
    AddRoute,
    HostOp,
    RemoveAddress,
    RemoveRoute,
    SetForwarding,
    SetLinkUp,
    SetMtu,
    apply_host_ops,
)
from smegmesh.net.netlink import PerThread, iproute_class

log = logging.getLogger(__name__)

ROUTE_PROTO = 0x5E  # rtm_protocol of routes smegmesh installs
NFT_TABLE = "smegmesh"  # the ``ip6`` nftables table smegd owns (bridge NAT, forwarding guard)
#: kernel log lines of the guard's drops: at most this many a minute per rule
GUARD_LOG_RATE = "limit rate 10/minute burst 5 packets"
GUARD_LOG_NOT_EXIT = "smegmesh: dropped, not an exit: "
GUARD_LOG_SOURCE = "smegmesh: dropped, source of another mesh: "
IFA_F_NODAD = 0x02
MAIN_TABLE = 254
_FWD = "/proc/sys/net/ipv6/conf/all/forwarding"


class HostError(Exception):
    """A host networking operation failed."""


class HostBackend(Protocol):
    def read(self, interface: str) -> HostStatus: ...

    def is_up(self, interface: str) -> bool | None:
        """Whether the link is administratively up (None: no such link). One cheap read."""
        ...

    def apply(self, interface: str, ops: Sequence[HostOp]) -> None: ...

    def remove(self, interface: str) -> None:
        """Undo what we did for ``interface`` (routes, forwarding claim)."""
        ...

    def set_rules(self, nat: frozenset[str], guard: ForwardGuard) -> None:
        """Bridge NAT between ``nat`` and the forwarding ``guard``, in one transaction."""
        ...

    def close(self) -> None: ...


def _check_name(name: str) -> str:
    if not name or len(name) > 15 or not all(c.isalnum() or c in "._-" for c in name):
        raise ValueError(f"bad interface name {name!r}")
    return f'"{name}"'


def _names(names: frozenset[str]) -> str:
    return "{ " + ", ".join(_check_name(n) for n in sorted(names)) + " }"


def bridge_nat_ruleset(
    interfaces: frozenset[str], table: str = NFT_TABLE, guard: ForwardGuard | None = None
) -> str:
    """The ``nft -f`` input that makes table ``ip6 <table>`` masquerade between ``interfaces``.

    Traffic that arrives on one overlay interface and leaves by another gets
    the source address of the outgoing interface (this node's overlay address
    in that mesh), so replies come back through this bridge whatever gateway
    the destination uses back (docs/ROUTING.md). Locally originated traffic and
    traffic staying in one mesh are not touched. The transaction first creates
    the table (so the delete cannot fail), deletes it, and recreates it: the
    replacement is atomic. With fewer than two interfaces and nothing to
    guard the table is just removed.

    ``guard`` (:class:`ForwardGuard`) adds two filter chains: ``mesh-forward``
    drops what arrives on a mesh interface where this node is no exit and
    would leave by an interface that is none of its meshes';
    ``mesh-sources`` drops what arrives on a mesh interface with a source in
    another of this node's mesh prefixes (before routing: forwarded or for
    this node). Each drop is counted, and logged by the kernel at most
    :data:`GUARD_LOG_RATE` (prefix :data:`GUARD_LOG_NOT_EXIT` or
    :data:`GUARD_LOG_SOURCE`).
    """
    for name in interfaces:
        _check_name(name)
    lines = [f"add table ip6 {table}", f"delete table ip6 {table}"]
    body = _rules(interfaces, guard or ForwardGuard())
    if body:
        lines += [f"table ip6 {table} {{", *body, "}"]
    return "\n".join(lines) + "\n"


def _rules(nat: frozenset[str], guard: ForwardGuard) -> list[str]:
    """The chains of the table (none: the table is only removed)."""
    return _nat_chain(nat) + _guard_chains(guard)


def _nat_chain(interfaces: frozenset[str]) -> list[str]:
    if len(interfaces) < 2:
        return []
    lines = [
        "  chain bridge-nat {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    for out in sorted(interfaces):
        ins = _names(interfaces - {out})
        lines.append(f"    iifname {ins} oifname {_check_name(out)} masquerade")
    return [*lines, "  }"]


def _guard_chains(guard: ForwardGuard) -> list[str]:
    lines: list[str] = []
    sources = guard.foreign_sources()
    if sources:
        lines += [
            "  chain mesh-sources {",
            "    type filter hook prerouting priority filter; policy accept;",
        ]
        for ifname in sorted(sources):
            nets = ", ".join(str(ipaddress.IPv6Network(p)) for p in sorted(sources[ifname]))
            match = f"iifname {_check_name(ifname)} ip6 saddr {{ {nets} }}"
            lines.append(f'    {match} {GUARD_LOG_RATE} log prefix "{GUARD_LOG_SOURCE}" level warn')
            lines.append(f"    {match} counter drop")
        lines.append("  }")
    non_exits = guard.non_exits()
    if non_exits:
        match = f"iifname {_names(non_exits)} oifname != {_names(guard.interfaces)}"
        lines += [
            "  chain mesh-forward {",
            "    type filter hook forward priority filter; policy accept;",
            f'    {match} {GUARD_LOG_RATE} log prefix "{GUARD_LOG_NOT_EXIT}" level warn',
            f"    {match} counter drop",
            "  }",
        ]
    return lines


class MemoryHost:
    """Host state as a dict; no system calls."""

    def __init__(self) -> None:
        self.state: dict[str, HostStatus] = {}
        self.reads = 0
        self.applied: list[tuple[str, tuple[HostOp, ...]]] = []
        self.bridge_nat: frozenset[str] = frozenset()
        self.guard = ForwardGuard()

    def read(self, interface: str) -> HostStatus:
        self.reads += 1
        return self.state.get(interface, HostStatus(interface))

    def is_up(self, interface: str) -> bool | None:
        st = self.state.get(interface)
        return None if st is None or not st.exists else st.up

    def apply(self, interface: str, ops: Sequence[HostOp]) -> None:
        self.state[interface] = apply_host_ops(self.read(interface), ops)
        self.applied.append((interface, tuple(ops)))

    def remove(self, interface: str) -> None:
        self.state.pop(interface, None)

    def set_rules(self, nat: frozenset[str], guard: ForwardGuard) -> None:
        bridge_nat_ruleset(nat, guard=guard)  # same validation as the real thing
        self.bridge_nat = nat if len(nat) >= 2 else frozenset()
        self.guard = guard

    def close(self) -> None:
        self.state.clear()


class HostNetwork:
    """Real host networking through rtnetlink (pyroute2)."""

    def __init__(self, netns: str | None = None, *, route_proto: int = ROUTE_PROTO) -> None:
        self.netns = netns
        self.route_proto = route_proto
        self._lock = threading.RLock()
        #: pyroute2's sync API runs its own event loop: one socket per thread
        self._ipr: PerThread[Any] = PerThread(self._make_ipr, methodcaller("close"))
        self._fwd_claims: set[str] = set()
        self._fwd_original: bool | None = None  # value before our first claim

    # ---------------------------------------------------------------- helpers

    def _ip(self) -> Any:
        return self._ipr.get()

    def _make_ipr(self) -> Any:
        iproute = iproute_class()
        return iproute(netns=self.netns) if self.netns else iproute()

    def _index(self, interface: str) -> int | None:
        found = self._ip().link_lookup(ifname=interface)
        return int(found[0]) if found else None

    def _need_index(self, interface: str) -> int:
        idx = self._index(interface)
        if idx is None:
            raise HostError(f"interface {interface} does not exist")
        return idx

    def _read_forwarding(self) -> bool:
        if self.netns is None:
            with open(_FWD) as f:
                return f.read().strip() == "1"
        out = subprocess.run(
            ["ip", "netns", "exec", self.netns, "cat", _FWD],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.strip() == "1"

    def _write_forwarding(self, on: bool) -> None:
        value = "1" if on else "0"
        if self.netns is None:
            with open(_FWD, "w") as f:
                f.write(value)
            return
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                "sysctl",
                "-q",
                "-w",
                f"net.ipv6.conf.all.forwarding={value}",
            ],
            check=True,
            capture_output=True,
        )

    # ------------------------------------------------------------------- read

    def read(self, interface: str) -> HostStatus:
        with self._lock:
            ipr = self._ip()
            idx = self._index(interface)
            fwd = interface in self._fwd_claims and self._read_forwarding()
            if idx is None:
                return HostStatus(interface, exists=False, forwarding=fwd)
            (link,) = ipr.get_links(idx)
            up = bool(link["flags"] & 1)  # IFF_UP
            mtu = link.get("IFLA_MTU") or link.get_attr("IFLA_MTU")
            addrs: set[str] = set()
            for msg in ipr.get_addr(family=socket.AF_INET6, index=idx):
                addr = msg.get_attr("IFA_ADDRESS")
                if addr is None or ipaddress.ip_address(addr).is_link_local:
                    continue
                addrs.add(str(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}")))
            routes: set[Route] = set()
            for msg in ipr.get_routes(family=socket.AF_INET6, table=MAIN_TABLE):
                if msg["proto"] != self.route_proto or msg.get_attr("RTA_OIF") != idx:
                    continue
                dst = msg.get_attr("RTA_DST") or "::"
                dest = str(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
                routes.add(Route(dest, msg.get_attr("RTA_GATEWAY")))
            return HostStatus(
                interface=interface,
                exists=True,
                up=up,
                mtu=int(mtu) if mtu is not None else None,
                addresses=frozenset(addrs),
                routes=frozenset(routes),
                forwarding=fwd,
            )

    def is_up(self, interface: str) -> bool | None:
        with self._lock:
            idx = self._index(interface)
            if idx is None:
                return None
            (link,) = self._ip().get_links(idx)
            return bool(link["flags"] & 1)  # IFF_UP

    # ------------------------------------------------------------------ apply

    def apply(self, interface: str, ops: Sequence[HostOp]) -> None:
        if not ops:
            return
        with self._lock:
            ipr = self._ip()
            idx = None
            for op in ops:
                if isinstance(op, SetForwarding):
                    self._set_forwarding(interface, op.enabled)
                    continue
                if idx is None:
                    idx = self._need_index(interface)
                try:
                    self._apply_one(ipr, idx, op)
                except Exception as exc:
                    raise HostError(f"{interface}: {op}: {exc}") from exc

    def _apply_one(self, ipr: Any, idx: int, op: HostOp) -> None:
        if isinstance(op, SetLinkUp):
            ipr.link("set", index=idx, state="up" if op.up else "down")
        elif isinstance(op, SetMtu):
            ipr.link("set", index=idx, mtu=op.mtu)
        elif isinstance(op, AddAddress | RemoveAddress):
            iface = ipaddress.ip_interface(op.address)
            if isinstance(op, AddAddress):
                ipr.addr(
                    "add",
                    index=idx,
                    address=str(iface.ip),
                    prefixlen=iface.network.prefixlen,
                    family=socket.AF_INET6 if iface.version == 6 else socket.AF_INET,
                    flags=IFA_F_NODAD,
                )
            else:
                ipr.addr(
                    "del",
                    index=idx,
                    address=str(iface.ip),
                    prefixlen=iface.network.prefixlen,
                    family=socket.AF_INET6 if iface.version == 6 else socket.AF_INET,
                )
        elif isinstance(op, AddRoute | RemoveRoute):
            self._route(ipr, "replace" if isinstance(op, AddRoute) else "del", idx, op.route)

    def _route(self, ipr: Any, cmd: str, idx: int, route: Route) -> None:
        net = ipaddress.ip_network(route.destination, strict=False)
        kw: dict[str, Any] = {
            "dst": str(net.network_address),
            "dst_len": net.prefixlen,
            "oif": idx,
            "proto": self.route_proto,
            "table": MAIN_TABLE,
            "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET,
        }
        if route.via is not None:
            kw["gateway"] = route.via
        try:
            ipr.route(cmd, **kw)
        except Exception as exc:
            # Deleting a route that the kernel already dropped (link went down) is fine.
            if cmd == "del" and getattr(exc, "code", None) == 3:  # ESRCH
                return
            raise

    def _set_forwarding(self, interface: str, enabled: bool) -> None:
        if enabled:
            if not self._fwd_claims:
                current = self._read_forwarding()
                self._fwd_original = current
                if not current:
                    self._write_forwarding(True)
            elif not self._read_forwarding():
                self._write_forwarding(True)
            self._fwd_claims.add(interface)
        else:
            self._fwd_claims.discard(interface)
            if not self._fwd_claims and self._fwd_original is False:
                self._write_forwarding(False)
                self._fwd_original = None

    # ------------------------------------------------------------ bridge NAT

    def set_rules(self, nat: frozenset[str], guard: ForwardGuard) -> None:
        """Replace our nftables table; see :func:`bridge_nat_ruleset`."""
        ruleset = bridge_nat_ruleset(nat, guard=guard)
        needed = bool(_rules(nat, guard))  # more than the removal of the table
        argv = ["nft", "-f", "-"]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        try:
            proc = subprocess.run(argv, input=ruleset, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            if not needed:
                return  # nothing to remove when nft is not even installed
            raise HostError(f"nft: {exc}") from exc
        if proc.returncode != 0 and needed:
            raise HostError(f"nft: {proc.stderr.strip()[:300]}")

    # ---------------------------------------------------------------- cleanup

    def remove(self, interface: str) -> None:
        """Delete our routes on ``interface`` and drop its forwarding claim."""
        with self._lock:
            status = self.read(interface)
            if status.exists:
                idx = self._need_index(interface)
                for route in status.routes:
                    with contextlib.suppress(Exception):
                        self._route(self._ip(), "del", idx, route)
            if interface in self._fwd_claims:
                self._set_forwarding(interface, False)

    def close(self) -> None:
        with self._lock:
            for interface in list(self._fwd_claims):
                self._set_forwarding(interface, False)
            self._ipr.close()
