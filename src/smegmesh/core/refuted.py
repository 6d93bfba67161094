"""Prunes of live members, counted by pruner. Pure.

A member may prune any member, and a member turned bad may prune live ones
(within the budget of ``core.prune_budget``): each is refuted (the member
publishes a version the prune does not cover, which always wins), but while
a node holds a member as pruned it drops its WireGuard peer (docs/SECURITY.md,
"Prunes of live members"). A refuted prune is the trace such a member leaves: a node counts,
per pruner, the members it held as pruned that a record then showed alive,
so an operator can see who prunes live members (a member starved of CPU
does it now and then; a hostile one by the dozen) and evict it.

"Within 30 s of the prune" is by this node's clock: from when it took the
prune (:meth:`RefutedPrunes.took`), not from the prune's ``timestamp_ms``.
The pruner signs that time and may date it back as far as the GC horizon:
dated 31 s back, its prunes of live members were never counted nor named
(review of the liveness code). So a prune that reached this node late
counts as well (when a partition longer than 30 s heals, the other side's
prunes of this side's members): from here it is not told apart from a
back-dated one.
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
    """Member key -> its prune (pruner, target version), for records of members held as pruned.

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
            out[key] = (prune.by_wg_key, prune.target_version)
    return out


@dataclass(slots=True)
class RefutedPrunes:
    """Refuted prunes seen by one node in one mesh: in all and per pruner."""

    total: int = 0
    by_pruner: dict[bytes, int] = field(default_factory=dict)
    #: the latest refutations, (pruner, member), for the adapter's log
    last: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: member -> (its prune: pruner, target version; when this node took it,
    #: by its own clock), oldest first, kept :data:`REFUTED_WITHIN_MS`
    _taken: dict[bytes, tuple[bytes, int, int]] = field(default_factory=dict)

    def took(self, mesh: MeshState, key: bytes, now_ms: int) -> None:
        """``key`` changed and is not live: note when its prune (if any) was taken.

        The same prune again (its record came later, say) keeps its first time.
        """
        prune = mesh.get_prune(key)
        if prune is None:
            return
        t = self._taken
        got = t.pop(key, None)
        if got is not None and got[:2] == (prune.by_wg_key, prune.target_version):
            at = got[2]
        else:
            at = now_ms
        t[key] = (prune.by_wg_key, prune.target_version, at)
        while t:  # forget those past the window: they count for nothing
            first = next(iter(t))
            if now_ms - t[first][2] < REFUTED_WITHIN_MS:
                break
            del t[first]

    def clock_stepped(self, delta_ms: int) -> None:
        """The wall clock was stepped by ``delta_ms``: the times taken move with it."""
        self._taken = {k: (p, v, at + delta_ms) for k, (p, v, at) in self._taken.items()}

    def note(
        self,
        mesh: MeshState,
        down: dict[bytes, tuple[bytes, int]],
        changed: Iterable[bytes],
        now_ms: int,
    ) -> None:
        """Count the members of ``down`` (:func:`pruners_of`) that ``changed`` made live.

        Only within :data:`REFUTED_WITHIN_MS` of taking their prune (:meth:`took`):
        a member back from a crash or a suspend minutes later was rightly
        pruned. A prune not taken here lately (restored from disk, brought by a
        join) counts for nothing.
        """
        last: list[tuple[bytes, bytes]] = []
        for key in changed:
            pruner, version = down.get(key, (b"", 0))
            got = self._taken.get(key)
            if not pruner or got is None or got[:2] != (pruner, version):
                continue
            if now_ms - got[2] >= REFUTED_WITHIN_MS or mesh.live_record(key) is None:
                continue
            self.total += 1
            if pruner in self.by_pruner or len(self.by_pruner) < MAX_PRUNERS:
                self.by_pruner[pruner] = self.by_pruner.get(pruner, 0) + 1
            if len(last) < 8:
                last.append((pruner, key))
        if last:
            self.last = last
