"""Resolver set-up instructions (printed by ``smegctl dns-help``; also in docs/DNS.md)."""

from __future__ import annotations

import ipaddress

from smegmesh.core.endpoint import join_host_port

__all__ = ["DEFAULT_DNS_LISTEN", "resolver_help", "resolver_settings"]

#: The address the docs and the example configuration suggest for ``dnsListen``.
DEFAULT_DNS_LISTEN = "127.0.0.1:5353"

_TEMPLATE = """\
Pointing the system resolver at smegd's DNS server ({listen})
================================================================

smegd answers only for the `smeg.` zone (and the reverse `ip6.arpa.` zones
of the meshes' /64 prefixes). Send just those names to it and leave every
other name with your usual resolver.

Check it works first:

    dig @{dig_host} -p {port} ALIAS.MESHID.smeg AAAA

systemd-resolved, per link (systemd >= 252.3 for a loopback server on a link;
use the mesh's WireGuard interface, or any interface that stays up):

    resolvectl dns IFACE {resolved_addr}
    resolvectl domain IFACE '~smeg' '~d.f.ip6.arpa'
    resolvectl default-route IFACE false

  (`~` makes `smeg` a routing-only domain: only names under it go there;
  `default-route false` keeps other names away from this server. The
  setting is lost when the link goes away; set it again from a `postUp`
  hook, e.g. `resolvectl dns "$IFNAME" ...` ($IFNAME or %i is the
  mesh's interface).)

systemd-resolved, globally (a drop-in, survives reboots):

    # /etc/systemd/resolved.conf.d/smeg.conf
    [Resolve]
    DNS={resolved_addr}
    Domains=~smeg ~d.f.ip6.arpa

    systemctl restart systemd-resolved

  (Caveat: resolved may also send names that match no routing domain to
  a global DNS= server; smegd refuses those, or forwards them when a
  forwarder is configured, so prefer the per-link form if you have one.)

dnsmasq (e.g. NetworkManager's dns=dnsmasq, or a plain /etc/resolv.conf
that points at a local dnsmasq):

    # /etc/dnsmasq.d/smeg.conf
    server=/smeg/{dnsmasq_addr}
    server=/d.f.ip6.arpa/{dnsmasq_addr}

unbound:

    stub-zone:
        name: "smeg."
        stub-addr: {unbound_addr}
    domain-insecure: "smeg."

Plain /etc/resolv.conf cannot name a port, nor send only some domains to a
server: run dnsmasq or unbound on 127.0.0.1:53 as above (they forward every
other name to your usual upstream) and put "nameserver 127.0.0.1" in
/etc/resolv.conf.
"""


def _addresses(listen: str) -> dict[str, str]:
    from smegmesh.dns.server import parse_hostport

    host, port = parse_hostport(listen, default_port=53)
    try:
        ipaddress.ip_address(host)
    except ValueError:  # resolvectl, dnsmasq and unbound take addresses, not names
        raise ValueError(
            f"{host!r} is not an IP address (resolvectl, dnsmasq and unbound need the "
            "address smegd's DNS listens on, e.g. 127.0.0.1:5353)"
        ) from None
    if host == "0.0.0.0":
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return {
        "listen": listen,
        "dig_host": host,
        "port": str(port),
        "resolved_addr": join_host_port(host, port),
        "dnsmasq_addr": f"{host}#{port}",
        "unbound_addr": f"{host}@{port}",
    }


def resolver_help(listen: str = DEFAULT_DNS_LISTEN) -> str:
    """Instructions for sending ``smeg.`` queries to a server listening on ``listen``.

    ``listen`` is smegd's ``dnsListen`` value (``host:port`` or ``[v6]:port``).
    Raises ``ValueError`` (one line) when it is malformed.
    """
    return _TEMPLATE.format(**_addresses(listen))


def resolver_settings(listen: str = DEFAULT_DNS_LISTEN) -> dict[str, object]:
    """The same set-up as data (``smegctl dns-help --json``), for scripts."""
    a = _addresses(listen)
    return {
        "listen": listen,
        "check": f"dig @{a['dig_host']} -p {a['port']} ALIAS.MESHID.smeg AAAA",
        "domains": ["smeg", "d.f.ip6.arpa"],
        "resolvectl": [
            f"resolvectl dns IFACE {a['resolved_addr']}",
            "resolvectl domain IFACE '~smeg' '~d.f.ip6.arpa'",
            "resolvectl default-route IFACE false",
        ],
        "resolved_conf": f"[Resolve]\nDNS={a['resolved_addr']}\nDomains=~smeg ~d.f.ip6.arpa\n",
        "dnsmasq_conf": (
            f"server=/smeg/{a['dnsmasq_addr']}\nserver=/d.f.ip6.arpa/{a['dnsmasq_addr']}\n"
        ),
        "unbound_conf": (
            f'stub-zone:\n    name: "smeg."\n    stub-addr: {a["unbound_addr"]}\n'
            'domain-insecure: "smeg."\n'
        ),
    }
