"""What ``smegctl get-mesh`` prints (cli/tables.py) for devices, exits and bridges."""

from __future__ import annotations

import io

from rich.console import Console

from smegmesh.cli.tables import mesh_tables
from smegmesh.core.addressing import mesh_prefix, overlay_address
from smegmesh.daemon.api_models import DeviceInfo, MeshDetail, NodeInfo, RouteInfo, SelectedRoute
from smegmesh.daemon.status import build_status

MESH = "silver-mesa-cliff-nkhtkbfuenuys"
SPONSOR = "vGD/Mgs3oW+xS1SoruiEwkAJeNBL8ez5vdJ8fw3yDxg="
PHONE = "2tvsfNfxeZHRlRG5wAesRc/s4OoyNcab55bTmGpRXC0="


def _node(n: int, **kw: object) -> NodeInfo:
    key = bytes([n]) * 32
    return NodeInfo(
        public_key=kw.pop("public_key", None) or f"{chr(65 + n) * 43}=",  # type: ignore[arg-type]
        role="peer",
        overlay_address=str(overlay_address(MESH, key)),
        **kw,  # type: ignore[arg-type]
    )


def _printed(d: MeshDetail) -> str:
    out = io.StringIO()
    con = Console(file=out, width=400, color_system=None)
    for part in mesh_tables(d):
        con.print(part)
    return out.getvalue()


def test_get_mesh_lists_the_devices_with_their_sponsors() -> None:
    """docs/DEVICES.md: "get-mesh shows it under devices with its sponsor". The table
    showed the nodes only: a mesh with devices looked like one without (the JSON had
    them)."""
    addr = str(overlay_address(MESH, b"\x09" * 32))
    d = MeshDetail(
        mesh_id=MESH,
        prefix=str(mesh_prefix(MESH)),
        self_key=SPONSOR,
        nodes=[_node(1, public_key=SPONSOR, alias="bravo", is_self=True)],
        devices=[
            DeviceInfo(
                public_key=PHONE,
                alias="phone",
                overlay_address=addr,
                sponsor=SPONSOR,
                sponsor_alias="bravo",
                added=0,
            )
        ],
    )
    text = _printed(d)
    line = next((ln for ln in text.splitlines() if "phone" in ln), "")
    assert addr in line and "bravo" in line and PHONE[:12] in line, text
    empty = _printed(d.model_copy(update={"devices": []}))
    assert "device" not in empty.lower(), empty  # no heading for none


def _exits_mesh(*, self_exit: bool = False, used: bool = False) -> MeshDetail:
    """Me, two exits (alpha, bravo), a bridge (charlie) that passes a /64 on."""
    default = [RouteInfo(destination="::/0", path=[])]
    nodes = [
        _node(0, alias="me", is_self=True, routes=default if self_exit else []),
        _node(1, alias="alpha", routes=default),
        _node(2, alias="bravo", routes=default),
        _node(
            3,
            alias="charlie",
            routes=[RouteInfo(destination="fd99:1:2:301::/64", path=["other-mesh-x"])],
        ),
    ]
    routes = []
    if used:
        routes = [
            SelectedRoute(
                destination="::/0",
                gateway=nodes[1].public_key,
                gateway_alias="alpha",
                path_length=0,
                alternatives=[nodes[2].public_key],
            )
        ]
    return MeshDetail(
        mesh_id=MESH,
        prefix=str(mesh_prefix(MESH)),
        self_key=nodes[0].public_key,
        nodes=nodes,
        routes=routes,
    )


def test_get_mesh_marks_the_exits_and_bridges() -> None:
    """An exit's ::/0 was in get-mesh's JSON only: a node that does not accept defaults
    (the default) saw nothing in the table telling it that alpha and bravo offer one."""
    lines = {ln.split()[0]: ln for ln in _printed(_exits_mesh()).splitlines()[2:] if ln.strip()}
    assert "EXIT" in lines["alpha"] and "EXIT" in lines["bravo"], lines
    assert "BRIDGE" in lines["charlie"] and "EXIT" not in lines["charlie"], lines
    assert "EXIT" not in lines["*"] and "BRIDGE" not in lines["*"], lines


def _status_text(d: MeshDetail, accept_defaults: bool | None) -> str:
    from smegmesh.cli.status import print_status  # (new: the body of `status`)

    st = build_status("0", d.self_key, [d], accept_defaults=accept_defaults)
    out = io.StringIO()
    print_status(Console(file=out, width=400, color_system=None), st)
    return out.getvalue()


def test_status_says_which_exits_are_offered_and_why_none_is_used() -> None:
    """`status` printed an `exit ::/0 via ...` line only for an exit in use: with
    acceptDefaults off nothing said alpha and bravo offer one, nor why it goes
    unused; with it on and no exit anywhere, nothing said so either."""
    st = build_status("0", "k", [_exits_mesh()], accept_defaults=False)
    assert st.accept_defaults is False
    assert [m.exits for m in st.meshes] == [[_node(1).public_key, _node(2).public_key]]
    text = _status_text(_exits_mesh(), accept_defaults=False)
    assert "exit offered by alpha, bravo: not used (acceptDefaults is off" in text, text
    used = _status_text(_exits_mesh(used=True), accept_defaults=True)
    assert "exit ::/0 via alpha, 1 alternative(s)" in used and "not used" not in used, used
    mine = _status_text(_exits_mesh(self_exit=True), accept_defaults=False)
    assert "this node is an exit of this mesh (advertiseDefaults)" in mine, mine
    bare = _exits_mesh().model_copy(update={"nodes": _exits_mesh().nodes[:1]})
    none = _status_text(bare, accept_defaults=True)
    assert "acceptDefaults is on, but no member of any mesh offers an exit" in none, none
    assert "exit" not in _status_text(bare, accept_defaults=False)
