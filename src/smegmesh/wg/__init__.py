"""WireGuard backends and the reconciler.

- :mod:`smegmesh.wg.base` — the :class:`WgBackend` protocol and errors
- :mod:`smegmesh.wg.memory`, :mod:`.userspace`, :mod:`.kernel` — implementations
- :mod:`smegmesh.wg.factory` — :func:`create_backend` (``wgBackend`` config key)
- :mod:`smegmesh.wg.reconcile` — :class:`Reconciler`
"""

from smegmesh.wg.base import BackendUnavailable, InterfaceNotFound, WgBackend, WgError
from smegmesh.wg.factory import create_backend

__all__ = ["BackendUnavailable", "InterfaceNotFound", "WgBackend", "WgError", "create_backend"]
