"""The daemon's mesh-authority operations: evict, admins, invitations (issue 11).

A mixin of :class:`smegmesh.daemon.node.Daemon`: each operation resolves the
node named by the user, asks the engine (:class:`~smegmesh.core.meshnode.MeshNode`)
to sign the statement (the engine refuses what this node may not do), and
hands the engine's outputs to the daemon like any other change.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from smegmesh.core.addressing import mesh_prefix, node_id_prefix, overlay_address
from smegmesh.core.cert import Policy
from smegmesh.core.identity import key_from_text, key_to_text
from smegmesh.core.invite import tokens_used
from smegmesh.core.meshnode import NotAllowed
from smegmesh.daemon import service as svc
from smegmesh.daemon.api_models import MeshDetail, NodeInfo
from smegmesh.daemon.api_models_authority import (
    AdminResponse,
    AliasReserved,
    EvictResponse,
    InviteInfo,
    PolicyResponse,
)
from smegmesh.daemon.resolve import describe, resolve_node
from smegmesh.daemon.runtime import now_ms

if TYPE_CHECKING:
    from smegmesh.daemon.runtime import MeshRuntime

log = logging.getLogger("smegmesh.daemon")


def forbidden(e: Exception) -> svc.ServiceError:
    return svc.ServiceError("forbidden", str(e), 403)


#: Warnings named one by one in a reservation's answer (the rest counted).
MAX_CLAIM_WARNINGS = 16


class AuthorityOps:
    """Mixin: needs ``_get(mesh_id)``, ``_commit(rt, outs)`` and ``identity``."""

    if TYPE_CHECKING:
        identity: Any

        def _get(self, mesh_id: str) -> MeshRuntime: ...
        def _emit(self, rt: MeshRuntime, outs: list[Any]) -> None: ...
        async def _commit(self, rt: MeshRuntime, outs: list[Any]) -> None: ...
        def device_infos(self, rt: MeshRuntime) -> list[Any]: ...

    def _target(self, rt: MeshRuntime, node: str) -> tuple[bytes, str, str]:
        """(key, alias, description) of the node ``node`` names among every node the
        mesh holds a record of (live, pruned or left: a dead node can be evicted)."""
        nodes = [
            NodeInfo(
                public_key=key_to_text(r.wg_key),
                alias=r.alias,
                role=r.role.value,
                overlay_address=r.address,
                node_id=node_id_prefix(r.wg_key),
            )
            for r in rt.node.mesh.records()
        ]
        nodes += [  # sponsored devices can be evicted too (issue 18)
            NodeInfo(
                public_key=d.public_key,
                alias=d.alias,
                role="client",
                overlay_address=d.overlay_address,
                node_id=d.node_id,
            )
            for d in self.device_infos(rt)
        ]
        view = MeshDetail(
            mesh_id=rt.mesh_id,
            prefix=str(mesh_prefix(rt.mesh_id)),
            self_key=key_to_text(self.identity.wg_public_key),
            nodes=nodes,
        )
        try:
            found = resolve_node(node, [view], rt.mesh_id)
        except svc.ServiceError as e:
            if e.code == "unknown_node":
                self._already_evicted(rt, node)
            raise
        if found.node is None:
            raise svc.ServiceError(
                "unknown_node", f"no node of mesh {rt.mesh_id} has address {found.address}", 404
            )
        n = found.node
        return key_from_text(n.public_key), n.alias, describe(rt.mesh_id, n)

    def _already_evicted(self, rt: MeshRuntime, node: str) -> None:
        """A clear error if ``node`` names a node evicted from the mesh (its record is
        gone, so :meth:`_target` found nothing): not "no node matches", as for a typo."""
        nodes = [
            NodeInfo(
                public_key=key_to_text(k),
                role="peer",
                overlay_address=str(overlay_address(rt.mesh_id, k)),
                node_id=node_id_prefix(k),
            )
            for k in rt.node.mesh.authority.revoked
        ]
        view = MeshDetail(mesh_id=rt.mesh_id, prefix="", self_key="", nodes=nodes)
        try:
            n = resolve_node(node, [view], rt.mesh_id).node
        except svc.ServiceError:
            return
        if n is not None:
            raise svc.ServiceError(
                "evicted",
                f"{n.public_key[:12]}… was evicted from mesh {rt.mesh_id} already "
                "(get-mesh --all lists evicted nodes)",
                409,
            )

    async def evict(self, mesh_id: str, node: str, cascade: bool) -> EvictResponse:
        rt = self._get(mesh_id)
        key, alias, name = self._target(rt, node)
        if not rt.node.mesh.admission:
            raise svc.invalid_argument(
                "this mesh was created by an older smegmesh and has no admins: create a new mesh"
            )
        kept = 0 if cascade else len(rt.node._admitted_by(key))
        held = {r.wg_key for r in rt.node.mesh.records()}
        try:
            outs = rt.node.evict(now_ms(), key, cascade=cascade)
        except NotAllowed as e:
            raise forbidden(e) from None
        # the nodes this eviction removed (not every node ever evicted: review of the authority)
        gone = held - {r.wg_key for r in rt.node.mesh.records()} - {key}
        await self._commit(rt, outs)
        log.info(
            "mesh %s: evicted %s%s",
            mesh_id,
            name,
            f" and {len(gone)} nodes it admitted" if gone else "",
        )
        evicted = [key_to_text(key), *sorted(key_to_text(k) for k in gone)]
        return EvictResponse(evicted=evicted, alias=alias, kept=kept)

    async def set_admin(self, mesh_id: str, node: str, admin: bool) -> AdminResponse:
        rt = self._get(mesh_id)
        key, _alias, name = self._target(rt, node)
        # already so: the engine publishes nothing (after its checks of who may)
        changed = (key in rt.node.mesh.authority.admins) != admin
        try:
            outs = rt.node.set_admin(now_ms(), key, admin)
        except NotAllowed as e:
            raise forbidden(e) from None
        if changed:
            await self._commit(rt, outs)
            log.info(
                "mesh %s: %s %s",
                mesh_id,
                "made admin:" if admin else "no longer admin:",
                name,
            )
        return AdminResponse(
            node=key_to_text(key),
            admin=admin,
            admins=sorted(key_to_text(k) for k in rt.node.mesh.authority.admins),
            changed=changed,
        )

    async def set_policy(self, mesh_id: str, policy: str) -> PolicyResponse:
        rt = self._get(mesh_id)
        try:
            outs = rt.node.set_policy(now_ms(), Policy(policy))
        except NotAllowed as e:
            raise forbidden(e) from None
        await self._commit(rt, outs)
        log.info("mesh %s: invite policy is now %s", mesh_id, policy)
        return PolicyResponse(mesh_id=mesh_id, invite_policy=rt.node.mesh.authority.policy.value)

    async def reserve_alias(self, mesh_id: str, alias: str, node: str | None) -> AliasReserved:
        rt = self._get(mesh_id)
        alias = alias.lower()
        key = self._target(rt, node)[0] if node else None
        taken = self._other_claims(rt, alias, key) if key else []
        try:
            outs = rt.node.reserve_alias(now_ms(), alias, key)
        except NotAllowed as e:
            raise forbidden(e) from None
        except ValueError as e:  # a CertError says "alias: ..." itself
            msg = str(e) if str(e).startswith("alias:") else f"alias: {e}"
            raise svc.invalid_argument(msg) from None
        await self._commit(rt, outs)
        log.info(
            "mesh %s: alias %r %s", mesh_id, alias, f"reserved for {node}" if node else "released"
        )
        for w in taken:
            log.warning("mesh %s: %s", mesh_id, w)
        text = key_to_text(key) if key else None
        return AliasReserved(alias=alias, node=text, warnings=taken)

    def _other_claims(self, rt: MeshRuntime, alias: str, holder: bytes) -> list[str]:
        """Each other live node or device that claims ``alias``, in words (a warning each)."""
        mine = key_to_text(holder)
        claims = [("node", key_to_text(r.wg_key), r.alias) for r in rt.node.live_records()]
        claims += [("device", d.public_key, d.alias) for d in self.device_infos(rt)]
        others = [(kind, k) for kind, k, a in claims if a.lower() == alias and k != mine]
        said = f"alias {alias} too: the reservation outranks"
        out = [
            f"{kind} {k[:12]}… claims {said} it in DNS" for kind, k in others[:MAX_CLAIM_WARNINGS]
        ]
        if len(others) > MAX_CLAIM_WARNINGS:  # an answer's size does not grow with the mesh
            out.append(
                f"{len(others) - MAX_CLAIM_WARNINGS} more nodes or devices claim {said} them"
            )
        return out

    async def list_invites(self, mesh_id: str) -> list[InviteInfo]:
        rt = self._get(mesh_id)
        auth = rt.node.mesh.authority
        now = now_ms()
        records = rt.node.live_records()
        # one pass over the records for every invitation (O(N), not O(N^2))
        hashes = [g.token_hash for r in records for g in r.invites]
        used_by = tokens_used(records, auth.token_subjects, hashes)
        out = []
        for r in records:
            for g in r.invites:
                used = used_by[g.token_hash]
                out.append(
                    InviteInfo(
                        token_id=g.token_hash.hex(),
                        issuer=key_to_text(r.wg_key),
                        issuer_alias=r.alias,
                        expires=g.expiry_ms / 1000,
                        uses=g.uses,
                        used=len(used),
                        strict=g.strict,
                        # its issuer revokes it in its own record (uses 0), an admin by a statement
                        revoked=g.uses == 0 or auth.token_revoked(g.token_hash, r.wg_key),
                        expired=g.expiry_ms <= now,
                    )
                )
        return sorted(out, key=lambda i: (i.expires, i.token_id))

    async def revoke_invite(self, mesh_id: str, token_id: str) -> InviteInfo:
        rt = self._get(mesh_id)
        text = token_id.strip().lower()
        invites = await self.list_invites(mesh_id)
        found = [i for i in invites if i.token_id.startswith(text)] if text else []
        if not found:
            raise svc.ServiceError(
                "unknown_invite", f"no invitation with id {token_id!r} (see list-invites)", 404
            )
        if len({i.token_id for i in found}) > 1:
            raise svc.invalid_argument(f"invitation id {token_id!r} is ambiguous")
        info = found[0]
        try:
            outs = rt.node.revoke_invite(now_ms(), bytes.fromhex(info.token_id))
        except NotAllowed as e:
            raise forbidden(e) from None
        await self._commit(rt, outs)
        log.info("mesh %s: revoked invitation %s", mesh_id, info.token_id[:12])
        return info.model_copy(update={"revoked": True})
