"""Userspace WireGuard: one supervised ``wireguard-go`` child per interface.

The child runs in the foreground (``WG_PROCESS_FOREGROUND=1``) and is driven
through its UAPI unix socket with the ``get=1``/``set=1`` text protocol
(:mod:`smegmesh.wg.uapi`). We do not use the ``wireguard-tools`` PyPI package:
it applies whole configurations rather than the per-peer deltas the
reconciler computes, hardcodes ``/var/run/wireguard`` for UAPI sockets, and
would be a new dependency for ~150 lines of protocol code.

Per-daemon socket directory
---------------------------
wireguard-go (checked: v0.0.20220316, ``ipc/uapi_linux.go``) hardcodes the
socket directory ``/var/run/wireguard``; even with ``WG_UAPI_FD`` it puts an
inotify watch on ``/var/run/wireguard/IFNAME.sock`` and exits if it is absent.
When ``socket_dir`` is given, each child is therefore started as::

    [ip netns exec NS] unshare --mount --propagation private -- \\
        sh -c 'mount --bind SOCKET_DIR /var/run/wireguard && exec wireguard-go IFNAME'

so in its private mount namespace ``/var/run/wireguard`` *is* ``SOCKET_DIR``;
the socket appears on the shared filesystem as ``SOCKET_DIR/IFNAME.sock``,
where this backend (and nobody else) connects. ``exec`` keeps the child's PID
equal to wireguard-go's, so supervision and kill-by-PID are exact. With
``socket_dir=None`` (or ``/var/run/wireguard`` itself) the standard directory is
used directly, with no private mount and so no ``CAP_SYS_ADMIN`` (and ``wg show``
works as usual).

Supervision
-----------
``check(name)`` notices a dead child (or, for an adopted device, an
unanswering socket), restarts it and re-applies the last full WireGuard
configuration this backend applied; it returns True so the caller re-applies
host state too (the TUN device, with its addresses and routes, dies with the
process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from smegmesh.core.wgconfig import InterfaceConfig, InterfaceStatus, empty_status, peer_config_of
from smegmesh.core.wgdiff import WgOp, apply_ops, diff_interface
from smegmesh.wg.base import BackendUnavailable, InterfaceNotFound, WgError
from smegmesh.wg.resolver import EndpointResolver, Report, SentNames, resolve_ops
from smegmesh.wg.uapi import UapiClient, format_set

log = logging.getLogger(__name__)

DEFAULT_SOCKET_DIR = "/var/run/wireguard"
INSTALL_HINT = "apt-get install --no-install-recommends wireguard-go wireguard-tools"

_MOUNT_SCRIPT = 'mkdir -p /var/run/wireguard && mount --bind "$0" /var/run/wireguard && exec "$@"'


@dataclass
class _Device:
    name: str
    proc: subprocess.Popen[bytes] | None  # None = adopted (already running, not our child)
    known: InterfaceStatus | None  # what we believe is configured (None = unknown)
    restarts: int = 0


def _same_dir(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


class UserspaceBackend:
    """WireGuard devices backed by wireguard-go processes.

    ``netns``: start the devices inside this named network namespace (used by
    tests; a daemon normally runs inside its namespace already).
    ``socket_dir``: private UAPI socket directory (see module docstring).
    """

    kind = "userspace"

    def __init__(
        self,
        *,
        socket_dir: str | None = None,
        netns: str | None = None,
        wireguard_go: str = "wireguard-go",
        log_level: str = "error",
        start_timeout: float = 5.0,
        report: Report | None = None,
    ) -> None:
        exe = shutil.which(wireguard_go)
        if exe is None:
            raise BackendUnavailable(f"{wireguard_go} not found; install it: {INSTALL_HINT}")
        self.exe = exe
        self.netns = netns
        self.socket_dir = os.path.abspath(socket_dir) if socket_dir else None
        if self.socket_dir is not None and _same_dir(self.socket_dir, DEFAULT_SOCKET_DIR):
            # wireguard-go's own directory: no private mount (and so no
            # CAP_SYS_ADMIN) needed; one daemon per host, `wg show` works.
            self.socket_dir = None
        if self.socket_dir is not None:
            os.makedirs(self.socket_dir, mode=0o700, exist_ok=True)
            for tool in ("unshare", "mount"):
                if shutil.which(tool) is None:
                    raise BackendUnavailable(f"{tool} (util-linux) is needed for socket_dir")
        self.log_level = log_level
        self.start_timeout = start_timeout
        self._devices: dict[str, _Device] = {}
        self._lock = threading.RLock()
        self._resolve = EndpointResolver(report=report)
        self._names = SentNames(self._resolve)

    # ------------------------------------------------------------------ paths

    def socket_path(self, name: str) -> str:
        return os.path.join(self.socket_dir or DEFAULT_SOCKET_DIR, f"{name}.sock")

    def _client(self, name: str) -> UapiClient:
        return UapiClient(self.socket_path(name))

    def pid(self, name: str) -> int | None:
        """PID of the wireguard-go child for ``name`` (None if adopted/absent)."""
        dev = self._devices.get(name)
        return dev.proc.pid if dev and dev.proc else None

    # -------------------------------------------------------------- processes

    def _command(self, name: str) -> list[str]:
        cmd = ["env", "WG_PROCESS_FOREGROUND=1", f"LOG_LEVEL={self.log_level}", self.exe, name]
        if self.socket_dir is not None:
            cmd = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                _MOUNT_SCRIPT,
                self.socket_dir,
                *cmd,
            ]
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    def _start(self, name: str) -> subprocess.Popen[bytes]:
        if len(name) > 15:
            raise WgError(f"interface name {name!r} longer than 15 characters")
        path = self.socket_path(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale socket of a dead process
        proc = subprocess.Popen(
            self._command(name),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a terminal ^C goes to the daemon, which stops us
        )
        threading.Thread(
            target=self._pump_stderr, args=(name, proc), daemon=True, name=f"wg-go-{name}"
        ).start()
        client = UapiClient(path, timeout=1.0)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if proc.poll() is not None:
                raise WgError(f"wireguard-go {name} exited at start with code {proc.returncode}")
            if os.path.exists(path) and client.ping():
                return proc
            if time.monotonic() > deadline:
                self._kill(proc)
                raise WgError(f"wireguard-go {name}: no UAPI socket at {path} after start")
            time.sleep(0.005)

    @staticmethod
    def _pump_stderr(name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            log.warning("wireguard-go %s: %s", name, raw.decode(errors="replace").rstrip())

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=2.0)

    # ------------------------------------------------------------ the backend

    def ensure_interface(self, name: str) -> bool:
        with self._lock:
            dev = self._devices.get(name)
            if dev is not None:
                alive = dev.proc.poll() is None if dev.proc else self._client(name).ping()
                if alive:
                    return False
            if dev is None and self._client(name).ping():
                # A device from an earlier run of the daemon: adopt it.
                self._devices[name] = _Device(name, None, None)
                return False
            proc = self._start(name)
            restarts = dev.restarts + 1 if dev is not None else 0
            self._devices[name] = _Device(name, proc, empty_status(name), restarts)
            return True

    def read(self, name: str) -> InterfaceStatus:
        status = self._client(name).get(name)
        with self._lock:
            dev = self._devices.get(name)
            if dev is not None:
                dev.known = status
        return status

    def apply(self, name: str, ops: Sequence[WgOp]) -> list[WgOp]:
        with self._lock:
            send, applied = resolve_ops(ops, self._resolve)
            if not send:
                return applied
            dev = self._devices.get(name)
            self._client(name).set(format_set(send))
            self._names.note(name, send, applied)
            if dev is not None:
                dev.known = apply_ops(dev.known, applied) if dev.known is not None else None
            return applied

    def check(self, name: str) -> bool:
        with self._lock:
            dev = self._devices.get(name)
            if dev is None:
                raise InterfaceNotFound(name)
            if dev.proc is not None:
                if dev.proc.poll() is None:
                    return False
                log.warning(
                    "wireguard-go for %s died (code %s); restarting", name, dev.proc.returncode
                )
            elif self._client(name).ping():
                return False
            known = dev.known
            dev.proc = self._start(name)
            dev.restarts += 1
            dev.known = empty_status(name)
            if known is not None and known.private_key is not None:
                desired = InterfaceConfig(
                    name=name,
                    private_key=known.private_key,
                    listen_port=known.listen_port,
                    peers={k: peer_config_of(p) for k, p in known.peers.items()},
                )
                self.apply(name, diff_interface(desired, dev.known))
            return True

    def restarts(self, name: str) -> int:
        dev = self._devices.get(name)
        return dev.restarts if dev else 0

    def moved_endpoints(self, name: str, wanted: Mapping[bytes, str]) -> list[bytes]:
        with self._lock:
            return self._names.moved(name, wanted)

    def remove_interface(self, name: str) -> None:
        with self._lock:
            self._names.forget(name)
            dev = self._devices.pop(name, None)
            if dev is not None and dev.proc is not None:
                self._kill(dev.proc)
            elif self._client(name).ping():
                # Adopted: deleting the socket makes wireguard-go shut down.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.socket_path(name))

    def close(self) -> None:
        self._resolve.close()
        with self._lock:
            for name in list(self._devices):
                self.remove_interface(name)
