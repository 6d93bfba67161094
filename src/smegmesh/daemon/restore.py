"""The saved meshes at start: each read, checked and started on its own.

One saved mesh that could not be restored stopped the daemon from starting:
a bad value in its options, an option of a newer smegd (a downgrade), a
peer mesh with no address yet (a boot before the network is up). Now:

* :func:`read_saved_mesh` checks a mesh's files whole (options included)
  and says what is wrong in one line;
* a mesh that cannot start is logged (one line naming its file), shown in
  ``GET /v1/status`` (``not_restored``) and named by commands on it; its
  files are kept, the other meshes run;
* a peer mesh whose address is discovered and not found yet (no
  ``publicEndpoint``, no default route) is started once it is found:
  tried again every :data:`RESTORE_RETRY_S` seconds. Meanwhile its
  WireGuard interface, left up by the previous run, keeps carrying traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from pydantic import ValidationError

from smegmesh.core.addressing import shown, validate_mesh_id
from smegmesh.core.record import RecordError
from smegmesh.core.wire import WireError, decode_item
from smegmesh.daemon import service as svc
from smegmesh.daemon.api_models import NotRestored
from smegmesh.daemon.base import DaemonBase
from smegmesh.daemon.config import MeshOptions
from smegmesh.daemon.runtime import NoAddress, now_ms

log = logging.getLogger("smegd")

#: How often a mesh waiting for this node's address is tried again.
RESTORE_RETRY_S = 5.0


class SavedMeshError(ValueError):
    """A saved mesh's files cannot be restored (one line: what is wrong)."""


@dataclass(frozen=True)
class SavedMesh:
    """A mesh as saved: its id, options, WireGuard port and items."""

    mesh_id: str
    opts: MeshOptions
    listen_port: int | None
    items: list[Any]


def saved_mesh_files(d: Path) -> list[Path]:
    """The meshes saved in ``d``: their options files (a ``.state`` alone is not one)."""
    return sorted(d.glob("*.json")) if d.is_dir() else []


def read_saved_mesh(meta_path: Path) -> SavedMesh:
    """``<mesh>.json`` and ``<mesh>.state``, checked; raises :class:`SavedMeshError`."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SavedMeshError(f"unreadable: {e}") from None
    if not isinstance(meta, dict):
        raise SavedMeshError(f"not a JSON object: {shown(meta)}")
    mesh_id = meta.get("mesh_id")
    if mesh_id != meta_path.stem:
        raise SavedMeshError(f"mesh_id {shown(mesh_id)}: not the mesh the file is named for")
    try:
        validate_mesh_id(mesh_id)
    except ValueError as e:
        raise SavedMeshError(str(e)) from None
    port = meta.get("listen_port")
    if port is not None and (type(port) is not int or not 1 <= port <= 65535):
        raise SavedMeshError(f"listen_port {shown(port)}: not a port")
    return SavedMesh(mesh_id, _options(meta), port, _items(meta_path.with_suffix(".state")))


def _options(meta: dict[str, Any]) -> MeshOptions:
    raw = meta.get("opts", {})  # absent: the defaults (as ever)
    if not isinstance(raw, dict):
        raise SavedMeshError(f"opts {shown(raw)}: not a JSON object")
    try:
        opts: MeshOptions = MeshOptions.model_validate(raw)
    except ValidationError as e:
        errs = e.errors()
        err = errs[0]
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            what = "not an option of this smegd (saved by a newer version?)"
        else:
            what = f"{err['msg']} (got {shown(err.get('input'), 40)})"
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        raise SavedMeshError(f"opts.{where}: {what}{more}") from None
    return opts


def _items(state_path: Path) -> list[Any]:
    """The saved items; one that no longer decodes is dropped (the mesh has it)."""
    if not state_path.exists():  # a mesh saved before its first state (an old smegd)
        return []
    try:
        objs = msgpack.unpackb(state_path.read_bytes(), raw=False, strict_map_key=True)
    except (OSError, ValueError, TypeError, msgpack.UnpackException) as e:
        raise SavedMeshError(f"{state_path.name}: unreadable: {e}") from None
    if not isinstance(objs, list):
        raise SavedMeshError(f"{state_path.name}: not a list of items")
    items = []
    for obj in objs:
        with contextlib.suppress(WireError, RecordError):
            items.append(decode_item(obj))
    return items


class RestoreOps(DaemonBase):
    """Mixin of the daemon: restores the saved meshes at start."""

    def _restore_meshes(self) -> None:
        """Start the meshes saved on disk (at start-up), from their last-known state."""
        for meta_path in saved_mesh_files(self._mesh_dir()):
            self._restore_one(meta_path)
        if any(u.retrying for u in self.unrestored.values()):
            self._tasks.append(asyncio.create_task(self._retry_restores()))

    def _restore_one(self, meta_path: Path) -> None:
        mesh_id = meta_path.stem
        rt = None
        try:
            saved = read_saved_mesh(meta_path)
            state = self._new_state(saved.mesh_id)
            state.apply_many(saved.items, now_ms())
            rt = self._add_runtime(saved.mesh_id, saved.opts, state, saved.listen_port)
            self._emit(rt, rt.node.start(now_ms()))
        except Exception as e:
            if rt is not None:  # registered, not started: not half a mesh
                self._discard_runtime(rt)
            self._not_restored(mesh_id, meta_path, e)
            return
        if self.unrestored.pop(mesh_id, None) is not None:
            log.info("mesh %s: restored (this node's address is known now)", mesh_id)
        self.member_events.track(rt.mesh_id, state, "restored")
        log.info("rejoined mesh %s (%d nodes known)", rt.mesh_id, len(state.live_records()))

    def _not_restored(self, mesh_id: str, meta_path: Path, e: Exception) -> None:
        """Log (once per reason) and show a mesh that did not start."""
        retrying = isinstance(e, NoAddress)
        if isinstance(e, svc.ServiceError):
            reason = e.message
        elif isinstance(e, SavedMeshError):
            reason = str(e)
        else:  # a bug: its traceback at debug, one line here
            log.debug("mesh %s: restore failed", mesh_id, exc_info=True)
            reason = f"{type(e).__name__}: {e}"
        before = self.unrestored.get(mesh_id)
        self.unrestored[mesh_id] = NotRestored(
            mesh_id=mesh_id, file=str(meta_path), reason=reason, retrying=retrying
        )
        if before is not None and before.reason == reason:
            return
        if retrying:
            log.warning(
                "mesh %s not restored yet: %s (tried again every %g s)",
                mesh_id,
                reason,
                RESTORE_RETRY_S,
            )
        else:
            log.error(
                "mesh %s not restored from %s: %s (the file is kept; fix or move it away, "
                "then restart smegd)",
                mesh_id,
                meta_path,
                reason,
            )

    async def _retry_restores(self) -> None:
        """Try the meshes waiting for an address again, until none is left."""
        while any(u.retrying for u in self.unrestored.values()):
            await asyncio.sleep(RESTORE_RETRY_S)
            for mesh_id, u in list(self.unrestored.items()):
                if u.retrying and mesh_id not in self.meshes:
                    self._restore_one(Path(u.file))
