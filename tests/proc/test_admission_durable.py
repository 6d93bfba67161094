"""An admission is on disk before the joiner hears of it (real daemons, memory backend).

A one-use invitation admits one node. The admitting daemon records the use as
a token-ledger statement; when that was written only by the learned-state
schedule (every 5 s), a crash right after an admission forgot the use, and
after a restart the same token admitted a second node.
"""

from __future__ import annotations

import httpx
import pytest

from smegmesh.testbed.loopback import cluster


def test_a_one_use_token_is_spent_even_if_the_admitter_crashes_at_once() -> None:
    with cluster(3) as c:
        founder, first, second = c.daemons
        mesh_id = founder.api("POST", "/v1/meshes")["mesh_id"]
        tok = founder.api("POST", f"/v1/meshes/{mesh_id}/invites", json={"ttl_s": 600, "uses": 1})
        # The invitation is a command: on disk before it answered (as of the
        # eighteenth session), so only the admission is left to write.
        first.api("POST", "/v1/join", json={"token": tok["token"]}, timeout=60)
        founder.kill9()  # at once: before any periodic save could run
        first.kill9()  # nobody can tell the founder of the admission again
        founder.restart()
        with pytest.raises(httpx.HTTPStatusError) as e:
            second.api("POST", "/v1/join", json={"token": tok["token"]}, timeout=60)
        assert e.value.response.status_code in (400, 403, 409), e.value.response.text
        assert mesh_id not in {m["mesh_id"] for m in second.api("GET", "/v1/meshes")}
