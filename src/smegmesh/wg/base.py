"""The WireGuard backend interface.

A backend creates, reads, changes and removes WireGuard devices. It is
synchronous: the daemon calls it from a worker thread. All operations on one
device come from :mod:`smegmesh.core.wgdiff` (typed ops), so every backend
applies exactly the minimal change the reconciler computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from smegmesh.core.wgconfig import InterfaceStatus
from smegmesh.core.wgdiff import WgOp


class WgError(Exception):
    """A WireGuard operation failed."""


class BackendUnavailable(WgError):
    """The requested backend cannot run on this machine (message says what to install)."""


class InterfaceNotFound(WgError):
    """The device does not exist (or its userspace process is gone)."""


@runtime_checkable
class WgBackend(Protocol):
    """What the reconciler needs from a WireGuard implementation."""

    kind: str  # "memory", "userspace", "kernel"

    def ensure_interface(self, name: str) -> bool:
        """Create the device if it does not exist; True if it was created now."""
        ...

    def read(self, name: str) -> InterfaceStatus:
        """Full live state (one complete dump); raises InterfaceNotFound."""
        ...

    def apply(self, name: str, ops: Sequence[WgOp]) -> list[WgOp]:
        """Apply operations in order (one batch where the transport allows).

        Returns them as applied: an endpoint left out (a name that does not
        resolve now, ``wg.resolver.resolve_ops``) is None there, and an update
        left with nothing else to change is not there. The reconciler's cache
        of live state is built from them, so the next diff sends it again."""
        ...

    def check(self, name: str) -> bool:
        """Health check: True if the device had to be (re)created since the last
        check or apply, i.e. live state was lost. Backends that can (userspace)
        repair themselves here and re-apply the last WireGuard config they
        applied; host state (addresses, routes) is the caller's to re-apply."""
        ...

    def moved_endpoints(self, name: str, wanted: Mapping[bytes, str]) -> list[bytes]:
        """Peers whose endpoint name resolves to another address than the one
        WireGuard was given (never waits for DNS; ``wg.resolver.SentNames``).
        ``wanted``: the peers' endpoints as wanted now (none: left out); a name
        no longer wanted is forgotten. The reconciler sends the peers again
        from its health check."""
        ...

    def remove_interface(self, name: str) -> None:
        """Delete the device; no error if it does not exist."""
        ...

    def close(self) -> None:
        """Release resources; userspace backends stop their processes."""
        ...
