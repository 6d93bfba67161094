"""A sponsored device with real WireGuard (issue 18): no smegd, only the printed config.

Three peers (wireguard-go in namespaces) form a mesh; the founder ``a`` (an
admin) has peer ``b`` (serving the mesh DNS on port 53) sponsor a device
(``add-device --via bravo``). A fourth namespace, the "device", is configured
ONLY from the printed wg-quick file (the API's ``config``, which ``smegctl
add-device`` prints: checked in test_devices_daemon.py; the API is called
in-process here, a smegctl process costs seconds on a loaded machine): parsed,
``wg setconf`` for the WireGuard part (as ``wg-quick strip`` would), ``ip`` for
the address and the routes of ``AllowedIPs``; it runs wireguard-go like the
test bed does and no smegd. It pings every member by overlay address, is pinged
back, resolves its own alias from the mesh DNS named in the config; the sponsor
reprints the same config (``device-config``); ``remove-device`` and ``evict``
cut it off within the propagation time.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from smegmesh.daemon.devices_ops import parse_wg_quick
from smegmesh.testbed.cluster import Cluster, Daemon, Timings
from smegmesh.testbed.netns import Node, Testbed, wait_until

pytestmark = pytest.mark.netns

TIMINGS = Timings(sync_interval=1, heartbeat_interval=2, pull_interval=3, timeout=2)
WG_KEYS = {"PrivateKey", "ListenPort", "FwMark", "PublicKey", "PresharedKey"}
WG_KEYS |= {"Endpoint", "AllowedIPs", "PersistentKeepalive"}


def _apply_device_config(dev: Node, ifname: str, text: str, private_key: str | None) -> str:
    """Bring up ``ifname`` in ``dev`` from a wg-quick file; return its address."""
    cfg = parse_wg_quick(text)
    iface, peer = cfg["Interface"], cfg["Peer"]
    if private_key is None:
        private_key = iface["PrivateKey"]
    sock = f"/var/run/wireguard/{ifname}.sock"
    if not os.path.exists(sock):
        dev.spawn(
            ["env", "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error", "wireguard-go", ifname],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: os.path.exists(sock), 20, 0.05)
    lines = ["[Interface]", f"PrivateKey = {private_key}", "[Peer]"]
    lines += [f"{k} = {v}" for k, v in peer.items() if k in WG_KEYS]
    path = os.path.join(dev.tmpdir, f"{ifname}.conf")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    dev.run(["wg", "setconf", ifname, path])
    addr = iface["Address"].split(",")[0].strip()
    dev.run(["ip", "-6", "addr", "replace", addr, "dev", ifname])
    dev.run(["ip", "link", "set", ifname, "up"])
    for net in peer["AllowedIPs"].split(","):
        dev.run(["ip", "-6", "route", "replace", net.strip(), "dev", ifname])
    return addr.split("/")[0]


def _rtt(node: Node, address: str) -> float | None:
    """Mean RTT in ms of 5 pings 0.2 s apart (None: not every ping answered)."""
    proc = node.run(
        ["ping", "-6", "-n", "-q", "-c", "5", "-i", "0.2", "-W", "2", address],
        check=False,
        timeout=20,
    )
    if proc.returncode != 0:
        return None
    line = next((x for x in proc.stdout.splitlines() if "min/avg/max" in x), "")
    return float(line.split("=")[1].split("/")[1]) if line else 0.0


def _form_mesh(c: Cluster, members: list[Daemon]) -> str:
    """The mesh over the API (in-process: a smegctl process costs seconds under load)."""
    first, *others = members
    mesh_id = str(first.api("POST", "/v1/meshes")["mesh_id"])
    body = {"ttl_s": 600, "uses": len(others)}
    token = first.api("POST", f"/v1/meshes/{mesh_id}/invites", body)["token"]
    joined = c.map(lambda d: d.api("POST", "/v1/join", {"token": token}, timeout=60), others)
    assert all(joined), joined
    return mesh_id


def test_device_from_printed_config_reaches_the_mesh(testbed: Testbed) -> None:
    t_start = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - t_start, 1)

    with Cluster(testbed, TIMINGS) as c:
        a, b, x = (c.add("peer", start=False) for _ in range(3))
        b.edit_config(dnsListen="[::]:53")
        members = [a, b, x]
        c.start(*members)
        phase("daemons ready")
        mesh_id = _form_mesh(c, members)
        keys = c.keys(mesh_id, members)
        addrs = c.addresses(mesh_id, members)
        phase("joined")
        c.wait_full_connectivity(mesh_id, members, timeout=90)
        phase("connected")
        assert b.api("PUT", f"/v1/meshes/{mesh_id}/alias", {"alias": "bravo"}) is not None
        wait_until(
            lambda: any(
                n["alias"] == "bravo" for n in a.api("GET", f"/v1/meshes/{mesh_id}")["nodes"]
            ),
            30,
            0.05,
        )
        phase("mesh up")

        # the founder (an admin) names the sponsor (add-device --via bravo on `a`; the
        # config smegctl prints is the API's `config`, see test_devices_daemon.py)
        res = a.api(
            "POST",
            f"/v1/meshes/{mesh_id}/devices",
            {"name": "phone", "via": "bravo"},
            timeout=60,
        )
        assert res is not None and res["has_private_key"]
        text = res["config"]
        print("\n--- printed config ---\n" + text + "----------------------")
        cfg = parse_wg_quick(text)
        assert cfg["Peer"]["PublicKey"] == keys[b.name]
        assert cfg["Interface"]["DNS"] == addrs[b.name]
        phase("add-device printed")
        dev = testbed.add_node()
        ifname = dev.wg_name()
        dev_addr = _apply_device_config(dev, ifname, text, None)
        phase("device configured")
        dev_key = dev.run(["wg", "show", ifname, "public-key"]).stdout.strip()

        # the device reaches every member by overlay address, and is reached back
        for m in members:
            wait_until(lambda m=m: dev.ping(addrs[m.name], 1, 1), 60, 0.05)
        phase("device reaches the mesh")
        rtts = dict(
            zip(
                [m.name for m in members],
                c.map(lambda m: _rtt(dev, addrs[m.name]), members),
                strict=True,
            )
        )
        back = dict(
            zip(
                [m.name for m in members],
                c.map(lambda m: _rtt(m.node, dev_addr), members),
                strict=True,
            )
        )
        print(f"device -> members RTT ms: {rtts}")
        print(f"members -> device RTT ms: {back}")
        assert all(v is not None for v in (*rtts.values(), *back.values())), (rtts, back)
        # every other member routes it through the sponsor, which has it as a peer
        assert dev_key in (b.wg_peer_keys(mesh_id) or set())
        assert dev_key not in (a.wg_peer_keys(mesh_id) or set())

        # DNS for its alias, from the DNS server its config names
        dig = dev.run(
            [
                "dig",
                "+short",
                "+time=2",
                "+tries=3",
                f"@{cfg['Interface']['DNS']}",
                "AAAA",
                f"phone.{mesh_id}.smeg.",
            ],
            check=False,
        )
        print(f"dig phone.{mesh_id}.smeg. AAAA -> {dig.stdout.strip()}")
        assert dig.stdout.strip() == dev_addr
        # the config reprinted by the sponsor: the same settings, without the private key
        again = b.api("GET", f"/v1/meshes/{mesh_id}/devices/phone/config")
        assert again is not None and not again["has_private_key"]
        assert parse_wg_quick(again["config"])["Peer"] == cfg["Peer"]
        phase("pings, DNS")

        # remove-device (on the sponsor) cuts it off
        t0 = time.monotonic()
        assert b.api("DELETE", f"/v1/meshes/{mesh_id}/devices/phone") is not None
        t1 = time.monotonic()
        wait_until(lambda: not dev.ping(addrs[a.name], 1, 1), 30, 0.05)
        cut = time.monotonic() - t0
        print(
            f"remove-device -> ping a fails after {cut:.2f} s "
            f"({time.monotonic() - t1:.2f} s after the call returned)"
        )
        wait_until(lambda: not a.ping(dev_addr, 1, 1), 30, 0.05)
        phase("removed")

        # re-added by the sponsor with its own public key (the device kept its private
        # key), the device re-imports its config; then an admin evicts it
        again = b.api(
            "POST",
            f"/v1/meshes/{mesh_id}/devices",
            {"name": "phone", "public_key": dev_key},
        )
        assert again is not None and "\nPrivateKey = " not in again["config"]
        _apply_device_config(dev, ifname, again["config"], cfg["Interface"]["PrivateKey"])
        wait_until(lambda: dev.ping(addrs[x.name], 1, 1), 60, 0.05)
        phase("re-added")
        t0 = time.monotonic()
        assert a.api("POST", f"/v1/meshes/{mesh_id}/evict", {"node": "phone"}) is not None
        t1 = time.monotonic()
        wait_until(lambda: not dev.ping(addrs[x.name], 1, 1), 30, 0.05)
        print(
            f"evict -> ping x fails after {time.monotonic() - t0:.2f} s "
            f"({time.monotonic() - t1:.2f} s after the call returned)"
        )
        wait_until(lambda: not x.ping(dev_addr, 1, 1), 30, 0.05)
        assert a.ping(addrs[x.name], count=2, timeout=2)  # the mesh itself is fine
        phase("evicted")
        print(f"phases (s since start): {phases}")
