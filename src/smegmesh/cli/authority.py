"""smegctl commands of mesh authority: evict, admin, list-invites, revoke-invite."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from smegmesh.cli.app import (
    JsonOpt,
    OptMeshIdOpt,
    _seg,
    app,
    choices,
    mesh_call,
)
from smegmesh.cli.output import EXIT_USAGE, _console, _dur, _fail
from smegmesh.daemon.api_models import InvitePolicy
from smegmesh.daemon.api_models_authority import (
    AdminResponse,
    AliasReserved,
    EvictResponse,
    InviteInfo,
    PolicyResponse,
)

NodeArg = Annotated[
    str,
    typer.Argument(
        metavar="NODE",
        help="An alias, public key, overlay address, or a unique prefix of one.",
        show_default=False,
    ),
]


if TYPE_CHECKING:
    Policy = str
else:
    Policy = choices("Policy", InvitePolicy)


class AdminAction(StrEnum):
    add = "add"
    remove = "remove"


@app.command(
    "evict",
    epilog="Examples: smegctl evict --meshid MESH db1;  smegctl evict --meshid MESH db1 --cascade",
)
def evict(
    ctx: typer.Context,
    node: NodeArg,
    meshid: OptMeshIdOpt = None,
    cascade: Annotated[
        bool,
        typer.Option(
            "--cascade", help="Also evict every node it admitted (and those they admitted)."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Evict a node from a mesh (admins only).

    Publishes a signed revocation: within the change-propagation time every
    member removes the node's WireGuard peer, routes and DNS names, and refuses
    its calls and records. The node cannot come back: not with a new record, an
    old token, a restart, or a new identity it admits itself. Nodes it admitted
    earlier stay, unless --cascade. `get-mesh --all` lists evicted nodes.
    """

    def human(res: EvictResponse, mid: str) -> None:
        name = res.alias or res.evicted[0][:12] + "…"
        n = len(res.evicted) - 1  # the nodes admitted through it that went with it
        extra = f" (and {n} node{'s' if n > 1 else ''} admitted through it)" if n else ""
        typer.echo(f"evicted {name} from {mid}{extra}")

    body = {"node": node, "cascade": cascade}
    mesh_call(ctx, meshid, as_json, "POST", "evict", human, answer=EvictResponse, body=body)


