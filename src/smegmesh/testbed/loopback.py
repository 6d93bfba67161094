"""Real ``smegd`` processes on loopback (memory WireGuard backend): the ``proc`` tests' harness.

Each :class:`Smegd` is one daemon with its own state directory, control socket
and gRPC port, bound to ``::1`` (ports from :mod:`.ports`: safe with parallel
test workers). Tests drive it with real ``smegctl`` subprocesses
(:meth:`Smegd.ctl`) and wait with deadlines (:func:`~.wait.wait_until`), never
fixed sleeps. Bulk set-up (many joins) may use the HTTP API directly
(:meth:`Smegd.api`), which is what ``smegctl`` does too, minus a Python start-up.
The namespace counterpart (userspace WireGuard, NAT) is :mod:`.cluster`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from smegmesh.testbed.ports import free_port, free_udp_tcp_port
from smegmesh.testbed.smegctl import SMEGD, run_smegctl, unix_api
from smegmesh.testbed.wait import DaemonExited, wait_until

__all__ = [
    "API_TOKEN",
    "PNG_MAGIC",
    "Cluster",
    "CtlResult",
    "Smegd",
    "cluster",
    "create_mesh",
    "free_port",
    "free_udp_tcp_port",
    "one_mesh",
    "short_tmpdir",
    "wait_converged",
    "wait_until",
]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
API_TOKEN = "test-token-0123456789abcdef"


def short_tmpdir(prefix: str = "smd") -> Path:
    """Unix socket paths are limited to 107 bytes: keep the directory short."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@dataclass
