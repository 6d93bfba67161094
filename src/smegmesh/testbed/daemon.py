"""One real ``smegd`` process in a namespace node of the test bed (see :mod:`.cluster`).

Its config YAML (userspace WireGuard with a private UAPI socket dir, its own
state dir and control socket, short timings), its process, its log, the real
``smegctl`` and the local API (:func:`~smegmesh.testbed.smegctl.run_smegctl`,
:func:`~smegmesh.testbed.smegctl.unix_api`), its WireGuard interface read over
the UAPI socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import yaml

from smegmesh.core.desired import interface_name
from smegmesh.core.wgconfig import InterfaceStatus
from smegmesh.testbed.netns import Node
from smegmesh.testbed.smegctl import SMEGD, run_smegctl, unix_api
from smegmesh.testbed.wait import DaemonExited, wait_until
from smegmesh.wg.uapi import UapiClient

__all__ = ["GRPC_PORT", "CtlError", "Daemon", "Timings", "with_logs"]

GRPC_PORT = 4000


class CtlError(Exception):
    """``smegctl`` exited non-zero."""

    def __init__(self, argv: Sequence[str], rc: int, stdout: str, stderr: str) -> None:
        super().__init__(f"smegctl {' '.join(argv)} -> {rc}: {stderr.strip() or stdout.strip()}")
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


@dataclass(frozen=True)
class Timings:
    """Protocol timings written into every daemon's config (seconds)."""

    sync_interval: float = 1
    heartbeat_interval: float = 2
    pull_interval: float = 5
    timeout: float = 2
    log_level: str = "info"


#: The attribute of an exception holding the daemons (their ids) whose log lines it carries.
_LOGS_SHOWN = "smegmesh_logs_shown"
_E = TypeVar("_E", bound=BaseException)


def with_logs(exc: _E, daemons: Iterable[Daemon], lines: int = 60) -> _E:
    """``exc`` with a note of the last ``lines`` log lines of each of ``daemons``
    it does not carry already: a failed wait shows a daemon's log once, however
    many helpers its error passes on its way out (the wait's own, a test's
    :meth:`Cluster.logs_on_failure` block). The note shows under the error (in
    pytest's report, a traceback), not in ``str(exc)``.
    """
    shown: frozenset[int] = getattr(exc, _LOGS_SHOWN, frozenset())
    new = [d for d in daemons if id(d) not in shown]
    if new:
        exc.add_note("--- daemon logs ---\n" + "\n".join(d.log_tail(lines) for d in new))
        setattr(exc, _LOGS_SHOWN, shown | {id(d) for d in new})
    return exc


