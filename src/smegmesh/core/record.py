"""Signed node records and prunes: the items of the mesh state CRDT.

Only a node writes its own :class:`NodeRecord`; it is signed with the node's
Ed25519 key and the WireGuard key (node id) must be the Montgomery form of that
signing key, so nobody can publish a record for another node. A
:class:`Prune` is a signed statement by any member that every record of
``target`` with ``version <= target_version`` is dead (failure detection).

The signature covers ``TAG + msgpack(fields without signature)``; msgpack of
ints, strings, bytes, bools, nil and arrays is canonical (shortest encoding),
so the payload is a pure function of the field values.

Versions are *hybrid*: :meth:`NodeRecord.evolve` uses
``max(old.version + 1, now_ms)`` so a node that lost its counter (restored
from an old backup) still publishes a version above what the mesh holds.

The code lives in three modules, re-exported here (the public import path):
:mod:`smegmesh.core.record_fields` (limits, value types, field checks),
:mod:`smegmesh.core.record_model` (the record and prune classes and their
validation) and :mod:`smegmesh.core.record_decode` (the wire form back to
objects).
"""

from __future__ import annotations

from smegmesh.core import record_fields
from smegmesh.core.record_decode import prune_from_obj, record_from_obj
from smegmesh.core.record_fields import *  # noqa: F403 (re-exported: see __all__)
from smegmesh.core.record_model import (
    NodeRecord,
    Prune,
    check_prune_fields,
    check_record_fields,
    validate_prune,
    validate_record,
)

__all__ = [
    "NodeRecord",
    "Prune",
    "check_prune_fields",
    "check_record_fields",
    "prune_from_obj",
    "record_from_obj",
    "validate_prune",
    "validate_record",
]
__all__ += record_fields.__all__
