"""An evicted node learns it was evicted, with real daemons (memory backend).

Found by a user's sweep of the CLI: after ``evict``, the evicted daemon showed
the mesh with itself alone in it ("1/1 online"), and ``invite`` there printed a
token that no member would honour: the members refused its calls and the
eviction, gossiped among them, never reached it. A member now answers an
evicted node's call with its eviction (``core/evicted.py``), and the node says
so (the WARNING event ``mesh.evicted``), shows it in ``get-mesh`` and
``status``, and refuses to invite.
"""

from __future__ import annotations

import time

from smegmesh.testbed.loopback import one_mesh, wait_converged, wait_until


def test_an_evicted_daemon_is_told_shows_it_and_invites_nobody() -> None:
    with one_mesh(3) as (c, mesh):
        owner, a, b = c.daemons
        key_b, key_owner = b.self_key(mesh), owner.self_key(mesh)
        t0 = time.monotonic()
        owner.ctl_json("evict", "--meshid", mesh, key_b)
        told = wait_until(lambda: b.mesh(mesh).get("evicted_self"), 20, 0.1, "B told")
        print(f"\nB knew of its eviction {time.monotonic() - t0:.2f} s after evict")
        assert told["public_key"] == key_b and told["by"] == key_owner
        wait_until(lambda: "this node was evicted from the mesh by" in b.log(), 10)
        status = b.ctl("status").stdout
        assert f"this node was evicted from {mesh}" in status, status
        assert f"smegctl leave-mesh --meshid {mesh}" in status
        r = b.ctl("invite", "--meshid", mesh, code=None)
        assert r.code == 1 and "evicted" in r.stderr and not r.stdout, r
        # the members that refused it are not told anything new: it stays out
        assert key_b not in a.mesh_keys(mesh) and key_b not in owner.mesh_keys(mesh)
        assert not c.tracebacks(), "tracebacks in smegd logs"


def test_a_daemon_evicted_by_cascade_is_told_too() -> None:
    """C was admitted by B; an admin evicts B with --cascade: C is in no list of
    evictions, and got only refusals (twenty-ninth session). Now the members show
    it B's eviction, which voids its own admission chain."""
    with one_mesh(3) as (c, mesh):
        owner, a, b = c.daemons
        (d,) = c.add(1)
        tok = b.api("POST", f"/v1/meshes/{mesh}/invites", json={"ttl_s": 600, "uses": 1})["token"]
        d.api("POST", "/v1/join", json={"token": tok})
        wait_converged([owner, a, b, d], mesh)
        key_b, key_d = b.self_key(mesh), d.self_key(mesh)
        t0 = time.monotonic()
        owner.ctl_json("evict", "--meshid", mesh, "--cascade", key_b)
        told = wait_until(lambda: d.mesh(mesh).get("evicted_self"), 20, 0.1, "D told")
        print(f"\nD knew of its eviction by cascade {time.monotonic() - t0:.2f} s after evict")
        assert told["public_key"] == key_d and told["through"] == key_b, told
        assert told["by"] == owner.self_key(mesh) and told["cascade"]
        wait_until(lambda: "this node was evicted from the mesh by" in d.log(), 10)
        r = d.ctl("invite", "--meshid", mesh, code=None)
        assert r.code == 1 and "evicted" in r.stderr and not r.stdout, r
        assert key_d not in a.mesh_keys(mesh) and key_d not in owner.mesh_keys(mesh)
        assert not c.tracebacks(), "tracebacks in smegd logs"
