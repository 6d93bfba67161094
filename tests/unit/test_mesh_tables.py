"""What ``smegctl get-mesh`` prints (cli/tables.py) for devices, exits and bridges."""

from __future__ import annotations

import io

from rich.console import Console

from smegmesh.cli.tables import mesh_tables
from smegmesh.core.addressing import mesh_prefix, overlay_address
from smegmesh.daemon.api_models import DeviceInfo, MeshDetail, NodeInfo

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