class CtlResult:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Smegd:
    """One real daemon process."""

    root: Path
    name: str
    api_listen: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    grpc_port: int = 0
    api_port: int = 0
    #: Serve DNS (``dnsListen``) on ``dns_host`` at ``dns_port`` (a free one when 0).
    dns_listen: bool = False
    dns_host: str = "127.0.0.1"
    dns_port: int = 0

    def __post_init__(self) -> None:
        self.dir = self.root / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "s.sock"
        self.log_path = self.dir / "smegd.log"
        self.grpc_port = self.grpc_port or free_port(udp=True)  # gRPC and its datagrams
        if self.api_listen:
            self.api_port = self.api_port or free_port()
        if self.dns_listen:
            self.dns_port = self.dns_port or free_udp_tcp_port(self.dns_host)

    # ------------------------------------------------------------------ config
    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "stubWg": True,
            "stateDir": str(self.dir / "state"),
            "controlSocket": str(self.sock),
            "gRPCPort": self.grpc_port,
            "bindAddress": "::1",
            "syncInterval": 1,
            "pullInterval": 2,
            "heartbeatInterval": 2,
            "timeout": 3,
            "logLevel": "info",
            "baseConfiguration": {"publicEndpoint": "::1"},
        }
        if self.api_listen:
            cfg["apiListen"] = f"[::1]:{self.api_port}"
            cfg["apiToken"] = API_TOKEN
        if self.dns_listen:
            host = f"[{self.dns_host}]" if ":" in self.dns_host else self.dns_host
            cfg["dnsListen"] = f"{host}:{self.dns_port}"
        cfg.update(self.extra)
        return cfg

    @property
    def config_path(self) -> Path:
        return self.dir / "smegd.yaml"

    # ------------------------------------------------------------------ process
    def start(self) -> Smegd:
        self.config_path.write_text(json.dumps(self.config(), indent=1))  # JSON is YAML
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        try:
            self.proc = subprocess.Popen(
                [*SMEGD, str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise DaemonExited(
                f"smegd {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
            )
        try:
            return bool(self.api("GET", "/v1/health", timeout=2).get("ok"))
        except (httpx.HTTPError, OSError):
            return False

    def wait_ready(self, timeout: float = 30) -> Smegd:
        wait_until(self.ready, timeout, 0.1, f"smegd {self.name} to serve its socket")
        return self

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def restart(self) -> Smegd:
        return self.start().wait_ready()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ clients
    def ctl(self, *args: str, code: int | None = 0, timeout: float = 60) -> CtlResult:
        """Run ``smegctl --socket SOCK ARGS`` as a subprocess; assert the exit code."""
        p = run_smegctl(self.sock, args, timeout=timeout)
        r = CtlResult(tuple(args), p.returncode, p.stdout, p.stderr)
        if code is not None:
            assert p.returncode == code, (self.name, args, p.returncode, p.stdout, p.stderr)
        return r

    def ctl_json(self, *args: str) -> Any:
        r = self.ctl(*args, "--json")
        assert r.stderr == "", r
        return r.json

    def api(self, method: str, url: str, *, timeout: float = 30, **kw: Any) -> Any:
        """One request on the control socket; the JSON answer (raises on HTTP errors)."""
        with unix_api(self.sock, timeout) as c:
            r = c.request(method, url, **kw)
        r.raise_for_status()
        return r.json()

    # ------------------------------------------------------------------ mesh views
    def mesh(self, mesh_id: str) -> dict[str, Any]:
        return self.api("GET", f"/v1/meshes/{mesh_id}")  # type: ignore[no-any-return]

    def mesh_keys(self, mesh_id: str) -> set[str]:
        try:
            return {n["public_key"] for n in self.mesh(mesh_id)["nodes"]}
        except httpx.HTTPStatusError:
            return set()

    def mesh_ids(self) -> set[str]:
        return {m["mesh_id"] for m in self.api("GET", "/v1/meshes")}

    def self_key(self, mesh_id: str) -> str:
        return str(self.mesh(mesh_id)["self_key"])

    def node(self, mesh_id: str, key: str) -> dict[str, Any] | None:
        for n in self.mesh(mesh_id)["nodes"]:
            if n["public_key"] == key:
                return n  # type: ignore[no-any-return]
        return None


class Cluster:
    """Several daemons in one temporary directory; stopped (and checked) on exit."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or short_tmpdir()
        self.daemons: list[Smegd] = []

    def add(self, n: int = 1, *, wait: bool = True, **kw: Any) -> list[Smegd]:
        """Start ``n`` more daemons in parallel (and wait until all serve)."""
        new = [Smegd(self.root, f"n{len(self.daemons) + i:02d}", **kw).start() for i in range(n)]
        self.daemons.extend(new)
        if wait:
            self.wait_ready()
        return new

    def wait_ready(self) -> None:
        for d in self.daemons:
            d.wait_ready(60)

    def close(self) -> None:
        for d in self.daemons:
            if d.alive:
                assert d.proc is not None
                d.proc.send_signal(signal.SIGTERM)
        for d in self.daemons:
            d.stop()
        if self.tracebacks() or os.environ.get("SMEG_KEEP_LOGS"):
            sys.stderr.write(f"smegd logs kept in {self.root}\n")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def tracebacks(self) -> list[str]:
        return [d.name for d in self.daemons if "Traceback" in d.log()]


@contextlib.contextmanager
def cluster(n: int, **kw: Any) -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.add(n, **kw)
        yield c
    finally:
        c.close()


@contextlib.contextmanager
def one_mesh(n: int) -> Iterator[tuple[Cluster, str]]:
    """``n`` daemons started at once, the first the founder of a mesh the others
    joined (converged); the cluster and the mesh id."""
    with cluster(n, wait=False) as c:
        c.wait_ready()
        yield c, create_mesh(c.daemons[0], c.daemons[1:])


def create_mesh(owner: Smegd, joiners: list[Smegd], **opts: Any) -> str:
    """A mesh of ``owner`` + ``joiners`` over the API (one token, many uses); converged."""
    mesh_id = str(owner.api("POST", "/v1/meshes", json=opts or None)["mesh_id"])
    if joiners:
        tok = owner.api(
            "POST", f"/v1/meshes/{mesh_id}/invites", json={"ttl_s": 600, "uses": len(joiners)}
        )["token"]
        for j in joiners:
            j.api("POST", "/v1/join", json={"token": tok, **opts})
    wait_converged([owner, *joiners], mesh_id)
    return mesh_id


def wait_converged(daemons: list[Smegd], mesh_id: str, timeout: float = 30) -> set[str]:
    """Until every daemon lists exactly the same, complete set of nodes in ``mesh_id``."""
    want = {d.self_key(mesh_id) for d in daemons}

    def check() -> bool:
        return all(d.mesh_keys(mesh_id) == want for d in daemons)

    wait_until(check, timeout, 0.2, f"{len(daemons)} nodes to converge in {mesh_id}")
    return want
