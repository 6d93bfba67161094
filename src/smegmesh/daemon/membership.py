"""Mesh membership operations of the local API: create, invite, join, leave."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

from smegmesh.core.addressing import generate_mesh_id
from smegmesh.core.cert import Founding, Policy
from smegmesh.core.engine import TooManyInvites
from smegmesh.core.invite import Bootstrap, TokenError, parse_token
from smegmesh.core.meshnode import NotAllowed
from smegmesh.core.messages import JoinReply, WhoAmI, YouAre
from smegmesh.core.record import RecordError, Role
from smegmesh.core.wire import WireError, decode, encode
from smegmesh.daemon import service as svc
from smegmesh.daemon.base import DaemonBase
from smegmesh.daemon.config import MeshOptions, resolve_mesh_settings
from smegmesh.daemon.joinretry import JOIN_DEADLINE_TIMEOUTS, unreachable_message
from smegmesh.daemon.joinretry import attempts as join_attempts
from smegmesh.daemon.persist import PersistError
from smegmesh.daemon.runtime import MeshRuntime, now_ms
from smegmesh.daemon.store import remove_mesh_files
from smegmesh.daemon.transport import RpcError

log = logging.getLogger("smegd")


class MembershipOps(DaemonBase):
    """Mixin of the daemon: the membership half of ``NodeService``."""

    async def new_mesh(self, opts: MeshOptions) -> str:
        founding = Founding.create(
            self.identity,
            generate_mesh_id(secrets.SystemRandom()).rpartition("-")[0],
            now_ms=now_ms(),
            policy=Policy(opts.invite_policy or Policy.PEERS),
        )
        mesh_id = founding.mesh_id
        state = self._new_state(mesh_id)
        state.apply(founding, now_ms())
        rt = self._add_runtime(mesh_id, opts, state, None)
        if rt.node.settings.role != Role.PEER:
            self._discard_runtime(rt)
            raise svc.invalid_argument(
                "a mesh is created by a peer (role client cannot create one)"
            )
        self._emit(rt, rt.node.start(now_ms()))
        try:
            self._save_mesh(rt)
        except PersistError as e:  # nobody knows of the mesh yet: not created
            self._discard_runtime(rt)
            with contextlib.suppress(OSError):
                remove_mesh_files(self._mesh_dir(), mesh_id)
            raise svc.not_saved(e.strerror or str(e), "the mesh was not created") from None
        self.member_events.track(mesh_id, rt.node.mesh, "created")
        log.info("created mesh %s (invite policy %s)", mesh_id, founding.policy)
        return mesh_id

    async def invite(self, mesh_id: str, ttl_s: int, uses: int, strict: bool = False) -> str:
        rt = self._get(mesh_id)
        boots: list[Bootstrap] = []
        me = rt.node.record
        if me is not None and me.control_endpoint and me.tls_fp:
            boots.append(Bootstrap(me.control_endpoint, me.tls_fp, me.wg_key))
        for r in rt.node.live_records():
            if len(boots) >= 3:
                break
            if r.wg_key != self.identity.wg_public_key and r.control_endpoint and r.tls_fp:
                boots.append(Bootstrap(r.control_endpoint, r.tls_fp, r.wg_key))
        if not boots:
            raise svc.unavailable("no reachable member to name in the token")
        if strict:  # only this node admits with a strict token: name only it
            boots = boots[:1]
        try:
            token, outs = rt.node.invite(
                now_ms(),
                ttl_ms=ttl_s * 1000,
                uses=uses,
                bootstrap=boots,
                secret=secrets.token_bytes(16),
                strict=strict,
            )
        except TooManyInvites as e:
            raise svc.ServiceError("too_many_invites", str(e), 409) from None
        except NotAllowed as e:
            raise svc.ServiceError("forbidden", str(e), 403) from None
        except (ValueError, RecordError) as e:
            raise svc.invalid_argument(str(e)) from None
        await self._commit(rt, outs)
        return token.encode()

    async def _discover_public(self, tok: Any, opts: MeshOptions) -> MeshOptions:
        """``ipDiscovery: public``: ask a bootstrap member which address we come from.

        The answer is kept in the mesh's options, so a restart reuses it.
        """
        s = resolve_mesh_settings(self.config.base_configuration, opts)
        if s.endpoint or s.ip_discovery != "public" or s.role != "peer":
            return opts
        for b in tok.bootstrap:
            try:
                reply = decode(
                    await self.rpc.call(
                        b.control_endpoint, b.tls_fp, encode(WhoAmI(tok.mesh_id)), to=b.wg_key
                    )
                )
            except (RpcError, WireError, ValueError, OSError) as e:
                log.info("public address discovery via %s failed: %s", b.control_endpoint, e)
                continue
            if isinstance(reply, YouAre):
                log.info(
                    "public address discovery: %s sees us as %s", b.control_endpoint, reply.address
                )
                return opts.model_copy(update={"endpoint": reply.address})
        log.warning("public address discovery failed; using the outgoing interface's address")
        return opts

    async def join_mesh(self, token: str, opts: MeshOptions) -> str:
        """Join with ``token``; a failed join, whatever failed, leaves nothing behind."""
        before = self.meshes.copy()
        try:
            return await self._join_mesh(token, opts)
        except BaseException:
            for mesh_id, rt in list(self.meshes.items()):
                if rt.joining and before.get(mesh_id) is not rt:
                    self._discard_runtime(rt)
            raise

    async def _join_mesh(self, token: str, opts: MeshOptions) -> str:
        try:
            tok = parse_token(token)
        except TokenError as e:
            raise svc.invalid_argument(str(e)) from None
        if tok.mesh_id in self.meshes:
            raise svc.conflict(f"already a member of mesh {tok.mesh_id}")
        not_running = self._unrestored_error(tok.mesh_id)
        if not_running is not None:  # its saved state is kept: not joined over it
            raise not_running
        if tok.expiry_ms <= now_ms():
            raise svc.refused("the invitation has expired")
        opts = await self._discover_public(tok, opts)
        rt = self._add_runtime(tok.mesh_id, opts, self._new_state(tok.mesh_id), None)
        rt.joining = True
        node = rt.node
        req = encode(node.join_request(tok.secret, now_ms()))
        errors: list[tuple[str, str]] = []
        refused = False
        started = time.monotonic()
        # Round after round over the bootstrap members, paced, until a deadline:
        # a busy member may time out (a retry with the same token is admitted
        # again: admissions are per joiner). See daemon/joinretry.py.
        async for b in join_attempts(
            tok.bootstrap,
            lambda b: self.rpc.backoff.wait((b.control_endpoint, b.tls_fp)),
            deadline_s=JOIN_DEADLINE_TIMEOUTS * float(self.config.timeout),
        ):
            try:
                reply = decode(
                    await self.rpc.call(
                        b.control_endpoint,
                        b.tls_fp,
                        req,
                        timeout=2 * float(self.config.timeout),
                        to=b.wg_key,
                    )
                )
            except (RpcError, WireError, ValueError, OSError) as e:
                errors.append((b.control_endpoint, str(e)))
                log.info("join through %s failed: %s (will retry)", b.control_endpoint, e)
                continue
            if isinstance(reply, JoinReply):
                outs = node.absorb(reply.items, now_ms(), reply.chain)
                if node.mesh.admission and node.record is None:
                    # The member's reply did not prove the mesh's authority (its
                    # founding record) or our admission: do not join on its word.
                    errors.append((b.control_endpoint, "reply without a valid admission"))
                    continue
                self._joined(rt, outs, b)
                return tok.mesh_id
            errors.append((b.control_endpoint, "refused"))
            if b == tok.bootstrap[0]:
                refused = True  # the issuer's word is final (expired, used up, revoked)
                break
            # Others named in the token learn of it with the issuer's record:
            # under load, not yet. Not final: the rounds go on to the issuer.
            log.info(
                "join through %s refused (it may not know the invitation yet; will retry)",
                b.control_endpoint,
            )
        self._discard_runtime(rt)
        if refused:
            raise svc.refused(  # the Refusal says no more; the expiry was checked above
                "the invitation was refused by its issuer: it is used up or revoked, or its "
                "issuer may no longer invite; or this node was evicted from the mesh (then no "
                "invitation lets it back in)"
            )
        raise svc.unavailable(unreachable_message(errors, time.monotonic() - started))

    def _joined(self, rt: MeshRuntime, outs: list[Any], via: Any) -> None:
        """A member admitted us (its reply absorbed: ``outs``): the mesh is ours, on disk."""
        rt.joining = False
        rt.dirty_wg = True
        node = rt.node
        self._emit(rt, outs)
        self.member_events.track(rt.mesh_id, node.mesh, "joined")
        # The reply holds one page of the state; the rest by anti-entropy, now.
        self._emit(rt, node.pull_from(via.wg_key, now_ms()))
        log.info(
            "joined mesh %s through %s (%d nodes)",
            rt.mesh_id,
            via.control_endpoint,
            len(node.live_records()),
        )
        try:  # the mesh is joined (the members know): it stays, written again
            self._save_mesh(rt)
        except PersistError as e:
            raise svc.not_saved(
                e.strerror or str(e),
                f"mesh {rt.mesh_id} is joined but lost if smegd stops first; retried each second",
            ) from None

    async def leave_mesh(self, mesh_id: str, *, force: bool = False) -> None:
        rt = self._get(mesh_id)
        if not force:
            self._refuse_last_admin(rt)
        self._emit(rt, rt.node.leave(now_ms()))
        if rt.calls:
            await asyncio.wait(list(rt.calls), timeout=3)
        self._discard_runtime(rt)
        self.member_events.forget(mesh_id)
        self.handshakes.forget(mesh_id)
        loop = asyncio.get_running_loop()
        await self._run_hooks(rt, "preDown")
        try:
            await loop.run_in_executor(self._wg_pool, self.reconciler.remove, rt.ifname)
        except Exception as e:
            log.warning("mesh %s: removing %s: %s", mesh_id, rt.ifname, e)
        await self._run_hooks(rt, "postDown")
        self._remove_device_keys(mesh_id)
        try:
            remove_mesh_files(self._mesh_dir(), mesh_id)
        except OSError as e:  # a read-only disk: it would be restored at the next start
            raise svc.not_saved(
                f"cannot remove the saved mesh: {e}",
                f"left, but smegd restores it at its next start: remove {mesh_id}.* by hand",
            ) from None
        self._update_dns()
        log.info("left mesh %s", mesh_id)

    def _refuse_last_admin(self, rt: MeshRuntime) -> None:
        """The last admin of a mesh with other members does not leave it unless forced
        (``AdmissionMixin.left_without_admin``)."""
        others = rt.node.left_without_admin()
        if others:
            raise svc.ServiceError(
                "last_admin",
                f"this node is the last admin of mesh {rt.mesh_id}, which has {others} other "
                "live members: once it leaves nobody can evict a node or name an admin. "
                f"Make another admin first (smegctl admin add --meshid {rt.mesh_id} NODE), "
                "or leave anyway with --force",
                409,
            )

    def _remove_device_keys(self, mesh_id: str) -> None:
        """Delete the device private keys kept for the mesh (``--keep-key``): left,
        nothing could reach them any more (remove-device needs the mesh)."""
        d = self.state_dir / "devices" / mesh_id
        try:
            for p in d.glob("*.key"):
                p.unlink(missing_ok=True)
        except OSError as e:
            log.warning("mesh %s: cannot delete the device keys kept in %s: %s", mesh_id, d, e)
        with contextlib.suppress(OSError):  # absent, or holding what is not ours
            d.rmdir()
