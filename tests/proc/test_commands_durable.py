"""What a command changed is on disk before the command answers (a real daemon).

smegctl said "service web set in MESH", and a crash in the next second lost
it: a command's change was written by the persist tick, within a second
(walkthrough, eighteenth session). A user who saw the answer must find the
change after any crash.
"""

from __future__ import annotations

from smegmesh.testbed.loopback import cluster


def test_each_commands_change_survives_a_kill9_right_after_its_answer() -> None:
    with cluster(1) as c:
        (d,) = c.daemons
        mesh_id = d.api("POST", "/v1/meshes")["mesh_id"]
        base = f"/v1/meshes/{mesh_id}"
        changes = [
            ("PUT", "alias", {"alias": "alpha"}),
            ("PUT", "services/web", {"value": "http://[::1]:80"}),
            ("PUT", "description", {"description": "the first node"}),
            ("POST", "invites", {"ttl_s": 600, "uses": 2}),
            ("POST", "devices", {"name": "phone"}),
        ]
        for i, (method, path, body) in enumerate(changes):
            d.api(method, f"{base}/{path}", json=body)
            d.kill9()  # at once: no persist tick in between
            d.restart()
            me = next(n for n in d.mesh(mesh_id)["nodes"] if n["is_self"])
            held = {
                "alias": me["alias"] == "alpha",
                "services/web": me["services"].get("web") == "http://[::1]:80",
                "description": me["description"] == "the first node",
                "invites": len(d.api("GET", f"{base}/invites")) == 1,
                "devices": [x["alias"] for x in d.api("GET", f"{base}/devices")] == ["phone"],
            }
            for _m, p, _b in changes[: i + 1]:
                assert held[p], (p, "lost by a crash after", path)
