"""smegctl commands of sponsored devices: add-device, list-devices, remove-device,
device-config (issue 18)."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from smegmesh.cli.app import JsonOpt, OptMeshIdOpt, _client, _meshid, _run, _seg, app, mesh_call
from smegmesh.cli.client import ClientError
from smegmesh.cli.output import _console, _print_json
from smegmesh.cli.tables import devices_table
from smegmesh.daemon.api_models import DeviceInfo

#: Options and argument shared by the device commands.
QrOpt = Annotated[
    bool, typer.Option("--qr", help="Print the config as a QR code (for phone apps).")
]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write the config to FILE (mode 0600)."),
]
DeviceArg = Annotated[
    str,
    typer.Argument(
        metavar="NAME|KEY",
        help="The device's name, public key, overlay address, or a unique prefix of one.",
    ),
]


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the start (it holds a private key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def check_writable(path: Path) -> None:
    """``ClientError`` now if ``path`` cannot be written, before the daemon does anything."""
    where = path if path.exists() else path.parent
    if path.is_dir():
        raise ClientError(f"--output {path}: is a directory")
    if not where.is_dir():
        raise ClientError(f"--output {path}: no directory {where}")
    if not os.access(where, os.W_OK):
        raise ClientError(f"--output {path}: not writable")


def save_config(path: Path, text: str, *, added: bool) -> None:
    """Write the config to ``path``; if that fails, print it rather than lose its key."""
    try:
        write_private_file(path, text)
    except OSError as e:
        if added:  # the device is sponsored now: its generated key is in ``text`` alone
            typer.echo(text, nl=False)
        done = "the device is added; its config is printed above" if added else "nothing written"
        raise ClientError(f"--output {path}: {e.strerror or e}; {done}") from None


def qr_text(text: str) -> str:
    """``text`` as a QR code for a terminal (segno, compact half blocks)."""
    import segno

    out = io.StringIO()
    segno.make(text, error="l", micro=False).terminal(out=out, compact=True)
    return out.getvalue()


def _show_added(res: dict[str, Any], mid: str, output: Path | None, qr: bool) -> None:
    """``add-device`` for people: the config (or where it went), then one line on stderr."""
    cfg = res["config"]
    dev = res["device"]
    if output is not None:
        typer.echo(f"wrote {output} (mode 0600)")
    elif not qr:
        typer.echo(cfg, nl=False)
    if qr:
        sys.stdout.write(qr_text(cfg))
    sys.stderr.write(
        f"device {dev['alias']} ({dev['overlay_address']}) added to {mid}"
        + (
            "; its private key is not kept: save this config now\n"
            if res["has_private_key"] and not dev.get("key_kept")
            else "\n"
        )
    )


@app.command(
    "add-device",
    epilog="Examples: smegctl add-device --meshid MESH --name phone --qr;  "
    "smegctl add-device --meshid MESH --name router --public-key KEY --output router.conf",
)
def add_device(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Option("--name", help="The device's alias (a DNS label).", show_default=False),
    ],
    meshid: OptMeshIdOpt = None,
    via: Annotated[
        str | None,
        typer.Option(
            "--via",
            help="The sponsoring peer (NODE: alias, key, address or a prefix). Default: "
            "this node. Naming another peer needs an admin of the mesh: that peer is "
            "asked to sponsor the device; the private key stays here.",
            show_default=False,
        ),
    ] = None,
    public_key: Annotated[
        str | None,
        typer.Option(
            "--public-key",
            help="The device's WireGuard public key (it keeps its private key); "
            "default: generate a key pair.",
            show_default=False,
        ),
    ] = None,
    keep_key: Annotated[
        bool,
        typer.Option(
            "--keep-key",
            help="Keep the generated private key in the daemon's state directory (0600).",
        ),
    ] = False,
    qr: QrOpt = False,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Sponsor a device without smegd (a phone, a router) and print its WireGuard config.

    This peer lists the device in its own signed record: every member reaches
    it through this peer, by its overlay address and by NAME.MESH.smeg. in DNS.
    The device is admitted like any node (the mesh's invite policy applies) and
    can be evicted. It has one configured peer, this one: no failover. The
    generated private key is shown once and not kept, unless --keep-key.
    """

    def go() -> None:
        mid = _meshid(ctx, meshid)
        if output is not None:
            check_writable(output)
        res = _client(ctx).json(
            "POST",
            f"/v1/meshes/{_seg(mid)}/devices",
            json_body={
                "name": name,
                "public_key": public_key,
                "keep_key": keep_key,
                "via": via,
            },
        )
        if output is not None:
            save_config(output, res["config"], added=True)
        if as_json:
            _print_json(res)
            return
        _show_added(res, mid, output, qr)

    _run(as_json, go)


@app.command(
    "device-config",
    epilog="Examples: smegctl device-config --meshid MESH phone;  "
    "smegctl device-config --meshid MESH router --output router.conf",
)
def device_config(
    ctx: typer.Context,
    device: DeviceArg,
    meshid: OptMeshIdOpt = None,
    qr: QrOpt = False,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a device's current WireGuard config (after the mesh's routes changed).

    AllowedIPs, DNS and the endpoint are the sponsor's current ones. The
    private key is included only when this node kept it (add-device
    --keep-key); otherwise the device keeps its own PrivateKey line.
    """

    def go() -> None:
        mid = _meshid(ctx, meshid)
        res = _client(ctx).json("GET", f"/v1/meshes/{_seg(mid)}/devices/{_seg(device)}/config")
        cfg = res["config"]
        if output is not None:
            save_config(output, cfg, added=False)
        if as_json:
            _print_json(res)
            return
        if output is not None:
            typer.echo(f"wrote {output} (mode 0600)")
        elif not qr:
            typer.echo(cfg, nl=False)
        if qr:
            sys.stdout.write(qr_text(cfg))
        if not res["has_private_key"]:
            sys.stderr.write(
                "the private key is not kept here: keep the device's own PrivateKey line\n"
            )

    _run(as_json, go)


@app.command("list-devices", epilog="Example: smegctl list-devices --meshid MESH")
def list_devices(ctx: typer.Context, meshid: OptMeshIdOpt = None, as_json: JsonOpt = False) -> None:
    """List a mesh's sponsored devices: name, address, sponsoring peer."""

    def human(res: list[DeviceInfo], mid: str) -> None:
        if not res:
            typer.echo(f"no devices in {mid}")
            return
        t = devices_table(res)
        _console().print(t)

    mesh_call(ctx, meshid, as_json, "GET", "devices", human, answer=list[DeviceInfo])


@app.command("remove-device", epilog="Example: smegctl remove-device --meshid MESH phone")
def remove_device(
    ctx: typer.Context,
    device: DeviceArg,
    meshid: OptMeshIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop sponsoring a device (run on its sponsor): it disappears from the mesh."""

    def human(res: DeviceInfo, mid: str) -> None:
        typer.echo(f"removed device {res.alias or res.public_key[:12]} from {mid}")

    sub = f"devices/{_seg(device)}"
    mesh_call(ctx, meshid, as_json, "DELETE", sub, human, answer=DeviceInfo)
