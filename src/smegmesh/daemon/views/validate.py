"""Checks of user input (HTTP validation) and the alias messages of the daemon.

The ownership rule itself is the core's (:mod:`smegmesh.core.aliases`); here
are the ``invalid_argument`` / ``conflict`` errors the API answers with and
the one-line warning shown to a node whose alias another node keeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from smegmesh.core import aliases
from smegmesh.core.authority import Authority
from smegmesh.core.devices import LiveDevice
from smegmesh.core.record import (
    ALIAS_RE,
    ALIAS_RULE,
    MAX_DESCRIPTION_BYTES,
    MAX_SERVICE_VALUE_BYTES,
    MAX_SERVICES,
    SERVICE_KEY_RE,
    NodeRecord,
)
from smegmesh.daemon.service import conflict, invalid_argument
from smegmesh.daemon.views.common import _short

__all__ = [
    "alias_conflict",
    "alias_owners",
    "check_alias_free",
    "name_owners",
    "validate_alias",
    "validate_description",
    "validate_service",
]

alias_owners = aliases.alias_owners
name_owners = aliases.name_owners


def _describe(rec: NodeRecord) -> str:
    return f"{_short(rec.wg_key)}… ({rec.address})"


def alias_conflict(
    records: Iterable[NodeRecord], self_key: bytes, authority: Authority | None = None
) -> str | None:
    """A one-line message if this node's alias is owned by another node, else None."""
    rival = aliases.alias_rival(records, self_key, authority)
    if rival is None:
        return None
    alias, owner = rival
    if owner is None:
        return f"alias {alias!r} is reserved for another node: choose another with put-alias"
    return (
        f"alias {alias!r} is also claimed by node {_describe(owner)}, which keeps it; "
        "this node is not reachable by that name: choose another with put-alias"
    )


def check_alias_free(
    records: Iterable[NodeRecord],
    self_key: bytes,
    alias: str,
    authority: Authority | None = None,
    devices: Iterable[LiveDevice] = (),
) -> None:
    """Raise ``conflict`` (409) if another node or a sponsored device already uses
    it, or an admin reserved it for another node (``aliases.name_owners`` would
    not give it to us)."""
    if authority is not None:
        holder = authority.reservations.get(alias.lower())
        if holder is not None and holder != self_key:
            raise conflict(f"alias {alias!r} is reserved by an admin for another node")
    user = aliases.alias_user(records, self_key, alias)
    if user is not None:
        raise conflict(f"alias {alias!r} is already used by node {_describe(user)}")
    if any(d.alias == alias.lower() for d in devices):
        raise conflict(f"alias {alias!r} is already a device's")


def validate_alias(alias: str, field: str = "alias") -> str:
    """The alias as stored (lower case); ``invalid_argument`` naming ``field`` if bad."""
    a = alias.lower()
    if a and ALIAS_RE.fullmatch(a) is None:
        raise invalid_argument(f"{field}: {ALIAS_RULE}")
    return a


def validate_description(description: str) -> str:
    """``description`` if it fits in a record, else ``invalid_argument``."""
    n = len(description.encode("utf-8", "surrogatepass"))
    if n > MAX_DESCRIPTION_BYTES:
        raise invalid_argument(
            f"description: at most {MAX_DESCRIPTION_BYTES} bytes of UTF-8 (got {n})"
        )
    return description


def validate_service(key: str, value: str, current: Mapping[str, str]) -> None:
    """Check ``set-service key=value`` against the record limits (``invalid_argument``)."""
    if SERVICE_KEY_RE.fullmatch(key) is None:
        raise invalid_argument(f"service: invalid key {key!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    n = len(value.encode("utf-8", "surrogatepass"))
    if n > MAX_SERVICE_VALUE_BYTES:
        raise invalid_argument(
            f"service: value of {key!r} must be at most {MAX_SERVICE_VALUE_BYTES} bytes "
            f"of UTF-8 (got {n})"
        )
    if key not in current and len(current) >= MAX_SERVICES:
        raise invalid_argument(
            f"services: at most {MAX_SERVICES} per node; delete one with delete-service first"
        )
