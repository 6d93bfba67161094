"""A change that cannot be written to disk is not answered as done (a real daemon,
in this process; the disk made full for one daemon's meshes).

Commands answered success while their change was not on disk, although
docs/OPERATIONS.md says a command answers once it is; and a member answered a
join before its token-ledger entry was on disk: after a crash a one-use
invitation could admit a second node.
"""

from __future__ import annotations

import asyncio
import errno
import tempfile
from pathlib import Path
from typing import Any

import pytest

from daemon_inproc import running_daemon, until
from smegmesh.daemon.config import MeshOptions
from smegmesh.daemon.service import ServiceError


class Disk:
    """Makes the disk under some directories full (no room for a new file)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full: set[Path] = set()
        real = tempfile.mkstemp

        def mkstemp(*a: Any, dir: Any = None, **kw: Any) -> Any:
            if dir is not None and any(Path(dir).is_relative_to(p) for p in self.full):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*a, dir=dir, **kw)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    return Disk(monkeypatch)


async def refused(coro: Any) -> ServiceError:
    try:
        await coro
    except ServiceError as e:
        return e
    raise AssertionError("answered as done, although not on disk")


def check_not_saved(e: ServiceError, outcome: str) -> None:
    assert (e.status, e.code) == (503, "not_saved"), e
    assert e.message.startswith("not saved: cannot write "), e.message
    assert "No space left on device" in e.message and outcome in e.message, e.message
    assert "\n" not in e.message


def test_a_command_whose_change_is_not_on_disk_answers_not_saved(root: Path, disk: Disk) -> None:
    """The change stays in effect and is written once the disk has room again."""

    async def main() -> str:
        async with running_daemon(root) as d:
            mesh = await d.new_mesh(MeshOptions())
            disk.full.add(root / "state" / "meshes")
            for e in [
                await refused(d.set_service(mesh, "web", "http://[::1]:80")),
                await refused(d.put_alias(mesh, "alpha")),
                await refused(d.put_description(mesh, "the first node")),
                await refused(d.invite(mesh, 600, 1)),
            ]:
                check_not_saved(e, "the change is in effect")
            rt = d.meshes[mesh]
            assert rt.dirty_disk
            disk.full.clear()
            await until(lambda: not rt.dirty_disk and rt.save_error is None)
        return mesh

    mesh = asyncio.run(main())

    async def after_restart() -> None:
        async with running_daemon(root) as d:
            me = next(n for n in (await d.get_mesh(mesh)).nodes if n.is_self)
            assert (me.alias, me.description) == ("alpha", "the first node")
            assert me.services == {"web": "http://[::1]:80"}

    asyncio.run(after_restart())


def test_a_mesh_that_cannot_be_saved_is_not_created(root: Path, disk: Disk) -> None:
    async def main() -> None:
        async with running_daemon(root) as d:
            disk.full.add(root / "state")
            check_not_saved(await refused(d.new_mesh(MeshOptions())), "the mesh was not created")
            assert d.meshes == {}
            assert not list((root / "state").glob("meshes/*"))

    asyncio.run(main())


def test_a_device_that_cannot_be_saved_is_not_added(root: Path, disk: Disk) -> None:
    """Its config (the private key made for it) is in the answer only: left in
    effect, the device would be listed with a key nobody has."""

    async def main() -> None:
        async with running_daemon(root) as d:
            mesh = await d.new_mesh(MeshOptions())
            disk.full.add(root / "state" / "meshes")
            e = await refused(d.add_device(mesh, "phone"))
            check_not_saved(e, "the device was not added")
            assert await d.list_devices(mesh) == []
            me = d.meshes[mesh].node.record
            assert me is not None and me.devices == ()

    asyncio.run(main())


def test_a_join_is_not_answered_before_its_admission_is_on_disk(root: Path, disk: Disk) -> None:
    """The joiner is not admitted while the admitter cannot save its admission
    (a crash would forget the use of a one-use token, which would then admit
    a second node); it is, with the same token, once the disk has room."""

    async def main() -> None:
        async with (
            running_daemon(root / "a") as founder,
            running_daemon(root / "b", timeout=1) as joiner,
        ):
            mesh = await founder.new_mesh(MeshOptions())
            token = await founder.invite(mesh, 600, 1)
            disk.full.add(root / "a")
            e = await refused(joiner.join_mesh(token, MeshOptions()))
            assert e.status == 503, e
            assert mesh not in joiner.meshes
            disk.full.clear()
            assert await joiner.join_mesh(token, MeshOptions()) == mesh

    asyncio.run(main())
