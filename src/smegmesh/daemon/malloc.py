"""Process memory set-up: glibc malloc arenas and the post-start-up trim."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os


def release_free_memory() -> None:
    """Give freed heap pages back to the OS after start-up (imports churn a lot)."""
    gc.collect()
    gc.freeze()  # start-up objects live for ever: keep the collector off them
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas (default up to 8 per core).

    smegd's threads (gRPC's event engine, the WireGuard worker, wireguard-go
    log pumps) each grew an arena that was mostly empty; two are plenty for a
    daemon whose work runs on one event loop (about 2 MB less RSS in a 30-peer
    mesh, bench/join_bench.py). ``MALLOC_ARENA_MAX`` in the environment wins.
    Must run before those threads start.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)
