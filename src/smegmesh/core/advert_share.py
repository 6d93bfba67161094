"""Which learned routes a bridge advertises when they do not all fit. Pure.

A record carries at most :data:`~smegmesh.core.record.MAX_ROUTES` adverts and
is at most :data:`~smegmesh.core.record.MAX_RECORD_BYTES` signed. A member
can fill both with routes to destinations that do not exist (founding a mesh
to prove as first hop is free), so a bridge (``core.routing``) shares what is
left after its own adverts max-min fairly: first among the meshes the routes
were selected through, then, within each mesh, among the gateways they were
selected from — first the slots, then the bytes. Each share takes its
gateway's shortest routes (ties by prefix, then path). See docs/ROUTING.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

from smegmesh.core.record import RouteAdv

__all__ = ["advert_bytes", "advert_order", "fair_fill", "fit_bytes", "shares"]

_K = TypeVar("_K", str, bytes)

#: learned adverts by the mesh, then the gateway, they were selected through
Learned = Mapping[str, Mapping[bytes, list[RouteAdv]]]


def advert_order(a: RouteAdv) -> tuple[int, str, tuple[str, ...]]:
    """Shortest first, then by prefix and path (the order of a record's routes)."""
    return (len(a.path), a.prefix, a.path)


def _str_bytes(s: str) -> int:
    n = len(s.encode("utf-8"))
    return n + (1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5)


def advert_bytes(a: RouteAdv) -> int:
    """Size of ``a`` in a record's signed form (msgpack ``[prefix, [mesh, ...]]``)."""
    n = len(a.path)
    header = 1 if n < 16 else 3 if n < 65536 else 5
    return 1 + _str_bytes(a.prefix) + header + sum(_str_bytes(m) for m in a.path)


def fair_fill(learned: Learned, room: int, room_bytes: int | None) -> list[RouteAdv]:
    """At most ``room`` adverts of ``learned`` of at most ``room_bytes`` bytes, fairly.

    No one gateway (nor one mesh, with all the sock puppets it admits) takes
    more than its share of the slots, nor of the bytes.
    """
    chosen: dict[str, dict[bytes, list[RouteAdv]]] = {}
    mesh_room = shares(room, {n: sum(map(len, g.values())) for n, g in learned.items()})
    for n, by_gw in learned.items():
        gw_room = shares(mesh_room[n], {gw: len(advs) for gw, advs in by_gw.items()})
        chosen[n] = {
            gw: sorted(advs, key=advert_order)[: gw_room[gw]] for gw, advs in by_gw.items()
        }
    if room_bytes is not None:
        return fit_bytes(chosen, room_bytes)
    return [a for by_gw in chosen.values() for advs in by_gw.values() for a in advs]


def fit_bytes(chosen: Learned, room: int) -> list[RouteAdv]:
    """The same fair shares of ``room`` bytes; each list is taken from its start."""
    size = {n: {gw: [advert_bytes(a) for a in v] for gw, v in g.items()} for n, g in chosen.items()}
    out: list[RouteAdv] = []
    mesh_room = shares(room, {n: _total(g.values()) for n, g in size.items()})
    for n, by_gw in chosen.items():
        gw_room = shares(mesh_room[n], {gw: sum(s) for gw, s in size[n].items()})
        for gw, advs in by_gw.items():
            left = gw_room[gw]
            for a, s in zip(advs, size[n][gw], strict=True):
                if s > left:
                    break
                out.append(a)
                left -= s
    return out


def _total(lists: Iterable[list[int]]) -> int:
    return sum(sum(s) for s in lists)


def shares(room: int, demand: Mapping[_K, int]) -> dict[_K, int]:
    """Max-min fair integer shares of ``room`` (water filling, deterministic).

    Smallest demands are served first; each gets at most an equal part of what
    is left, so the largest demand (ties: the largest key) gets the remainder.
    """
    out: dict[_K, int] = {}
    order = sorted(demand, key=lambda k: (demand[k], k))
    for i, k in enumerate(order):
        out[k] = min(demand[k], max(room, 0) // (len(order) - i))
        room -= out[k]
    return out
