"""Network-namespace test bed: nodes on a bridge, optional NAT, guaranteed teardown.

Topology for ``Testbed(prefix)`` (every name starts with ``prefix``, so runs
do not collide and a crashed run can be removed with :func:`cleanup_stale`)::

    PREFIXbr (bridges)  br0 -- veth -- PREFIXn<i>:eth0  2001:db8:<bed>::<i>/64
                        br1 -- veth -- PREFIXn<j>:eth0  2001:db8:<bed>:1::<j>/64  (NAT clients)
    PREFIXrt (router)   eth0 on br0 2001:db8:<bed>::fe, eth1 on br1 2001:db8:<bed>:1::1,
                        nftables masquerade of 2001:db8:<bed>:1::/64 leaving eth0

The bridges live in their own namespace; nothing is created in the caller's
namespace. Addresses are documentation prefixes only; ``bed`` is a 16-bit
number derived from the prefix. Processes started with :meth:`Node.spawn` are
tracked by PID; on teardown every process still inside one of our
namespaces is killed (``ip netns pids``), then the namespaces are deleted.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# the one wait of the test bed, re-exported for the tests that import it from here
from smegmesh.testbed.wait import wait_until as wait_until


class TestbedError(Exception):
    """Setting up the test bed failed."""


def unique_prefix(base: str = "smt") -> str:
    """A short random name prefix, e.g. ``smt3fa9``."""
    return f"{base}{secrets.token_hex(2)}"


def _sh(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise TestbedError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc


#: The kernel's IPv6 neighbour table is one table for every network namespace
#: of the host, and it refuses new entries beyond ``gc_thresh3`` (1,024 by
#: default): 30 nodes on one bridge, each resolving the others, fill it, and
#: then a node cannot resolve the address it calls and sends nothing ("neighbor
#: table overflow!" in the kernel log; a join timed out connecting to the
#: inviter). A real host holds its own neighbours only.
NEIGH_LIMIT = "/proc/sys/net/ipv6/neigh/default/gc_thresh{}"
#: Limits the test bed needs, for its 250 nodes on one bridge (250 x 250 entries).
NEIGH_ROOM = ((3, 65_536), (2, 32_768))  # thresh3 first: thresh2 must not exceed it


def ensure_neighbour_room(
    limit: str = NEIGH_LIMIT, room: Sequence[tuple[int, int]] = NEIGH_ROOM
) -> list[str]:
    """Raise the host's IPv6 neighbour-table limits to at least ``room``, never lower.

    Returns a line for each limit raised, or for one that could not be read or
    written (a test bed then works up to about 30 nodes).
    """
    said: list[str] = []
    for n, want in room:
        path = limit.format(n)
        try:
            with open(path) as f:
                have = int(f.read().split()[0])
            if have >= want:
                continue
            with open(path, "w") as f:
                f.write(str(want))
        except (OSError, ValueError, IndexError) as e:
            said.append(f"cannot raise {path} to {want}: {e}")
            continue
        said.append(f"raised {path} from {have} to {want}")
    return said


def list_netns() -> list[str]:
    out = _sh(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    out = _sh(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_pids(pids: Sequence[int], timeout: float = 2.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.02)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def delete_netns(ns: str) -> None:
    """Kill every process in ``ns`` and delete it."""
    _kill_pids(netns_pids(ns))
    _sh(["ip", "netns", "del", ns], check=False)


def cleanup_stale(prefix: str) -> list[str]:
    """Remove every namespace (and temp dir) whose name starts with ``prefix``."""
    if len(prefix) < 3:
        raise ValueError("refusing a prefix shorter than 3 characters")
    removed = [ns for ns in list_netns() if ns.startswith(prefix)]
    for ns in removed:
        delete_netns(ns)
    for entry in os.listdir("/tmp"):
        if entry.startswith(f"{prefix}") and entry.endswith(".tb"):
            shutil.rmtree(os.path.join("/tmp", entry), ignore_errors=True)
    return removed


@dataclass
class Node:
    """One machine: a network namespace with an underlay address."""

    bed: Testbed
    index: int
    ns: str
    address: str  # underlay IPv6 address without prefix length
    nat: bool = False
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def tmpdir(self) -> str:
        path = os.path.join(self.bed.tmpdir, self.ns)
        os.makedirs(path, exist_ok=True)
        return path

    def wg_name(self, n: int = 0) -> str:
        """A WireGuard interface name unique across the machine (≤ 15 chars)."""
        return f"{self.bed.prefix}w{self.index}{'' if n == 0 else chr(ord('a') + n)}"

    def run(
        self, argv: Sequence[str], check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise TestbedError(
                f"[{self.ns}] {' '.join(argv)} -> {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc

    def spawn(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a process in the namespace; it is killed on teardown."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *argv], **kw
        )
        self.procs.append(proc)
        return proc

    def ping(self, address: str, count: int = 1, timeout: int = 1) -> bool:
        return (
            self.run(
                ["ping", "-6", "-n", "-q", "-c", str(count), "-W", str(timeout), address],
                check=False,
                timeout=count * timeout + 5,
            ).returncode
            == 0
        )


class Testbed:
    """Context manager building nodes as namespaces on a bridge; see module docstring."""

    __test__ = False  # not a pytest test class

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or unique_prefix()
        if len(self.prefix) > 8:
            raise ValueError("prefix must be at most 8 characters (interface names ≤ 15)")
        self.bed = int.from_bytes(hashlib.sha256(self.prefix.encode()).digest()[:2], "big") or 1
        self.nodes: list[Node] = []
        self.bridge_ns = f"{self.prefix}br"
        self.router_ns = f"{self.prefix}rt"
        self.tmpdir = f"/tmp/{self.prefix}.tb"
        self._namespaces: list[str] = []
        self._router = False
        self._closed = False

    # ----------------------------------------------------------- addressing

    @property
    def public_net(self) -> str:
        return f"2001:db8:{self.bed:x}::/64"

    @property
    def private_net(self) -> str:
        return f"2001:db8:{self.bed:x}:1::/64"

    # ---------------------------------------------------------------- setup

    def __enter__(self) -> Testbed:
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def _add_ns(self, ns: str) -> None:
        _sh(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        _sh(["ip", "-n", ns, "link", "set", "lo", "up"])

    def setup(self) -> None:
        os.makedirs(self.tmpdir, mode=0o700, exist_ok=True)
        atexit.register(self.teardown)
        for line in ensure_neighbour_room():
            sys.stderr.write(f"testbed: {line}\n")
        self._add_ns(self.bridge_ns)
        for br in ("br0", "br1"):
            _sh(["ip", "-n", self.bridge_ns, "link", "add", br, "type", "bridge"])
            _sh(["ip", "-n", self.bridge_ns, "link", "set", br, "up"])

    def _plug(self, ns: str, port: str, bridge: str, ifname: str = "eth0") -> None:
        _sh(
            [
                "ip", "-n", self.bridge_ns, "link", "add", port, "type", "veth",
                "peer", "name", ifname, "netns", ns,
            ]
        )  # fmt: skip
        _sh(["ip", "-n", self.bridge_ns, "link", "set", port, "master", bridge, "up"])
        _sh(["ip", "-n", ns, "link", "set", ifname, "up"])

    def _addr(self, ns: str, addr: str, dev: str = "eth0") -> None:
        _sh(["ip", "-n", ns, "-6", "addr", "add", addr, "dev", dev, "nodad"])

    def _ensure_router(self) -> None:
        if self._router:
            return
        rt = self.router_ns
        self._add_ns(rt)
        self._plug(rt, "rt0", "br0", "eth0")
        self._plug(rt, "rt1", "br1", "eth1")
        self._addr(rt, f"2001:db8:{self.bed:x}::fe/64", "eth0")
        self._addr(rt, f"2001:db8:{self.bed:x}:1::1/64", "eth1")
        _sh(["ip", "netns", "exec", rt, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])
        ruleset = (
            "table ip6 smtnat {\n"
            " chain post {\n"
            "  type nat hook postrouting priority srcnat; policy accept;\n"
            f'  oifname "eth0" ip6 saddr {self.private_net} masquerade\n'
            " }\n"
            "}\n"
        )
        proc = subprocess.run(
            ["ip", "netns", "exec", rt, "nft", "-f", "-"],
            input=ruleset,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if proc.returncode != 0:
            raise TestbedError(f"nft in {rt}: {proc.stderr.strip()}")
        self._router = True

    def add_node(self, nat: bool = False) -> Node:
        """A new node; ``nat=True`` puts it behind the NAT66 router (a "client")."""
        i = len(self.nodes) + 1
        if i > 250:
            raise TestbedError("at most 250 nodes per test bed")
        ns = f"{self.prefix}n{i}"
        self._add_ns(ns)
        if nat:
            self._ensure_router()
            self._plug(ns, f"v{i}", "br1")
            addr = f"2001:db8:{self.bed:x}:1::{i:x}"
            self._addr(ns, f"{addr}/64")
            _sh(
                ["ip", "-n", ns, "-6", "route", "add", "default", "via",
                 f"2001:db8:{self.bed:x}:1::1", "dev", "eth0"]
            )  # fmt: skip
        else:
            self._plug(ns, f"v{i}", "br0")
            addr = f"2001:db8:{self.bed:x}::{i:x}"
            self._addr(ns, f"{addr}/64")
        node = Node(self, i, ns, addr, nat)
        self.nodes.append(node)
        return node

    def add_nodes(self, n: int, nat: bool = False) -> list[Node]:
        return [self.add_node(nat) for _ in range(n)]

    def add_node_behind_own_nat(
        self, random_ports: bool = False, ipv4: bool = False, behind: int | None = None
    ) -> Node:
        """A node behind a NAT66 router of its own (NAT traversal tests, docs/NAT.md).

        Router ``k`` has ``2001:db8:BED::fe<k>`` on the public bridge and
        ``2001:db8:BED:<10+k>::1/64`` on a bridge of its own, masquerades with
        port preservation (endpoint-independent mapping), or with ``random``
        ports (a symmetric NAT); like a home router it drops unsolicited
        inbound traffic before conntrack confirms it. ``ipv4``: also NAT44,
        router ``192.0.2.<200+k>/24`` on the public bridge (see :meth:`add_ipv4`),
        ``198.51.100.<16k+1>/28`` inside, the nodes ``.<16k+2>`` on.
        ``behind=k``: one more node behind the existing router ``k`` (same NAT;
        the other arguments are ignored).
        """
        if behind is not None:
            k = behind
            if not 1 <= k <= getattr(self, "_own_nats", 0):
                raise TestbedError(f"no own NAT router {k}")
            return self._node_behind(k, f"2001:db8:{self.bed:x}:{10 + k:x}", self._own_v4[k])
        self._own_nats = getattr(self, "_own_nats", 0) + 1
        k = self._own_nats
        if k > 15:
            raise TestbedError("at most 15 own NAT routers per test bed")
        if not hasattr(self, "_own_v4"):
            self._own_v4: dict[int, bool] = {}
        self._own_v4[k] = ipv4
        rt, br, net = f"{self.prefix}r{k}", f"bn{k}", f"2001:db8:{self.bed:x}:{10 + k:x}"
        _sh(["ip", "-n", self.bridge_ns, "link", "add", br, "type", "bridge"])
        _sh(["ip", "-n", self.bridge_ns, "link", "set", br, "up"])
        self._add_ns(rt)
        self._plug(rt, f"rp{k}", "br0", "eth0")
        self._plug(rt, f"rq{k}", br, "eth1")
        self._addr(rt, f"2001:db8:{self.bed:x}::fe{k:x}/64", "eth0")
        self._addr(rt, f"{net}::1/64", "eth1")
        _sh(["ip", "netns", "exec", rt, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])
        rnd = " random" if random_ports else ""
        net4 = f"198.51.100.{16 * k}"
        v4 = f'  oifname "eth0" ip saddr {net4}/28 masquerade{rnd}\n' if ipv4 else ""
        if ipv4:
            _sh(["ip", "-n", rt, "addr", "add", f"192.0.2.{200 + k}/24", "dev", "eth0"])
            _sh(["ip", "-n", rt, "addr", "add", f"198.51.100.{16 * k + 1}/28", "dev", "eth1"])
            _sh(["ip", "netns", "exec", rt, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        ruleset = (
            "table inet smtnat {\n"
            " chain post {\n"
            "  type nat hook postrouting priority srcnat; policy accept;\n"
            f'  oifname "eth0" ip6 saddr {net}::/64 masquerade{rnd}\n'
            f"{v4}"
            " }\n"
            " chain input {\n"
            "  type filter hook input priority filter; policy drop;\n"
            '  iifname != "eth0" accept\n'
            "  meta l4proto { icmp, ipv6-icmp } accept\n"
            "  ct state established,related accept\n"
            " }\n"
            " chain forward {\n"
            "  type filter hook forward priority filter; policy drop;\n"
            '  iifname "eth1" accept\n'
            "  ct state established,related accept\n"
            " }\n"
            "}\n"
        )
        proc = subprocess.run(
            ["ip", "netns", "exec", rt, "nft", "-f", "-"],
            input=ruleset,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if proc.returncode != 0:
            raise TestbedError(f"nft in {rt}: {proc.stderr.strip()}")
        return self._node_behind(k, net, ipv4)

    def _node_behind(self, k: int, net: str, ipv4: bool) -> Node:
        i = len(self.nodes) + 1
        behind = sum(1 for n in self.nodes if n.address.startswith(f"{net}::"))
        if behind >= 13:
            raise TestbedError("at most 13 nodes behind one own NAT router")
        ns = f"{self.prefix}n{i}"
        self._add_ns(ns)
        self._plug(ns, f"v{i}", f"bn{k}")
        addr = f"{net}::{i:x}"
        self._addr(ns, f"{addr}/64")
        _sh(["ip", "-n", ns, "-6", "route", "add", "default", "via", f"{net}::1", "dev", "eth0"])
        if ipv4:
            v4 = f"198.51.100.{16 * k + 2 + behind}/28"
            _sh(["ip", "-n", ns, "addr", "add", v4, "dev", "eth0"])
            _sh(["ip", "-n", ns, "route", "add", "default", "via", f"198.51.100.{16 * k + 1}"])
        node = Node(self, i, ns, addr, True)
        self.nodes.append(node)
        return node

    def add_ipv4(self, node: Node) -> str:
        """Give a public node ``192.0.2.<index>/24`` too (IPv4 underlay tests); returns it."""
        if node.nat or node.index >= 200:
            raise TestbedError("IPv4 only for public nodes with index < 200")
        addr = f"192.0.2.{node.index}"
        _sh(["ip", "-n", node.ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
        return addr

    def nat_router(self, k: int) -> str:
        """The namespace of own NAT router ``k`` (1-based)."""
        return f"{self.prefix}r{k}"

    # ------------------------------------------------------------- teardown

    def teardown(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.teardown)
        for node in self.nodes:
            _kill_pids([p.pid for p in node.procs if p.poll() is None])
            for p in node.procs:
                with contextlib.suppress(Exception):
                    p.wait(timeout=1)
        for ns in reversed(self._namespaces):
            delete_netns(ns)
        # Whatever our prefix left behind (e.g. a namespace whose creation was interrupted).
        for ns in list_netns():
            if ns.startswith(self.prefix) and ns in {self.bridge_ns, self.router_ns} | {
                f"{self.prefix}n{i}" for i in range(1, len(self.nodes) + 2)
            }:
                delete_netns(ns)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def environment_problem() -> str | None:
    """Why netns tests cannot run here (None if they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "ping", "nft", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if shutil.which("wireguard-go") is None:
        return "wireguard-go not installed (apt-get install --no-install-recommends wireguard-go)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun missing (userspace WireGuard needs TUN)"
    probe = f"{unique_prefix('smp')}"
    if _sh(["ip", "netns", "add", probe], check=False).returncode != 0:
        return "cannot create network namespaces"
    _sh(["ip", "netns", "del", probe], check=False)
    return None
