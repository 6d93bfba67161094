"""NODE arguments: an alias, a public key, an overlay address, or a unique prefix of one.

One resolver for every command that names a node (``evict``, ``admin``,
``ping``...). Exact matches win over prefixes; an ambiguous prefix is an error
that lists the candidates; nothing found is an error that says what was tried.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from smegmesh.core.identity import key_to_text
from smegmesh.core.record import NodeRecord
from smegmesh.daemon.service import ServiceError, invalid_argument

__all__ = ["Candidate", "resolve_node"]

MAX_LISTED = 8


@dataclass(frozen=True, slots=True)
class Candidate:
    key: bytes
    alias: str
    address: str

    @classmethod
    def of(cls, r: NodeRecord) -> Candidate:
        return cls(r.wg_key, r.alias, r.address)

    def describe(self) -> str:
        name = f"{self.alias} " if self.alias else ""
        return f"{name}{key_to_text(self.key)[:12]}… ({self.address})"


def _canon_addr(text: str) -> str | None:
    try:
        return str(ipaddress.IPv6Address(text.split("/")[0]))
    except ValueError:
        return None


def resolve_node(candidates: Iterable[Candidate], text: str, *, what: str = "node") -> Candidate:
    """The one candidate ``text`` names (raises ``invalid_argument``/``not_found``)."""
    text = text.strip()
    if not text:
        raise invalid_argument(f"{what}: empty name")
    cands = list({c.key: c for c in candidates}.values())
    lower = text.lower()
    addr = _canon_addr(text)
    exact = [
        c
        for c in cands
        if key_to_text(c.key) == text
        or (c.alias and c.alias.lower() == lower)
        or (addr is not None and c.address == addr)
    ]
    if len(exact) == 1:
        return exact[0]
    found = exact or [
        c
        for c in cands
        if key_to_text(c.key).startswith(text)
        or (c.alias and c.alias.lower().startswith(lower))
        or c.address.startswith(lower)
    ]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ServiceError(
            "unknown_node",
            f"no {what} matches {text!r} (give an alias, public key, overlay address "
            "or a unique prefix of one)",
            404,
        )
    listed = ", ".join(c.describe() for c in found[:MAX_LISTED])
    more = f" and {len(found) - MAX_LISTED} more" if len(found) > MAX_LISTED else ""
    raise invalid_argument(f"{what} {text!r} is ambiguous: {listed}{more}")
