"""One ``smegd`` under measurement: started, joined to a swarm, read from outside.

Shared by ``bench/member_scale_bench.py`` and the CI test of the swarm
(``tests/test_swarm.py``). Everything is read from ``/proc/PID`` (RSS, open
descriptors, threads, CPU time: reading them costs the daemon nothing) and
from its Prometheus endpoint (wire bytes, channels, members).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from smegmesh.testbed.ports import free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    t: float
    rss_mb: float
    fds: int
    threads: int
    cpu_s: float


def proc_sample(pid: int) -> ProcSample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return ProcSample(
        t=time.monotonic(),
        rss_mb=int(fields["VmRSS"].split()[0]) / 1024,
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(fields["Threads"].strip()),
        cpu_s=(int(stat[11]) + int(stat[12])) / CLK_TCK,
    )


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> ``{"name{labels}": value}`` (samples only)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


class MeasuredSmegd:
    """A real ``smegd`` process (memory backend, product timings) on loopback."""

    def __init__(self, directory: Path, *, extra: dict[str, Any] | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "s.sock"
        self.grpc_port = free_port("127.0.0.1")
        self.metrics_port = free_port("127.0.0.1")
        self.config: dict[str, Any] = {
            "stubWg": True,
            "stateDir": str(self.dir / "state"),
            "controlSocket": str(self.sock),
            "gRPCPort": self.grpc_port,
            "bindAddress": "127.0.0.1",
            "metricsListen": f"127.0.0.1:{self.metrics_port}",
            "logLevel": "warning",
            "baseConfiguration": {"publicEndpoint": "127.0.0.1"},
            **(extra or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60) -> MeasuredSmegd:
        cfg = self.dir / "smegd.yaml"
        cfg.write_text(json.dumps(self.config))
        with open(self.dir / "smegd.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "smegmesh.daemon.main", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smegd exited: {self.log()[-2000:]}")
            try:
                if self.api("GET", "/v1/health", timeout=2).get("ok"):
                    return self
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError("smegd did not answer on its control socket")

    def log(self) -> str:
        try:
            return (self.dir / "smegd.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def api(self, method: str, url: str, *, timeout: float = 60, **kw: Any) -> Any:
        transport = httpx.HTTPTransport(uds=str(self.sock))
        with httpx.Client(transport=transport, base_url="http://smegd", timeout=timeout) as c:
            r = c.request(method, url, **kw)
        r.raise_for_status()
        return r.json()

    def join(self, token: str) -> str:
        return str(self.api("POST", "/v1/join", json={"token": token})["mesh_id"])

    def metrics(self) -> dict[str, float]:
        r = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30)
        r.raise_for_status()
        return parse_metrics(r.text)

    def live_members(self, mesh_id: str) -> int:
        m = self.metrics()
        return int(m.get(f'smegd_members{{mesh="{mesh_id}",state="live"}}', 0))

    def known_members(self, mesh_id: str) -> int:
        """Members in any state (live, suspect, pruned, left): the join has synced them."""
        m = self.metrics()
        return int(
            sum(v for k, v in m.items() if k.startswith(f'smegd_members{{mesh="{mesh_id}",'))
        )

    def sample(self) -> ProcSample:
        return proc_sample(self.pid)

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
