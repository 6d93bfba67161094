"""pyroute2 beside an event loop: a call off the loop, one socket per thread.

pyroute2's synchronous API runs an event loop of its own, which cannot run in
the thread of a running one (smegd's): :func:`off_loop` makes such a call from
a short-lived thread, and a :class:`PerThread` holder keeps the sockets a
worker thread uses, made in that thread on first use.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerThread", "off_loop"]

T = TypeVar("T")


def off_loop(fn: Callable[..., T], *args: object, timeout: float | None = 10.0) -> T:
    """``fn(*args)`` in a thread of its own; its exception, or TimeoutError
    after ``timeout`` seconds (None: no limit), is raised here."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(fn, *args).result(timeout=timeout)
    finally:  # not `with`: its exit waits for the call, however long the timeout
        pool.shutdown(wait=False)


class PerThread(Generic[T]):
    """The object ``factory`` made in the calling thread, made on first use there.

    One at a time: a call from another thread closes the one held (``close``,
    its errors ignored) and makes that thread's.
    """

    def __init__(self, factory: Callable[[], T], close: Callable[[T], None]) -> None:
        self._factory = factory
        self._close = close
        self._held: tuple[int, T] | None = None

    def get(self) -> T:
        me = threading.get_ident()
        if self._held is not None and self._held[0] == me:
            return self._held[1]
        self.close()
        obj = self._factory()
        self._held = (me, obj)
        return obj

    def close(self) -> None:
        """Close the object held, if any (the next :meth:`get` makes another)."""
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(Exception):
                self._close(held[1])
