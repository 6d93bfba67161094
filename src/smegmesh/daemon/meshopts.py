"""Per-mesh options, defined once.

One table, :data:`MESH_OPTIONS`, from which are built:

* the per-mesh keys of the config file (``baseConfiguration``,
  :class:`~smegmesh.daemon.config.schema.BaseConfiguration`, and so
  ``docs/CONFIG.md``);
* the API request model of ``new-mesh``/``join-mesh``
  (:class:`~smegmesh.daemon.config.mesh.MeshOptions`);
* the concrete settings of a mesh, the flags merged over the base
  (:class:`~smegmesh.daemon.config.mesh.ResolvedMesh`,
  :func:`~smegmesh.daemon.config.mesh.resolve_mesh_settings`);
* the ``smegctl new-mesh``/``join-mesh`` flags (:mod:`smegmesh.cli.meshflags`).

Adding a per-mesh option is one :class:`MeshOpt` entry here, plus the code
that uses ``ResolvedMesh.<resolved>``. Pure data: no I/O, no CLI library.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from smegmesh.core.desired import DEFAULT_CLIENT_KEEPALIVE

__all__ = [
    "DEFAULT_CLIENT_KEEPALIVE",
    "MESH_OPTIONS",
    "InvitePolicy",
    "IpDiscovery",
    "MeshOpt",
    "Role",
    "flags_of",
]

Role = Literal["peer", "client"]
IpDiscovery = Literal["outgoing", "public"]
InvitePolicy = Literal["admins", "peers", "members"]

#: The commands taking a flag by default.
BOTH = ("new-mesh", "join-mesh")


@dataclass(frozen=True)
class MeshOpt:
    """One per-mesh option: its API/CLI side, its config key, how it is resolved.

    ``name`` is the attribute of the API request model (its JSON key) and the
    CLI parameter; ``api`` the ``Field`` arguments of the API model, None when
    the option is not a flag (config only). ``flag``/``flag_help``/``flag_kw``
    make the ``typer.Option`` of ``commands``. ``base_key`` is the
    ``baseConfiguration`` key (``base_attr`` its attribute, ``base_type`` its
    type, ``base`` its ``Field`` arguments), None when the option is a flag
    only. ``resolved`` names the attribute of the resolved settings (None: not
    part of them); its value is the flag if given, else the base key, passed
    through ``finish(value, resolved_so_far)`` when set.
    """

    name: str
    type: Any
    api: Mapping[str, Any] | None = None
    flag: str | None = None
    flag_help: str = ""
    flag_kw: Mapping[str, Any] = field(default_factory=dict)
    commands: tuple[str, ...] = BOTH
    base_key: str | None = None
    base_attr: str | None = None
    base_type: Any = None
    base: Mapping[str, Any] = field(default_factory=dict)
    resolved: str | None = None
    finish: Callable[[Any, Mapping[str, Any]], Any] | None = None


def _keepalive(value: int | None, resolved: Mapping[str, Any]) -> int:
    """Unset: :data:`DEFAULT_CLIENT_KEEPALIVE` for a client, off for a peer; 0 = off."""
    if value is not None:
        return value
    return DEFAULT_CLIENT_KEEPALIVE if resolved["role"] == "client" else 0


def _hook(attr: str, key: str, description: str) -> MeshOpt:
    return MeshOpt(
        name=attr,
        type=list[str],
        base_key=key,
        base_attr=attr,
        base_type=list[str],
        base={"default_factory": list, "description": description},
        resolved=attr,
        finish=lambda v, _r: list(v),
    )


MESH_OPTIONS: tuple[MeshOpt, ...] = (
    MeshOpt(
        name="wgport",
        type=int,
        api={"ge": 1, "le": 65535, "description": "WireGuard listen port (unset: first free one)."},
        flag="--wgport",
        flag_help="WireGuard listen port (default: a free one).",
        flag_kw={"min": 1, "max": 65535},
        resolved="wg_port",
    ),
    MeshOpt(
        name="ip_discovery",
        type=IpDiscovery,
        base_key="ipDiscovery",
        base_attr="ip_discovery",
        base_type=IpDiscovery,
        base={
            "default": "outgoing",
            "description": "How the node finds the IP address it advertises as its endpoint: "
            "'outgoing' = source address of the default route (without one: the first "
            "global, non-ULA address, with a warning); 'public' = on join-mesh, ask the "
            "member named in the invitation which address our calls come from (no "
            "third-party service; the address only: the advertised port stays the local "
            "WireGuard port, so a NAT must forward it unchanged; new-mesh has nobody to "
            "ask and uses 'outgoing'). Ignored when publicEndpoint is set.",
        },
        resolved="ip_discovery",
    ),
    MeshOpt(
        name="endpoint",
        type=str,
        api={"min_length": 1, "description": "Host other nodes use to reach this node."},
        flag="--endpoint",
        flag_help="Host (or host:port) other nodes reach this node at "
        "(default: publicEndpoint / ipDiscovery of the config).",
        base_key="publicEndpoint",
        base_attr="public_endpoint",
        base_type=str | None,
        base={
            "default": None,
            "description": "Host (or host:port) other nodes use to reach this node, instead "
            "of discovering it. Peers only.",
        },
        resolved="endpoint",
    ),
    MeshOpt(
        name="role",
        type=Role,
        api={},
        flag="--role",
        flag_help="peer (reachable, forwards for clients) or client (behind NAT). "
        "Default: baseConfiguration.role.",
        flag_kw={"case_sensitive": False},
        base_key="role",
        base_attr="role",
        base_type=Role,
        base={
            "default": "peer",
            "description": "'peer' (reachable endpoint, forwards for its clients) or 'client' "
            "(behind NAT, talks to one assigned peer).",
        },
        resolved="role",
    ),
    MeshOpt(
        name="keepalive",
        type=int,
        api={"ge": 0, "le": 65535, "description": "Persistent keepalive in seconds, 0 = off."},
        flag="--keepalive",
        flag_help="WireGuard persistent keepalive, seconds; 0 = off.",
        flag_kw={"min": 0, "max": 65535},
        base_key="keepAliveWg",
        base_attr="keep_alive_wg",
        base_type=int | None,
        base={
            "default": None,
            "ge": 0,
            "le": 65535,
            "description": "WireGuard persistent keepalive in seconds, 0 = off. Unset: "
            f"{DEFAULT_CLIENT_KEEPALIVE} for clients, off for peers.",
        },
        resolved="keepalive",
        finish=_keepalive,
    ),
    MeshOpt(
        name="advertise_routes",
        type=bool,
        api={},
        flag="--advertise-routes/--no-advertise-routes",
        flag_help="Bridge: advertise this node's other meshes into this one "
        "(default: baseConfiguration.advertiseRoute).",
        flag_kw={"show_default": False},
        base_key="advertiseRoute",
        base_attr="advertise_route",
        base_type=bool,
        base={
            "default": False,
            "description": "Advertise each of this node's meshes (and learned routes) into its "
            "other meshes, bridging them.",
        },
        resolved="advertise_routes",
    ),
    MeshOpt(
        name="advertise_defaults",
        type=bool,
        api={},
        flag="--advertise-defaults/--no-advertise-defaults",
        flag_help="Offer a default route (::/0) to this mesh "
        "(default: baseConfiguration.advertiseDefaults).",
        flag_kw={"show_default": False},
        base_key="advertiseDefaults",
        base_attr="advertise_defaults",
        base_type=bool,
        base={
            "default": False,
            "description": "Offer a default route (::/0) to the meshes of this node (as a peer): "
            "only then does this node forward what arrives from a mesh out of the overlay "
            "(the forwarding guard, docs/ROUTING.md; needs nft).",
        },
        resolved="advertise_defaults",
    ),
    MeshOpt(
        name="invite_policy",
        type=InvitePolicy,
        api={
            "description": "new-mesh only: who may admit new nodes (admins, peers, members; "
            "default peers)."
        },
        flag="--invite-policy",
        flag_help="Who may admit new nodes: admins, peers or members (default: peers; "
        "clients cannot invite). This node is the mesh's first admin.",
        flag_kw={"show_default": False},
        commands=("new-mesh",),
    ),
    _hook(
        "pre_up",
        "preUp",
        "Shell commands run before smegd creates a mesh's interface ($IFNAME / %i is the "
        "interface name): once per creation, however often a failing apply is retried; "
        "not when smegd (re)starts and finds the interface up.",
    ),
    _hook(
        "post_up",
        "postUp",
        "Shell commands run after the interface smegd created is up and configured (once); "
        "again when the health check (every 5 s) finds the interface lost (wireguard-go died, "
        "`ip link del`) and creates and configures it again, since what postUp set up on it "
        "went with it (preUp is not run then: the interface exists again before smegd hears "
        "of the loss).",
    ),
    _hook(
        "pre_down",
        "preDown",
        "Shell commands run before a mesh interface is removed (leave-mesh). Stopping "
        "smegd keeps the interfaces up and runs no down hooks.",
    ),
    _hook(
        "post_down",
        "postDown",
        "Shell commands run after a mesh interface is removed (leave-mesh). A failing hook "
        "of any kind is logged and does not stop the daemon; a command a hook puts in "
        "the background (cmd &) is not waited for.",
    ),
)


def flags_of(command: str, table: tuple[MeshOpt, ...] = MESH_OPTIONS) -> tuple[MeshOpt, ...]:
    """The options ``command`` (``new-mesh`` or ``join-mesh``) takes as flags, in order."""
    return tuple(o for o in table if o.flag is not None and command in o.commands)
