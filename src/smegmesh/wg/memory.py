"""In-process WireGuard backend for control-plane tests and the simulator."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from smegmesh.core.wgconfig import InterfaceStatus, empty_status
from smegmesh.core.wgdiff import WgOp, apply_ops
from smegmesh.wg.base import InterfaceNotFound


class MemoryBackend:
    """Devices as a dict of :class:`InterfaceStatus`; counts calls for tests.

    ``fail_next_apply`` makes the next ``apply`` raise (error-path tests);
    ``lose(name)`` simulates a crashed device (``check`` then recreates it empty).
    """

    kind = "memory"

    def __init__(self) -> None:
        self.devices: dict[str, InterfaceStatus] = {}
        self.reads = 0
        self.applied: list[tuple[str, tuple[WgOp, ...]]] = []
        self.fail_next_apply: Exception | None = None
        self._lost: set[str] = set()
        self._last_good: dict[str, InterfaceStatus] = {}
        self._lock = threading.Lock()

    def ensure_interface(self, name: str) -> bool:
        with self._lock:
            if name in self.devices:
                return False
            self.devices[name] = empty_status(name)
            return True

    def read(self, name: str) -> InterfaceStatus:
        with self._lock:
            self.reads += 1
            try:
                return self.devices[name]
            except KeyError:
                raise InterfaceNotFound(name) from None

    def apply(self, name: str, ops: Sequence[WgOp]) -> list[WgOp]:
        """Applies ``ops`` as they are (names too: nothing is resolved here)."""
        with self._lock:
            if self.fail_next_apply is not None:
                exc, self.fail_next_apply = self.fail_next_apply, None
                raise exc
            if name not in self.devices:
                raise InterfaceNotFound(name)
            self.devices[name] = apply_ops(self.devices[name], ops)
            self.applied.append((name, tuple(ops)))
            return list(ops)

    def lose(self, name: str) -> None:
        """Simulate a crash of the device: it vanishes."""
        with self._lock:
            self.devices.pop(name, None)
            self._lost.add(name)

    def check(self, name: str) -> bool:
        with self._lock:
            if name in self.devices:
                return False
            if name in self._lost:
                self._lost.discard(name)
            self.devices[name] = empty_status(name)
            return True

    def moved_endpoints(self, name: str, wanted: Mapping[bytes, str]) -> list[bytes]:
        return []  # endpoints are kept as given: no names resolved

    def remove_interface(self, name: str) -> None:
        with self._lock:
            self.devices.pop(name, None)
            self._lost.discard(name)

    def close(self) -> None:
        with self._lock:
            self.devices.clear()