@dataclass
class Daemon:
    """One ``smegd`` in one namespace node."""

    node: Node
    role: str  # "peer" | "client"
    timings: Timings
    name: str = ""
    proc: subprocess.Popen[Any] | None = None
    starts: int = 0
    _http: httpx.Client | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"{self.role}{self.node.index}"
        d = self.node.tmpdir
        self.state_dir = os.path.join(d, "state")
        self.socket = os.path.join(d, "smegd.sock")
        self.wg_socket_dir = os.path.join(d, "wg")
        self.config_path = os.path.join(d, "smegd.yaml")
        self.log_path = os.path.join(d, "smegd.log")
        self.write_config()

    # ---------------------------------------------------------------- config
    def config(self) -> dict[str, Any]:
        t = self.timings
        base: dict[str, Any] = {"role": self.role}
        if self.role == "peer":
            base["publicEndpoint"] = self.node.address
        return {
            "wgBackend": "userspace",
            "stateDir": self.state_dir,
            "controlSocket": self.socket,
            "wgSocketDir": self.wg_socket_dir,
            "gRPCPort": GRPC_PORT,
            "bindAddress": "::",
            "syncInterval": t.sync_interval,
            "heartbeatInterval": t.heartbeat_interval,
            "pullInterval": t.pull_interval,
            "timeout": t.timeout,
            "logLevel": t.log_level,
            "baseConfiguration": base,
        }

    def write_config(self) -> None:
        with open(self.config_path, "w") as f:
            yaml.safe_dump(self.config(), f, sort_keys=False)

    def edit_config(self, base: dict[str, Any] | None = None, **top: Any) -> None:
        """Change keys in this daemon's config file; they take effect at its next start.

        ``top`` sets top-level keys (``acceptDefaults=True``), ``base`` keys of
        ``baseConfiguration``; a value of None removes the key.
        """
        with open(self.config_path) as f:
            cfg = yaml.safe_load(f)
        for target, changes in ((cfg, top), (cfg.setdefault("baseConfiguration", {}), base or {})):
            for key, value in changes.items():
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = value
        with open(self.config_path, "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)

    # --------------------------------------------------------------- process
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True, timeout: float = 30.0) -> None:
        """Start ``smegd`` in the node's namespace (appending to its log)."""
        if self.alive():
            raise RuntimeError(f"{self.name}: smegd already running")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)  # left by a killed daemon: readiness = a fresh socket
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"===== start #{self.starts} =====\n".encode())
            log.flush()
            self.proc = self.node.spawn(
                [*SMEGD, self.config_path],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                exited = DaemonExited(f"{self.name}: smegd exited with {self.proc.returncode}")
                raise with_logs(exited, [self], 40)
            if not os.path.exists(self.socket):
                return False
            return self.api("GET", "/v1/health", timeout=2.0) is not None

        try:
            wait_until(ready, timeout=timeout, interval=0.05, what=f"{self.name}: smegd ready")
        except TimeoutError as e:
            raise with_logs(TimeoutError(str(e)), [self], 40) from None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the daemon (SIGKILL: a crash) and reap it.

        Its wireguard-go children live on (their own sessions), as after a
        real daemon crash; a restarted daemon adopts them.
        """
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.close_http()

    def stop(self) -> None:
        """Graceful stop (SIGTERM), SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        self.close_http()

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout=timeout)

    def kill_wireguard(self) -> list[int]:
        """Kill every other process of the node (its wireguard-go children): a machine crash."""
        from smegmesh.testbed.netns import _kill_pids, netns_pids

        mine = {self.proc.pid} if self.alive() and self.proc is not None else set()
        pids = [p for p in netns_pids(self.node.ns) if p not in mine]
        _kill_pids(pids, timeout=2.0)
        return pids

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_text().splitlines()[-lines:]
        return "\n".join(f"  [{self.name}] {line}" for line in text)

    # ------------------------------------------------------------- control
    def ctl(
        self, *args: str, json_out: bool = True, check: bool = True, timeout: float = 120.0
    ) -> Any:
        """Run the real ``smegctl --socket S ARGS [--json]``; parsed JSON (or stdout text)."""
        argv = [*args, "--json"] if json_out else list(args)
        proc = run_smegctl(self.socket, argv, timeout=timeout)
        if check and proc.returncode != 0:
            raise CtlError(
                ["--socket", self.socket, *argv], proc.returncode, proc.stdout, proc.stderr
            )
        if not json_out:
            return proc.stdout
        try:
            return json.loads(proc.stdout) if proc.stdout.strip() else None
        except ValueError:
            if check:
                raise
            return None

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any | None:
        """The local REST API in-process (fast polling); None on any failure."""
        try:
            if self._http is None:
                self._http = unix_api(self.socket)
            r = self._http.request(method, path, json=body, timeout=timeout)
        except (httpx.HTTPError, OSError):
            self.close_http()
            return None
        if r.status_code >= 400:
            return None
        try:
            return r.json()
        except ValueError:
            return None

    def close_http(self) -> None:
        if self._http is not None:
            with contextlib.suppress(Exception):
                self._http.close()
            self._http = None

    def get_mesh(self, mesh_id: str) -> dict[str, Any] | None:
        res = self.api("GET", f"/v1/meshes/{mesh_id}")
        return res if isinstance(res, dict) else None

    def route(self, mesh_id: str, destination: str) -> dict[str, Any] | None:
        """The route ``get-mesh`` shows towards ``destination`` (``::/0``, a mesh /64), if any."""
        got = self.get_mesh(mesh_id)
        routes = got.get("routes", []) if got is not None else []
        return next((r for r in routes if r["destination"] == destination), None)

    def gateway(self, mesh_id: str, destination: str) -> str | None:
        """The key of the gateway of :meth:`route`, None without one."""
        r = self.route(mesh_id, destination)
        return None if r is None else str(r["gateway"])

    def list_meshes(self) -> list[dict[str, Any]]:
        res = self.api("GET", "/v1/meshes")
        return res if isinstance(res, list) else []

    def public_key(self) -> str | None:
        for m in self.list_meshes():
            detail = self.get_mesh(m["mesh_id"])
            if detail:
                return str(detail["self_key"])
        return None

    def overlay_address(self, mesh_id: str) -> str | None:
        for m in self.list_meshes():
            if m["mesh_id"] == mesh_id:
                return str(m["overlay_address"])
        return None

    # ------------------------------------------------------------ WireGuard
    def wg_show(self, mesh_id: str) -> InterfaceStatus | None:
        """The mesh interface as wireguard-go reports it (UAPI), None if absent."""
        ifname = interface_name(mesh_id)
        path = os.path.join(self.wg_socket_dir, f"{ifname}.sock")
        try:
            return UapiClient(path, timeout=2.0).get(ifname)
        except Exception:
            return None

    def wg_peer_keys(self, mesh_id: str) -> set[str] | None:
        import base64

        st = self.wg_show(mesh_id)
        if st is None:
            return None
        return {base64.b64encode(k).decode() for k in st.peers}

    def ping(self, address: str, count: int = 1, timeout: int = 1) -> bool:
        return self.node.ping(address, count=count, timeout=timeout)
