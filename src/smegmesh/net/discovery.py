"""Address discovery: the address this host is reached at (``ipDiscovery: outgoing``)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket

from smegmesh.net.netlink import iproute_class, off_loop

log = logging.getLogger("smegd")

_ULA = ipaddress.ip_network("fc00::/7")  # overlay prefixes live here


def outgoing_address() -> str | None:
    """The source address of the interface the default route leaves by (no packet sent).

    Without a default route (an isolated host or namespace) the first global
    unicast address that is not on a smegmesh interface and not a ULA, with a
    warning: it may not be the address other nodes can reach.
    """
    for fam, probe in ((socket.AF_INET6, "2001:db8::1"), (socket.AF_INET, "192.0.2.1")):
        with contextlib.suppress(OSError), socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            addr = ipaddress.ip_address(s.getsockname()[0].split("%")[0])
            if not (addr.is_loopback or addr.is_link_local or addr.is_unspecified):
                return str(addr)
    fallback = _first_global_address()
    if fallback is not None:
        log.warning(
            "ipDiscovery outgoing: no default route; advertising %s, the first global "
            "address (set publicEndpoint if other nodes reach this one elsewhere)",
            fallback,
        )
    return fallback


def _first_global_address() -> str | None:
    # pyroute2's synchronous API runs an event loop of its own, which cannot
    # nest in the daemon's: ask from a short-lived thread (a rare path).
    try:
        return off_loop(_list_first_global_address, timeout=10)
    except Exception as e:
        log.debug("cannot list addresses: %s", e)
        return None


def _list_first_global_address() -> str | None:
    try:
        iproute = iproute_class()
    except ImportError:
        return None
    try:
        with iproute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") or "" for link in ipr.get_links()}
            for msg in ipr.get_addr():
                if msg["scope"] != 0:  # RT_SCOPE_UNIVERSE: global addresses only
                    continue
                if names.get(msg["index"], "").startswith("smeg"):
                    continue
                text = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
                if not text:
                    continue
                addr = ipaddress.ip_address(text)
                if addr.is_loopback or addr.is_link_local or (addr.version == 6 and addr in _ULA):
                    continue
                return str(addr)
    except Exception as e:  # netlink unavailable: nothing to offer
        log.debug("cannot list addresses: %s", e)
    return None
