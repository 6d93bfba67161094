"""A sponsored device with real WireGuard (issue 18): no smegd, only the printed config.

Three peers (wireguard-go in namespaces) form a mesh; peer ``b`` (serving the
mesh DNS on port 53) sponsors a device with ``smegctl add-device``. A fourth
namespace, the "device", is configured ONLY from the printed wg-quick file:
parsed, ``wg setconf`` for the WireGuard part (as ``wg-quick strip`` would),
``ip`` for the address and the routes of ``AllowedIPs``; it runs wireguard-go
like the test bed does and no smegd. It pings every member by overlay address,
is pinged back, resolves its own alias from the mesh DNS named in the config;
``remove-device`` and ``evict`` cut it off within the propagation time.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from smegmesh.daemon.devices_ops import parse_wg_quick
from smegmesh.testbed.cluster import Cluster, Timings, ping_rtt
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


def test_device_from_printed_config_reaches_the_mesh(testbed: Testbed) -> None:
    with Cluster(testbed, TIMINGS) as c:
        a = c.add("peer")
        b = c.add("peer", start=False)
        b.edit_config(dnsListen="[::]:53")
        b.start()
        x = c.add("peer")
        mesh_id, _ = c.form_mesh([a, b, x])
        members = [a, b, x]
        keys = c.keys(mesh_id, members)
        addrs = c.addresses(mesh_id, members)
        c.wait_full_connectivity(mesh_id, members, timeout=90)
        b.ctl("put-alias", "--meshid", mesh_id, "--alias", "bravo", json_out=False)

        text = b.ctl("add-device", "--meshid", mesh_id, "--name", "phone", json_out=False)
        print("\n--- printed config ---\n" + text + "----------------------")
        cfg = parse_wg_quick(text)
        assert cfg["Peer"]["PublicKey"] == keys[b.name]
        assert cfg["Interface"]["DNS"] == addrs[b.name]
        dev = testbed.add_node()
        ifname = dev.wg_name()
        dev_addr = _apply_device_config(dev, ifname, text, None)
        dev_key = dev.run(["wg", "show", ifname, "public-key"]).stdout.strip()

        # the device reaches every member by overlay address, and is reached back
        for m in members:
            wait_until(lambda m=m: dev.ping(addrs[m.name], 1, 1), 60, 0.2)
        rtts = {m.name: ping_rtt(dev, addrs[m.name], count=5, timeout=2) for m in members}
        back = {m.name: ping_rtt(m.node, dev_addr, count=5, timeout=2) for m in members}
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

        # remove-device cuts it off
        t0 = time.monotonic()
        b.ctl("remove-device", "--meshid", mesh_id, "phone", json_out=False)
        t1 = time.monotonic()
        wait_until(lambda: not dev.ping(addrs[a.name], 1, 1), 30, 0.05)
        cut = time.monotonic() - t0
        print(
            f"remove-device -> ping a fails after {cut:.2f} s "
            f"({time.monotonic() - t1:.2f} s after smegctl returned)"
        )
        wait_until(lambda: not a.ping(dev_addr, 1, 1), 30, 0.05)

        # re-added with its own public key (the device kept its private key), then evicted
        again = b.ctl(
            "add-device",
            "--meshid",
            mesh_id,
            "--name",
            "phone",
            "--public-key",
            dev_key,
            json_out=False,
        )
        assert "\nPrivateKey = " not in again
        wait_until(lambda: dev.ping(addrs[x.name], 1, 1), 60, 0.2)
        t0 = time.monotonic()
        a.ctl("evict", "--meshid", mesh_id, "phone", json_out=False)
        t1 = time.monotonic()
        wait_until(lambda: not dev.ping(addrs[x.name], 1, 1), 30, 0.05)
        print(
            f"evict -> ping x fails after {time.monotonic() - t0:.2f} s "
            f"({time.monotonic() - t1:.2f} s after smegctl returned)"
        )
        wait_until(lambda: not x.ping(dev_addr, 1, 1), 30, 0.05)
        assert a.ping(addrs[x.name], count=2, timeout=2)  # the mesh itself is fine
