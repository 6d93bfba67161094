"""The last admin of a mesh with other members does not leave it by mistake.

Found by a user's sweep of the CLI: ``leave-mesh`` on the founder (the only
admin) of a mesh with members left it with nobody able to evict a node or
name an admin, for good (there is no way to recover an admin). It is refused
now, naming the way out (make another admin first) and ``--force``.
"""

from __future__ import annotations

import json

from smegmesh.testbed.loopback import one_mesh


def test_the_last_admin_leaves_only_with_force() -> None:
    with one_mesh(3) as (c, mesh):
        owner, a, _b = c.daemons
        # making an admin of an admin: said so, and nothing published
        r = owner.ctl("admin", "add", "--meshid", mesh, owner.self_key(mesh))
        assert "was already an admin of" in r.stdout, r
        r = a.ctl("admin", "add", "--meshid", mesh, owner.self_key(mesh), code=None)
        assert r.code == 1 and "admin" in r.stderr, r  # a member that may not: told so
        a.ctl("leave-mesh", "--meshid", mesh)  # a member that is no admin leaves
        r = owner.ctl("leave-mesh", "--meshid", mesh, code=None)
        assert r.code == 1 and len(r.stderr.splitlines()) == 1, r
        assert "last admin" in r.stderr and "--force" in r.stderr and "admin add" in r.stderr
        assert mesh in owner.mesh_ids()  # nothing done
        rj = owner.ctl("leave-mesh", "--meshid", mesh, "--json", code=None)
        assert rj.code == 1 and json.loads(rj.stdout)["error"]["code"] == "last_admin", rj
        owner.ctl("leave-mesh", "--meshid", mesh, "--force")
        assert mesh not in owner.mesh_ids()
        # the last member of a mesh leaves it without --force: nobody is left behind
        solo = owner.ctl("new-mesh").stdout.strip()
        owner.ctl("leave-mesh", "--meshid", solo)
        assert not c.tracebacks(), "tracebacks in smegd logs"
