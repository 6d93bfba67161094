"""Prunes of live members, counted by pruner. Pure.

A member may prune any member, and a member turned bad may prune live ones
(within the budget of ``core.prune_budget``): each is refuted (the member
publishes a version the prune does not cover, which always wins), but while
a node holds a member as pruned it drops its WireGuard peer (docs/SECURITY.md,
"Prunes of live members"). A refuted prune is the trace such a member leaves: a node counts,
per pruner, the members it held as pruned that a record then showed alive,
so an operator can see who prunes live members (a member starved of CPU
does it now and then; a hostile one by the dozen) and evict it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from smegmesh.core.elide import elided_record_key
from smegmesh.core.record import NodeRecord
from smegmesh.core.state import MeshState

__all__ = ["MAX_PRUNERS", "REFUTED_WITHIN_MS", "RefutedPrunes", "pruners_of"]

#: Pruners counted at most (further ones go uncounted, their refutations not).
MAX_PRUNERS = 256
#: A refutation counts against the pruner only this soon after the prune: a
#: live member refutes within seconds of hearing of it.
REFUTED_WITHIN_MS = 30_000


def pruners_of(mesh: MeshState, items: Iterable[object]) -> dict[bytes, tuple[bytes, int]]:
    """Member key -> (its pruner, the prune's time), for records of members held as pruned.

    Records by reference (a sync step's, ``core.elide``) count by the key they
    name. O(1) per item; taken before the batch is merged (see :meth:`RefutedPrunes.note`).
    """
    out: dict[bytes, tuple[bytes, int]] = {}
    for it in items:
        key = it.wg_key if type(it) is NodeRecord else elided_record_key(mesh, it)
        if key is None or mesh.live_record(key) is not None:
            continue
        prune = mesh.get_prune(key)
        if prune is not None:
            out[key] = (prune.by_wg_key, prune.timestamp_ms)
    return out


@dataclass(slots=True)
class RefutedPrunes:
    """Refuted prunes seen by one node in one mesh: in all and per pruner."""

    total: int = 0
    by_pruner: dict[bytes, int] = field(default_factory=dict)
    #: the latest refutations, (pruner, member), for the adapter's log
    last: list[tuple[bytes, bytes]] = field(default_factory=list)

    def note(
        self,
        mesh: MeshState,
        down: dict[bytes, tuple[bytes, int]],
        changed: Iterable[bytes],
        now_ms: int,
    ) -> None:
        """Count the members of ``down`` (:func:`pruners_of`) that ``changed`` made live.

        Only within :data:`REFUTED_WITHIN_MS` of their prune: a member back
        from a crash, a suspend or a partition minutes later was rightly pruned.
        """
        last: list[tuple[bytes, bytes]] = []
        for key in changed:
            pruner, at = down.get(key, (b"", 0))
            if not pruner or now_ms - at >= REFUTED_WITHIN_MS or mesh.live_record(key) is None:
                continue
            self.total += 1
            if pruner in self.by_pruner or len(self.by_pruner) < MAX_PRUNERS:
                self.by_pruner[pruner] = self.by_pruner.get(pruner, 0) + 1
            if len(last) < 8:
                last.append((pruner, key))
        if last:
            self.last = last
