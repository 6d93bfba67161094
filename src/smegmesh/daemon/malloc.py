"""Process memory: glibc malloc arenas, the post-start-up trim, and trims while running."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
from collections.abc import Callable


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to trim
        return None


def release_free_memory() -> None:
    """Give freed heap pages back to the OS after start-up (imports churn a lot)."""
    gc.collect()
    gc.freeze()  # start-up objects live for ever: keep the collector off them
    glibc_trim()


M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas (default up to 8 per core).

    smegd's threads (gRPC's event engine, the WireGuard worker, wireguard-go
    log pumps) each grew an arena that was mostly empty; two are plenty for a
    daemon whose work runs on one event loop (about 2 MB less RSS in a 30-peer
    mesh, bench/join_bench.py). ``MALLOC_ARENA_MAX`` in the environment wins.
    Must run before those threads start.
    """
    libc = _libc()
    if "MALLOC_ARENA_MAX" in os.environ or libc is None:
        return
    with contextlib.suppress(AttributeError):
        libc.mallopt(M_ARENA_MAX, arenas)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def glibc_free_bytes() -> int | None:
    """Bytes free inside glibc's heap (``mallinfo2().fordblks``); None without glibc 2.33+."""
    libc = _libc()
    fn = getattr(libc, "mallinfo2", None)
    if fn is None:
        return None
    fn.restype = _MallInfo2
    return int(fn().fordblks)


def glibc_trim() -> None:
    """Return every wholly free page of glibc's heap to the OS (``malloc_trim(0)``)."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)


#: Seconds between two looks at the heap (one ``mallinfo2`` call, ~µs).
TRIM_INTERVAL_S = 30.0
#: Trim only when at least this much is free inside the heap.
TRIM_MIN_FREE = 4 * 1024 * 1024


class HeapTrimmer:
    """Give the heap's free pages back while the daemon runs, not only at start-up.

    glibc keeps what a burst frees (a join of thousands of members, a state
    transfer, a storm of changes) inside its heap for later, and returns only
    the top of it to the OS. In a founded swarm of 3,000 members one smegd held
    17.6 MB free in its heap; ``malloc_trim(0)`` took 1.7 ms and its RSS went
    from 142.0 to 129.6 MB (docs/RESOURCES.md). :meth:`tick` looks every
    :data:`TRIM_INTERVAL_S` and trims when :data:`TRIM_MIN_FREE` or more is free.
    """

    def __init__(
        self,
        free_bytes: Callable[[], int | None] = glibc_free_bytes,
        trim: Callable[[], None] = glibc_trim,
        interval_s: float = TRIM_INTERVAL_S,
        min_free: int = TRIM_MIN_FREE,
    ) -> None:
        self._free_bytes = free_bytes
        self._trim = trim
        self.interval_s = interval_s
        self.min_free = min_free
        self._next = 0.0
        self.trims = 0

    def tick(self, now: float) -> bool:
        """Trim if due (``now``: a monotonic time); True if it trimmed."""
        if now < self._next:
            return False
        self._next = now + self.interval_s
        free = self._free_bytes()
        if free is not None and free < self.min_free:
            return False
        self._trim()
        self.trims += 1
        return True
