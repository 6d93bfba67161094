"""What join-mesh says when the invitation's issuer refuses it.

The issuer's Refusal carries no reason (core/messages.py: a non-member learns
nothing), so the joiner names every cause it can have. It said "expired, used
up, or not valid for this mesh": an expired token never gets there (the joiner
checks the expiry in the token first), and a revoked token, or a token given to
a node evicted from the mesh (which no token lets back in), was not named: the
user of a revoked token, or an evicted node, was sent to ask for a new token
that would fail the same way.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from daemon_inproc import running_daemon, until
from smegmesh.core.identity import key_to_text
from smegmesh.daemon import service as svc
from smegmesh.daemon.config import MeshOptions


async def _refused(aw: object) -> svc.ServiceError:
    try:
        await aw  # type: ignore[misc]
    except svc.ServiceError as e:
        return e
    raise AssertionError("the join was not refused")


def test_a_refused_join_names_revoked_and_evicted(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The refusing member logs why too (it said nothing at all: its operator
    could not tell a revoked token from an evicted node)."""

    def logged(who: bytes, mesh: str) -> list[str]:
        short = key_to_text(who)[:12]
        lines = [r.getMessage() for r in caplog.records if "refused join" in r.getMessage()]
        return [m for m in lines if short in m and f"mesh {mesh}: " in m]

    async def main() -> None:
        async with (
            running_daemon(root / "a") as founder,
            running_daemon(root / "b", timeout=1) as joiner,
        ):
            mesh = await founder.new_mesh(MeshOptions())
            token = await founder.invite(mesh, 600, 1)
            (inv,) = await founder.list_invites(mesh)
            await founder.revoke_invite(mesh, inv.token_id)
            with caplog.at_level(logging.INFO, logger="smegd"):
                e = await _refused(joiner.join_mesh(token, MeshOptions()))
            assert e.code == "refused" and "revoked" in e.message, e.message
            assert "expired" not in e.message, e.message  # checked before asking
            me = joiner.identity.wg_public_key
            assert any(": token revoked (" in m for m in logged(me, mesh)), caplog.text

            # evicted: no new token lets it back in
            assert await joiner.join_mesh(await founder.invite(mesh, 600, 1), MeshOptions())
            key = joiner.meshes[mesh].node.key
            await until(lambda: founder.meshes[mesh].node.mesh.record(key) is not None)
            await founder.evict(mesh, key_to_text(key), False)
            await joiner.leave_mesh(mesh, force=True)
            e = await _refused(joiner.join_mesh(await founder.invite(mesh, 600, 1), MeshOptions()))
            assert "evicted" in e.message and "used up" in e.message, e.message

    asyncio.run(main())
