"""A saved mesh that cannot be restored does not stop smegd (a real daemon).

One bad options file (a hand edit, an option of a newer smegd after a
downgrade) made smegd exit at start with a traceback, every mesh down.
Now it starts, runs the other meshes, and names the mesh and its file in
its log and in ``smegctl status``; a command on that mesh says why.
"""

from __future__ import annotations

import json

from smegmesh.testbed.loopback import Cluster

MESH = "amber-falcon-river-k7q2"


def test_smegd_starts_without_the_mesh_it_cannot_restore_and_says_so() -> None:
    c = Cluster()
    try:
        (d,) = c.add(1)
        good = d.api("POST", "/v1/meshes")["mesh_id"]
        d.stop()
        bad = d.dir / "state" / "meshes" / f"{MESH}.json"
        bad.write_text(json.dumps({"mesh_id": MESH, "opts": {"futureOption": 1}}))
        d.restart()
        assert d.mesh_ids() == {good}
        out = d.ctl("status").stdout
        assert f"mesh {MESH} NOT RUNNING: opts.futureOption: not an option" in out, out
        assert str(bad) in out
        (u,) = d.ctl_json("status")["not_restored"]
        assert (u["mesh_id"], u["file"], u["retrying"]) == (MESH, str(bad), False)
        r = d.ctl("get-mesh", "--meshid", MESH, code=1)
        assert f"mesh {MESH} is saved here but not running" in r.stderr, r
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert str(bad) in d.log() and "Traceback" not in d.log()
        assert bad.exists()
    finally:
        c.close()