@app.command("admin", epilog="Examples: smegctl admin add --meshid MESH web1")
def admin(
    ctx: typer.Context,
    action: Annotated[
        AdminAction, typer.Argument(help="add: make NODE an admin; remove: drop it.")
    ],
    node: NodeArg,
    meshid: OptMeshIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a node an admin of a mesh, or drop one (admins only).

    Admins can evict nodes, name other admins and reserve aliases; the mesh's
    creator is its first admin. Keep more than one admin so that losing one
    machine never leaves a mesh without one.
    """

    def human(res: AdminResponse, mid: str) -> None:
        if not res.changed:
            verb = "was already an admin of" if res.admin else "was not an admin of"
        else:
            verb = "is now an admin of" if res.admin else "is no longer an admin of"
        typer.echo(f"{node} {verb} {mid} ({len(res.admins)} admins)")

    body = {"node": node, "admin": action == AdminAction.add}
    mesh_call(ctx, meshid, as_json, "POST", "admins", human, answer=AdminResponse, body=body)


@app.command("set-invite-policy", epilog="Example: smegctl set-invite-policy --meshid MESH admins")
def set_invite_policy(
    ctx: typer.Context,
    policy: Annotated[
        Policy,
        typer.Argument(help="admins: only admins admit; peers: peers too; members: anyone."),
    ],
    meshid: OptMeshIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change who may admit new nodes into a mesh (admins only).

    It applies to admissions from now on: a node's right to admit is fixed
    when it is admitted.
    """

    def human(res: PolicyResponse, mid: str) -> None:
        typer.echo(f"invite policy of {mid}: {res.invite_policy}")

    body = {"invite_policy": policy}
    mesh_call(ctx, meshid, as_json, "PUT", "policy", human, answer=PolicyResponse, body=body)


@app.command(
    "reserve-alias",
    epilog="Examples: smegctl reserve-alias --meshid MESH db1 db-primary-key-prefix;  "
    "smegctl reserve-alias --meshid MESH db1 --release",
)
def reserve_alias(
    ctx: typer.Context,
    alias: Annotated[str, typer.Argument(help="The alias (a DNS label).")],
    node: Annotated[
        str | None,
        typer.Argument(
            metavar="[NODE]",
            help="The node that alone may use it (alias, key, address or a prefix).",
            show_default=False,
        ),
    ] = None,
    release: Annotated[
        bool, typer.Option("--release", help="Release the reservation instead.")
    ] = False,
    meshid: OptMeshIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Reserve an alias for one node, or release it (admins only).

    A reserved alias belongs to its holder in DNS whoever else claims it;
    each other node or device that claims it is named in a warning.
    """
    if (node is None) != release:
        msg = "give NODE to reserve the alias, or --release to release it"
        _fail(msg, as_json, code=EXIT_USAGE)  # a usage error, as click's own

    def human(res: AliasReserved, mid: str) -> None:
        if res.node:
            typer.echo(f"alias {res.alias} of {mid} reserved for {res.node[:12]}…")
        else:
            typer.echo(f"alias {res.alias} of {mid} released")
        for w in res.warnings:
            typer.echo(f"smegctl: warning: {w}", err=True)

    body = {"alias": alias, "node": node}
    sub = "alias-reservations"
    mesh_call(ctx, meshid, as_json, "POST", sub, human, answer=AliasReserved, body=body)


def expires_text(expires: float, now: float) -> str:
    """``in 1m30s`` / ``in 100d00h``, or ``5m00s ago`` once past (list-invites' EXPIRES)."""
    left = expires - now
    return f"in {_dur(left)}" if left > 0 else f"{_dur(-left)} ago"


@app.command("list-invites", epilog="Example: smegctl list-invites --meshid MESH")
def list_invites(ctx: typer.Context, meshid: OptMeshIdOpt = None, as_json: JsonOpt = False) -> None:
    """List a mesh's invitations: id, issuer, uses (mesh-wide), expiry. Never the secrets."""

    def human(res: list[InviteInfo], mid: str) -> None:
        if not res:
            typer.echo(f"no invitations in {mid}")
            return
        now = time.time()
        t = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("ID", "ISSUER", "USED", "EXPIRES", "STATE"):
            t.add_column(col)
        for i in res:
            state = (
                "revoked"
                if i.revoked
                else "expired"
                if i.expired
                else "used up"
                if i.used >= i.uses
                else "valid"
            )
            if i.strict:
                state += " (strict)"
            t.add_row(
                i.token_id[:12],
                i.issuer_alias or i.issuer[:12] + "…",
                f"{i.used}/{i.uses}",
                expires_text(i.expires, now),
                state,
            )
        _console().print(t)

    mesh_call(ctx, meshid, as_json, "GET", "invites", human, answer=list[InviteInfo])


@app.command("revoke-invite", epilog="Example: smegctl revoke-invite --meshid MESH 3f9a1c")
def revoke_invite(
    ctx: typer.Context,
    token_id: Annotated[
        str,
        typer.Argument(
            metavar="TOKEN-ID", help="The id shown by list-invites (a unique prefix is enough)."
        ),
    ],
    meshid: OptMeshIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke an invitation so that no one else can join with it (its issuer or an admin)."""

    def human(res: InviteInfo, mid: str) -> None:
        typer.echo(f"revoked invitation {res.token_id[:12]}")

    if not token_id.strip():
        _fail("TOKEN-ID is empty: give the id list-invites shows", as_json, code=EXIT_USAGE)
    sub = f"invites/{_seg(token_id)}"
    mesh_call(ctx, meshid, as_json, "DELETE", sub, human, answer=InviteInfo)
