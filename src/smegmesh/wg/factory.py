"""Choosing a WireGuard backend (``wgBackend``: auto, kernel, userspace, memory)."""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any

from smegmesh.net.netlink import iproute_class, off_loop
from smegmesh.wg.base import BackendUnavailable, WgBackend
from smegmesh.wg.resolver import Report

INSTALL_HINT = "apt-get install --no-install-recommends wireguard-go wireguard-tools"
KINDS = ("auto", "kernel", "userspace", "memory")


def kernel_wireguard_available(netns: str | None = None) -> bool:
    """True if ``ip link add ... type wireguard`` works (creates and deletes a probe link).

    Probed in a thread of its own: pyroute2's sync API runs an event loop, which it
    cannot in the thread of a running one (smegd's, which chooses its backend).
    """
    return off_loop(_kernel_probe, netns, timeout=None)


def _kernel_probe(netns: str | None) -> bool:
    try:
        iproute = iproute_class()
    except ImportError:  # pragma: no cover
        return False
    probe = f"smgprobe{os.getpid() % 10000}"
    ipr: Any = iproute(netns=netns) if netns else iproute()
    try:
        ipr.link("add", ifname=probe, kind="wireguard")
    except Exception:
        return False
    else:
        with contextlib.suppress(Exception):
            ipr.link("del", ifname=probe)
        return True
    finally:
        ipr.close()


def create_backend(
    kind: str = "auto",
    *,
    socket_dir: str | None = None,
    netns: str | None = None,
    wireguard_go: str = "wireguard-go",
    report: Report | None = None,
) -> WgBackend:
    """The backend for ``kind``; ``auto`` = kernel if it works, else userspace.

    ``report`` is told of peer endpoint names that do not resolve (wg/resolver.py).

    Raises :class:`BackendUnavailable` naming what to install.
    """
    if kind not in KINDS:
        raise ValueError(f"wgBackend must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "memory":
        from smegmesh.wg.memory import MemoryBackend

        return MemoryBackend()
    if kind in ("auto", "kernel") and kernel_wireguard_available(netns):
        from smegmesh.wg.kernel import KernelBackend

        return KernelBackend(netns=netns, report=report)
    if kind == "kernel":
        raise BackendUnavailable(
            "kernel WireGuard is not available (`ip link add ... type wireguard` fails); "
            "load the wireguard module or use wgBackend: userspace"
        )
    if shutil.which(wireguard_go) is None:
        what = "neither kernel WireGuard nor wireguard-go" if kind == "auto" else "no wireguard-go"
        raise BackendUnavailable(f"{what} available; install: {INSTALL_HINT}")
    from smegmesh.wg.userspace import UserspaceBackend

    return UserspaceBackend(
        socket_dir=socket_dir, netns=netns, wireguard_go=wireguard_go, report=report
    )
