"""pyroute2 beside an event loop: a call off the loop, one socket per thread.

pyroute2's synchronous API runs an event loop of its own, which cannot run in
the thread of a running one (smegd's): :func:`off_loop` makes such a call from
a short-lived thread, and a :class:`PerThread` holder keeps the sockets a
worker thread uses, made in that thread on first use.

:func:`iproute_class` and :func:`wireguard_class` import the two pyroute2
classes smegd uses from their own modules, without running the package's
``__init__``: that imports every part of the library (NDB and sqlite3, IPDB,
9P, nl80211, conntrack, ipset, IPVS, ...), 163 modules and 8.6 MB of RSS,
where rtnetlink and WireGuard's generic netlink take 3.7 MB (docs/RESOURCES.md).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["PerThread", "iproute_class", "off_loop", "wireguard_class"]

_PACKAGE = "pyroute2"
_IMPORT_LOCK = threading.Lock()


class _PackageOnDemand(types.ModuleType):
    """pyroute2's package whose ``__init__`` runs only when a name it defines is asked for.

    Its submodules import as usual (``__path__`` and ``__spec__`` are the real
    package's); ``pyroute2.NDB`` and the like, asked for by code that imports
    the package itself, run the real ``__init__`` in this module first, so
    such code sees the whole package as ever.
    """

    _initialising = False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or self._initialising:
            raise AttributeError(name)
        try:  # a submodule (``from pyroute2 import config`` in pyroute2's own code)
            return importlib.import_module(f"{_PACKAGE}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{_PACKAGE}.{name}":
                raise
        with _IMPORT_LOCK:
            if name not in self.__dict__:
                self._initialising = True
                try:
                    spec = self.__spec__
                    assert spec is not None and spec.loader is not None
                    spec.loader.exec_module(self)
                finally:
                    self._initialising = False
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {_PACKAGE!r} has no attribute {name!r}") from None


def _pyroute2_module(name: str) -> types.ModuleType:
    """``pyroute2.<name>``, the package's ``__init__`` not run unless imported already."""
    with _IMPORT_LOCK:
        if _PACKAGE not in sys.modules:
            spec = importlib.util.find_spec(_PACKAGE)
            if spec is None or spec.submodule_search_locations is None:
                raise ImportError(f"{_PACKAGE} is not installed")
            pkg = _PackageOnDemand(_PACKAGE)
            pkg.__spec__ = spec
            pkg.__loader__ = spec.loader
            pkg.__path__ = list(spec.submodule_search_locations)
            pkg.__file__ = spec.origin
            pkg.__package__ = _PACKAGE
            sys.modules[_PACKAGE] = pkg
    return importlib.import_module(f"{_PACKAGE}.{name}")


def iproute_class() -> Any:
    """pyroute2's ``IPRoute`` (rtnetlink: links, addresses, routes)."""
    return _pyroute2_module("iproute.linux").IPRoute


def wireguard_class() -> Any:
    """pyroute2's ``WireGuard`` (kernel WireGuard's generic netlink)."""
    return _pyroute2_module("netlink.generic.wireguard").WireGuard


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
