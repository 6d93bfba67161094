"""The one wait of the test bed and the tests: poll a condition until a deadline.

Nothing in the tests sleeps a fixed time: they wait for the condition they
need, with a deadline generous enough for a loaded 2-core CI machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["DaemonExited", "WaitTimeout", "wait_until"]

T = TypeVar("T")


class WaitTimeout(AssertionError, TimeoutError):
    """The condition did not hold in time (a failed check, and a timeout)."""


class DaemonExited(RuntimeError):
    """A process the wait depends on exited: waiting longer cannot help."""


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 20.0,
    interval: float = 0.1,
    what: str = "",
) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned).

    An exception from ``predicate`` counts as "not yet" (a failed assertion,
    a refused connection) and is reported if the deadline passes, except
    :class:`DaemonExited`, which is raised at once. Raises :class:`WaitTimeout`
    (an ``AssertionError`` and a ``TimeoutError``) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = predicate()
        except DaemonExited:
            raise
        except Exception as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"timed out after {timeout:g}s waiting for {what or predicate}; last: {last!r}"
            )
        time.sleep(interval)
