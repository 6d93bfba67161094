"""Policy of the TCP API (``apiListen``) that does not depend on the web framework."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback_host", "tcp_api_exposure_warning"]


def is_loopback_host(host: str) -> bool:
    """Does listening on ``host`` keep the API on this machine (127.0.0.0/8, ::1, localhost)?"""
    host = host.strip("[]")
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: it may resolve anywhere
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    return (mapped or addr).is_loopback


def tcp_api_exposure_warning(host: str, *, tls: bool) -> str | None:
    """The start-up warning for a TCP API reachable beyond loopback without TLS, or None."""
    if tls or is_loopback_host(host):
        return None
    where = "all addresses" if host.strip("[]") in ("::", "0.0.0.0") else host
    return (
        f"the TCP API listens on {where} without TLS: its bearer token and every answer "
        "cross the network in clear; set apiTlsCertificate and apiTlsKey, or listen on "
        "loopback only (e.g. apiListen: '[::1]:PORT')"
    )
