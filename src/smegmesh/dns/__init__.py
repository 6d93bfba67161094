"""DNS for the overlay: ``ALIAS.MESHID.smeg.`` and friends to overlay addresses.

:mod:`smegmesh.dns.names` is the pure resolution layer (:class:`NameView`,
:func:`resolve`); :mod:`smegmesh.dns.server` the asyncio UDP/TCP server
(:class:`DnsServer`); :func:`resolver_help` the resolver set-up text.
"""

from smegmesh.dns.help import resolver_help
from smegmesh.dns.names import Answer, NameView, NodeName, Record, node_id_prefix, resolve
from smegmesh.dns.server import DnsServer, parse_hostport

__all__ = [
    "Answer",
    "DnsServer",
    "NameView",
    "NodeName",
    "Record",
    "node_id_prefix",
    "parse_hostport",
    "resolve",
    "resolver_help",
]
