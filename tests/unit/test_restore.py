"""The saved meshes at start (daemon/restore.py): one that cannot be restored
does not stop the daemon; one without an address yet is restored once it has one.

One bad file stopped smegd from starting at all, with a traceback: only the
mesh id was checked on load and ``MeshOptions(**opts)`` ran outside any error
handling (a bad value, an option of a newer smegd after a downgrade, "opts":
null). And a peer mesh whose address is discovered made the start fail
("cannot find this node's address") at a boot before the network was up.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import msgpack
import pytest

from daemon_inproc import running_daemon, until
from smegmesh.daemon import restore, runtime
from smegmesh.daemon.config import MeshOptions
from smegmesh.daemon.restore import SavedMeshError, read_saved_mesh
from smegmesh.daemon.service import ServiceError

MESH = "amber-falcon-river-k7q2"


def saved(d: Path, meta: Any, state: bytes | None = None, name: str = MESH) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.json"
    path.write_text(json.dumps(meta))
    if state is not None:
        (d / f"{name}.state").write_bytes(state)
    return path


def meta(**kw: Any) -> dict[str, Any]:
    return {"mesh_id": MESH, "opts": {}, "listen_port": 51820, **kw}


def test_a_saved_mesh_is_read_with_its_options(tmp_path: Path) -> None:
    m = read_saved_mesh(saved(tmp_path, meta(opts={"role": "client"}), msgpack.packb([])))
    assert (m.mesh_id, m.opts.role, m.listen_port, m.items) == (MESH, "client", 51820, [])
    no_opts = {k: v for k, v in meta().items() if k != "opts"}  # the defaults, as ever
    assert read_saved_mesh(saved(tmp_path, no_opts)).opts == MeshOptions()


@pytest.mark.parametrize(
    ("content", "state", "says"),
    [
        (meta(opts={"role": "server"}), None, "opts.role: Input should be 'peer' or 'client'"),
        (meta(opts={"futureOption": 1}), None, "opts.futureOption: not an option of this smegd"),
        (meta(opts=None), None, "opts None: not a JSON object"),
        (meta(opts=["peer"]), None, "not a JSON object"),
        (meta(listen_port="51820"), None, "listen_port '51820': not a port"),
        (meta(listen_port=0), None, "listen_port 0: not a port"),
        (meta(mesh_id="other-mesh-k7q2"), None, "not the mesh the file is named for"),
        ([MESH], None, "not a JSON object"),
        (meta(), b"\xc1 not msgpack", f"{MESH}.state: unreadable"),
        (meta(), msgpack.packb({"a": 1}), f"{MESH}.state: not a list of items"),
    ],
    ids=[
        "bad-value",
        "newer-option",
        "null-opts",
        "list-opts",
        "port-text",
        "port-0",
        "other-mesh",
        "not-object",
        "bad-state",
        "state-not-list",
    ],
)
def test_what_is_wrong_with_a_saved_mesh_is_one_line(
    tmp_path: Path, content: Any, state: bytes | None, says: str
) -> None:
    with pytest.raises(SavedMeshError) as e:
        read_saved_mesh(saved(tmp_path, content, state))
    assert says in str(e.value)
    assert "\n" not in str(e.value)


def test_broken_json_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / f"{MESH}.json"
    path.write_text('{"mesh_id": ')
    with pytest.raises(SavedMeshError, match="unreadable: Expecting value"):
        read_saved_mesh(path)


async def make_mesh(root: Path, **extra: Any) -> str:
    async with running_daemon(root, **extra) as d:
        return await d.new_mesh(MeshOptions())


@pytest.mark.parametrize(
    "opts", [{"role": "server"}, {"futureOption": 1}, None], ids=["bad-value", "newer", "null"]
)
def test_a_mesh_that_cannot_be_restored_does_not_stop_the_others(
    root: Path, opts: Any, caplog: pytest.LogCaptureFixture
) -> None:
    good = asyncio.run(make_mesh(root))
    bad = saved(root / "state" / "meshes", meta(opts=opts))

    async def main() -> None:
        async with running_daemon(root) as d:
            assert list(d.meshes) == [good]  # the other mesh runs
            st = await d.get_status()
            assert [(u.mesh_id, u.file, u.retrying) for u in st.not_restored] == [
                (MESH, str(bad), False)
            ]
            with pytest.raises(ServiceError) as e:  # a command on it says why
                await d.get_mesh(MESH)
            assert (e.value.status, e.value.code) == (503, "not_restored")
            assert st.not_restored[0].reason in e.value.message

    with caplog.at_level(logging.INFO, "smegd"):
        asyncio.run(main())
    assert bad.exists()  # the user's file is kept
    lines = [x.getMessage() for x in caplog.records if x.levelno >= logging.ERROR]
    assert len(lines) == 1 and str(bad) in lines[0] and "\n" not in lines[0], lines
    assert not any(x.exc_info for x in caplog.records)  # no traceback


def test_a_peer_mesh_without_an_address_yet_is_restored_once_it_has_one(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No publicEndpoint: the address is discovered (the default route's). At a
    boot before the network is up there is none: the start failed, every mesh
    down. Now that mesh waits (shown in status) and starts once there is one."""
    no_endpoint: dict[str, Any] = {"baseConfiguration": {}}
    address: dict[str, str | None] = {"now": "2001:db8::1"}
    monkeypatch.setattr(runtime, "outgoing_address", lambda: address["now"])
    monkeypatch.setattr(restore, "RESTORE_RETRY_S", 0.05, raising=False)
    mesh = asyncio.run(make_mesh(root, **no_endpoint))
    address["now"] = None  # no route yet

    async def main() -> None:
        async with running_daemon(root, **no_endpoint) as d:
            st = await d.get_status()
            assert [(u.mesh_id, u.retrying) for u in st.not_restored] == [(mesh, True)]
            assert "cannot find this node's address" in st.not_restored[0].reason
            address["now"] = "2001:db8::1"  # the network is up
            await until(lambda: mesh in d.meshes)
            assert (await d.get_status()).not_restored == []
            me = d.meshes[mesh].node.record
            assert me is not None and me.wg_endpoint is not None
            assert me.wg_endpoint.startswith("[2001:db8::1]:")

    with caplog.at_level(logging.INFO, "smegd"):
        asyncio.run(main())
    assert not [x for x in caplog.records if x.levelno >= logging.ERROR]
