"""The store: this node's identity and its meshes (options and last-known state)
on disk, written atomically (``daemon/persist.py``), and the persist loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from smegmesh.core.identity import NodeIdentity, key_to_text
from smegmesh.core.memo import ItemMemo
from smegmesh.core.paging import encode_items
from smegmesh.daemon import service as svc
from smegmesh.daemon.base import DaemonBase
from smegmesh.daemon.persist import PersistError, atomic_write
from smegmesh.daemon.runtime import MeshRuntime, now_ms

log = logging.getLogger("smegd")

#: Learned state (items from other members) is written at most this often;
#: what a command changed is written before it answers (``EngineIO._commit``),
#: the node's own changes made by the engine within a second (the persist tick).
#: A crash loses at most this much of what the mesh holds anyway (the next sync
#: brings it back). At 100 daemons on 2 cores, writing every second took 15 %
#: of a forming daemon's CPU (encoding, and four fsyncs per write).
LEARNED_SAVE_INTERVAL_S = 5.0

#: The persist loop's period: GC, and the writes that are due (a failed one again).
PERSIST_TICK_S = 1.0


def save_due(rt: MeshRuntime, now_s: float) -> bool:
    """Whether the persist tick writes ``rt`` now (``now_s``: a monotonic clock)."""
    if not rt.dirty_disk or rt.joining:  # a refused join is never saved
        return False
    if rt.save_soon or rt.saved_at is None:
        return True
    return now_s - rt.saved_at >= LEARNED_SAVE_INTERVAL_S


def mesh_meta(rt: MeshRuntime) -> dict[str, Any]:
    """What is saved of a mesh besides its items: its id, options and WireGuard port."""
    return {"mesh_id": rt.mesh_id, "opts": rt.opts, "listen_port": rt.listen_port}


def write_mesh(
    d: Path, mesh_id: str, meta: dict[str, Any], items: Iterable[Any], memo: ItemMemo | None = None
) -> None:
    """``<mesh>.json`` (meta) and ``<mesh>.state`` (the encoded items), each atomically.

    ``memo``: the state's (each item is encoded once in its life, not on every write).
    """
    write_mesh_files(d, mesh_id, meta, encode_items(list(items), memo))


def write_mesh_files(d: Path, mesh_id: str, meta: dict[str, Any], state: bytes) -> None:
    """:func:`write_mesh` with the items already encoded (``paging.encode_items``).

    The state first: a mesh is restored from its ``.json``, and a crash between
    a new mesh's two first writes must not leave one without its state (no
    founding record, no admission). A ``.state`` alone is not loaded.
    """
    meta_path, meta_bytes = d / f"{mesh_id}.json", json.dumps(meta).encode()
    try:
        same = meta_path.read_bytes() == meta_bytes  # small; it rarely changes
    except OSError:
        same = False
    atomic_write(d / f"{mesh_id}.state", state)
    if not same:
        atomic_write(meta_path, meta_bytes)


def remove_mesh_files(d: Path, mesh_id: str) -> None:
    """Forget a mesh on disk (``leave-mesh``)."""
    for suffix in (".json", ".state"):
        with contextlib.suppress(FileNotFoundError):
            (d / f"{mesh_id}{suffix}").unlink()


class StoreOps(DaemonBase):
    """Mixin of the daemon: persistence of the meshes."""

    def _load_identity(self) -> NodeIdentity:
        path = self.state_dir / "identity.key"
        if path.exists():
            seed = path.read_bytes()
            if len(seed) != 32:
                raise SystemExit(f"smegd: {path} is corrupt (expected 32 bytes); move it away")
            return NodeIdentity.from_seed(seed)
        ident = NodeIdentity.generate(secrets.token_bytes)
        atomic_write(path, ident.seed, mode=0o600)
        log.info("created node identity %s", key_to_text(ident.wg_public_key))
        return ident

    def _mesh_dir(self) -> Path:
        return self.state_dir / "meshes"

    def _save_mesh(self, rt: MeshRuntime) -> None:
        """Write ``rt`` now, on the loop (a new mesh, a join, the last write at stop).

        Raises :class:`PersistError` (logged; the mesh stays to be written).
        """
        mesh = rt.node.mesh
        try:
            write_mesh(self._mesh_dir(), rt.mesh_id, mesh_meta(rt), mesh.all_items(), mesh.memo)
        except PersistError as e:
            rt.dirty_disk = True
            self._save_failed(rt, e)
            raise
        rt.dirty_disk = rt.save_soon = False
        rt.saved_at = time.monotonic()
        self._save_ok(rt)

    def _save_failed(self, rt: MeshRuntime, e: PersistError) -> None:
        """A write of ``rt`` failed: logged once, then summarised once a minute."""
        rt.save_error = e.strerror or str(e)
        self.save_failures.note(rt.mesh_id, f"{rt.save_error} (kept in memory; retried)")

    def _save_ok(self, rt: MeshRuntime) -> None:
        if rt.save_error is not None:
            log.warning("mesh %s: saved again (after: %s)", rt.mesh_id, rt.save_error)
            rt.save_error = None

    async def _persist_loop(self) -> None:
        """Every second: GC, and the writes that are due. A pass that fails is
        logged and the next one runs: the loop never ends (a full disk made it
        end for good, and nothing was written again once the disk was freed)."""
        while True:
            await asyncio.sleep(PERSIST_TICK_S)
            try:
                await self._persist_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("persist pass failed (continuing)")

    async def _persist_pass(self) -> None:
        horizon = int(self.config.gc_horizon * 1000)
        for rl in (self.dropped_items, self.refuted_prunes, self.refused_joins, self.save_failures):
            if len(rl):  # its summary, once per interval
                rl.note_tick()
        self.events.tick()  # lines of events left out of the log, likewise
        self.heap.tick(time.monotonic())  # what a burst freed, back to the OS
        for rt in list(self.meshes.values()):
            if rt.node.mesh.gc(now_ms(), horizon):
                rt.dirty_disk = True
                self.member_events.sweep(rt.mesh_id, rt.node.mesh)
            if save_due(rt, time.monotonic()):
                with contextlib.suppress(PersistError):  # logged; retried at a next pass
                    await self._save_mesh_off_loop(rt)

    async def _save_for_command(self, rt: MeshRuntime) -> None:
        """A command's change on disk before it answers; else ``not_saved`` (503).

        The change stays in effect and the persist loop writes it again.
        """
        try:
            await self._save_mesh_off_loop(rt)
        except PersistError as e:
            raise svc.not_saved(e.strerror or str(e)) from None

    async def _save_mesh_off_loop(self, rt: MeshRuntime) -> None:
        """:meth:`_save_mesh`, writing in a thread (the state may be megabytes).

        Encoded here, on the loop: the state's memo (not thread-safe) keeps each
        item's encoding, so only new items cost an encoding. Under the mesh's
        ``save_lock``: a write never overtakes a later one.
        """
        async with rt.save_lock:
            await self._save_locked(rt)

    async def _save_locked(self, rt: MeshRuntime) -> None:
        """Raises :class:`PersistError` (logged): the mesh stays to be written."""
        meta = mesh_meta(rt)
        mesh = rt.node.mesh
        state = encode_items(list(mesh.all_items()), mesh.memo)
        soon = rt.save_soon
        # Cleared before the write (a change while it is under way marks the mesh
        # again), set again unless the write succeeded.
        rt.dirty_disk = rt.save_soon = False
        rt.saved_at = time.monotonic()
        d = self._mesh_dir()
        try:
            await asyncio.to_thread(write_mesh_files, d, rt.mesh_id, meta, state)
        except BaseException as e:
            rt.dirty_disk, rt.save_soon = True, rt.save_soon or soon  # a command's: in a second
            if isinstance(e, PersistError):
                self._save_failed(rt, e)
            raise
        else:
            self._save_ok(rt)
        finally:
            if rt.mesh_id not in self.meshes:  # left while we wrote: leave nothing behind
                remove_mesh_files(d, rt.mesh_id)
