"""A sponsored device's ``wg-quick`` configuration: rendering, parsing, routes (issue 18).

Pure helpers of :mod:`smegmesh.daemon.devices_ops`: the file a device imports
(one ``[Peer]``: its sponsor), the destinations a sponsor routes for its devices,
and the device key (given, or generated here).
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from smegmesh.core.addressing import mesh_prefix
from smegmesh.core.device_messages import MAX_DEVICE_ROUTES
from smegmesh.core.identity import InvalidKey, key_from_text
from smegmesh.daemon import service as svc

#: PersistentKeepalive of a device config (it is behind NAT more often than not)
DEVICE_KEEPALIVE = 25

#: default routes, never put in a device's AllowedIPs by the sponsor (opt-in)
DEFAULT_ROUTES = ("::/0", "0.0.0.0/0")


def render_wg_quick(
    *,
    private_key: str | None,
    address: str,
    prefix: str,
    dns: str | None,
    sponsor_key: str,
    endpoint: str,
    allowed_ips: list[str],
    comment: str,
) -> str:
    """A standard ``wg-quick`` file (``[Interface]`` + one ``[Peer]``).

    Raises ``ValueError`` if a value would not stay on its own line: wg-quick
    runs ``PreUp``/``PostUp`` lines as root, and the endpoint, DNS server and
    routes come from the sponsor (checked on the wire; this is the last line).
    """
    values = [private_key or "", address, prefix, dns or "", sponsor_key, endpoint, comment]
    if not all(v.isprintable() for v in [*values, *allowed_ips]):
        raise ValueError("a device config value is not one printable line")
    lines = [f"# {comment}", "[Interface]"]
    lines.append(
        f"PrivateKey = {private_key}"
        if private_key
        else "# PrivateKey = <the device's private key (you kept it)>"
    )
    lines.append(f"Address = {address}/128")
    if dns:
        lines.append(f"DNS = {dns}")
    lines += [
        "",
        "[Peer]",
        f"PublicKey = {sponsor_key}",
        f"Endpoint = {endpoint}",
        f"AllowedIPs = {', '.join([prefix, *allowed_ips])}",
        f"PersistentKeepalive = {DEVICE_KEEPALIVE}",
        "",
    ]
    return "\n".join(lines)


def device_routes(mesh_id: str, routing: Any) -> list[str]:
    """The destinations a sponsor routes for its devices, besides the mesh prefix.

    What the sponsor itself routes now: the routes it installed through other
    gateways of the mesh (``gateway_routes``) and those it advertises into the
    mesh itself (it is the bridge). A device's ``AllowedIPs`` is the mesh prefix
    plus these, so the sponsor forwards whatever the device sends. Default routes
    (an exit's ``::/0``) are left out, as a node leaves them out unless it sets
    ``acceptDefaults``: the device's owner adds ``::/0`` to opt in.
    """
    if routing is None:
        return []
    gw = {r.destination for r in routing.gateway_routes.get(mesh_id, ())}
    own = {a.prefix for a in routing.adverts.get(mesh_id, ())}
    skip = {str(mesh_prefix(mesh_id)), *DEFAULT_ROUTES}
    return sorted((gw | own) - skip)[:MAX_DEVICE_ROUTES]


def _low_order(public: bytes) -> bool:
    """Whether Diffie-Hellman with ``public`` gives all zeros (WireGuard refuses it)."""
    try:
        shared = X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # cryptography refuses an all-zero result
        return True
    return not any(shared)


def device_key(public_key: str | None, keep_key: bool) -> tuple[bytes, str | None]:
    """(device public key, generated private key in base64 or None)."""
    if public_key is not None:
        try:
            dkey = key_from_text(public_key.strip())
        except InvalidKey as e:
            raise svc.invalid_argument(f"public_key: {e}") from None
        if _low_order(dkey):
            raise svc.invalid_argument(
                "public_key: not a usable WireGuard key (a point of small order: "
                "no handshake with it can succeed); give the key `wg pubkey` prints"
            )
        if keep_key:
            raise svc.invalid_argument("keep_key: there is no private key to keep")
        return dkey, None
    sk = X25519PrivateKey.generate()
    raw = sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return sk.public_key().public_bytes_raw(), base64.b64encode(raw).decode("ascii")


def parse_wg_quick(text: str) -> dict[str, dict[str, str]]:
    """The ``[Interface]`` and ``[Peer]`` settings of a one-peer ``wg-quick`` file."""
    out: dict[str, dict[str, str]] = {}
    section: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep or section is None:
            raise ValueError(f"not a wg-quick line: {raw!r}")
        section[key.strip()] = value.strip()
    return out


def parse_ip(text: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def same_ip(a: str, b: str) -> bool:
    ia, ib = parse_ip(a), parse_ip(b)
    return ia is not None and ia == ib
