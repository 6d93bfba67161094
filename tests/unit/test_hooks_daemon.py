"""When smegd runs a mesh's hooks: up hooks once per interface it creates, down
hooks when leave-mesh removes it (docs/CONFIG.md, preUp ... postDown).

The reconcile loop is replaced by explicit passes (``_reconcile_pass``): what a
pass does is the same, and the test decides when one happens."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from daemon_inproc import by_hand, daemon_config
from smegmesh.daemon.config import MeshOptions
from smegmesh.daemon.node import Daemon
from smegmesh.wg import factory
from smegmesh.wg.memory import MemoryBackend


@pytest.fixture
def kept(monkeypatch: pytest.MonkeyPatch) -> MemoryBackend:
    """One WireGuard 'kernel' for every daemon of a test: interfaces outlive a daemon."""
    backend = MemoryBackend()
    monkeypatch.setattr(factory, "create_backend", lambda *a, **kw: backend)
    return backend


def _daemon(root: Path) -> Daemon:
    log = root / "hooks.log"
    hooks = {s: [f"echo {s} >> {log}"] for s in ("preUp", "postUp", "preDown", "postDown")}
    cfg = daemon_config(root, baseConfiguration={"publicEndpoint": "::1", **hooks})
    return by_hand(Daemon(cfg))


def _ran(root: Path) -> list[str]:
    log = root / "hooks.log"
    return log.read_text().split() if log.exists() else []


def test_pre_up_runs_once_while_the_apply_keeps_failing(root: Path, kept: MemoryBackend) -> None:
    """A failing apply is retried every pass (at most 2 s apart): preUp ran before
    each attempt, and a non-idempotent hook (iptables -A) piled up a rule each."""

    async def main() -> None:
        d = _daemon(root)
        await d.start()
        try:
            real = d.reconciler.apply
            tries: list[int] = []

            def half_created(iface: Any, host: Any) -> Any:  # the interface, then a failure
                tries.append(1)
                kept.ensure_interface(iface.name)
                raise OSError("cannot apply: RTNETLINK answers: Address already in use")

            d.reconciler.apply = half_created  # type: ignore[method-assign]
            mesh = await d.new_mesh(MeshOptions())
            for _ in range(3):
                await d._reconcile_pass()
            assert len(tries) == 3 and d.meshes[mesh].dirty_wg
            assert _ran(root) == ["preUp"]
            d.reconciler.apply = real  # type: ignore[method-assign]
            await d._reconcile_pass()
            # created by the failing attempt: postUp still follows once it is configured
            assert _ran(root) == ["preUp", "postUp"]
            await d._reconcile_pass()
            assert _ran(root) == ["preUp", "postUp"]
        finally:
            await d.stop()

    asyncio.run(main())


def test_a_restart_does_not_rerun_up_hooks_and_leave_runs_down_hooks(
    root: Path, kept: MemoryBackend
) -> None:
    """Interfaces stay up across a restart (smegd stop runs no down hooks): the
    restarted daemon ran preUp and postUp again on the interface that stayed up."""

    async def run(step: str) -> None:
        d = _daemon(root)
        await d.start()
        try:
            if step == "create":
                await d.new_mesh(MeshOptions())
            await d._reconcile_pass()
            assert all(rt.up for rt in d.meshes.values()) and d.meshes
            if step == "leave":
                await d.leave_mesh(next(iter(d.meshes)))
        finally:
            await d.stop()

    asyncio.run(run("create"))
    assert _ran(root) == ["preUp", "postUp"] and kept.devices
    asyncio.run(run("restart"))
    assert _ran(root) == ["preUp", "postUp"], "up hooks ran again on an interface that stayed up"
    asyncio.run(run("leave"))
    assert _ran(root) == ["preUp", "postUp", "preDown", "postDown"] and not kept.devices


def test_a_start_that_finds_no_interface_runs_the_up_hooks(root: Path, kept: MemoryBackend) -> None:
    """After a reboot the interface is gone: the restored mesh's is created, with its hooks."""

    async def run(create: bool) -> None:
        d = _daemon(root)
        await d.start()
        try:
            if create:
                await d.new_mesh(MeshOptions())
            await d._reconcile_pass()
        finally:
            await d.stop()

    asyncio.run(run(True))
    kept.devices.clear()  # a reboot
    asyncio.run(run(False))
    assert _ran(root) == ["preUp", "postUp", "preUp", "postUp"]


def test_an_interface_the_health_check_creates_again_gets_its_post_up_hooks(
    root: Path, kept: MemoryBackend
) -> None:
    """A lost interface (wireguard-go died, ``ip link del``) is created again by the
    health check, configured, but what postUp set up on it (firewall rules,
    routes, qdiscs) went with it, and no hook ran again (second read of the
    twenty-fifth session). postUp runs again; preUp does not (the backend
    created the interface before smegd hears of the loss)."""

    async def main() -> None:
        d = _daemon(root)
        await d.start()
        try:
            mesh = await d.new_mesh(MeshOptions())
            await d._reconcile_pass()
            assert _ran(root) == ["preUp", "postUp"]
            kept.lose(d.meshes[mesh].ifname)
            await d._health_check()
            assert d.meshes[mesh].ifname in kept.devices
            await d._reconcile_pass()  # the hooks run with the loop's next apply
            assert _ran(root) == ["preUp", "postUp", "postUp"]
            await d._health_check()  # healthy: nothing more
            await d._reconcile_pass()
            assert _ran(root) == ["preUp", "postUp", "postUp"]
        finally:
            await d.stop()

    asyncio.run(main())


def test_a_failing_health_check_of_an_intact_interface_does_not_rerun_post_up(
    root: Path, kept: MemoryBackend
) -> None:
    """A transient error of the backend's check (a netlink hiccup, a slow
    wireguard-go socket) says nothing of a loss: the interface and what postUp
    set up on it are still there, and postUp does not run again."""

    async def main() -> None:
        d = _daemon(root)
        await d.start()
        try:
            await d.new_mesh(MeshOptions())
            await d._reconcile_pass()
            assert _ran(root) == ["preUp", "postUp"]

            def flaky(name: str) -> bool:
                raise OSError("cannot read: Resource temporarily unavailable")

            kept.check = flaky  # type: ignore[method-assign]
            await d._health_check()
            await d._reconcile_pass()
            assert _ran(root) == ["preUp", "postUp"]
        finally:
            await d.stop()

    asyncio.run(main())


def test_a_failing_re_apply_in_the_health_check_does_not_cost_another_interface_its_post_up(
    root: Path, kept: MemoryBackend
) -> None:
    """Two interfaces lost at once (wireguard-go killed): the second one's
    configuration fails. The first, created and configured again, still gets
    its postUp, and the second gets its own once an apply succeeds."""

    async def main() -> None:
        d = _daemon(root)
        await d.start()
        try:
            first = await d.new_mesh(MeshOptions())
            second = await d.new_mesh(MeshOptions())
            await d._reconcile_pass()
            assert _ran(root) == ["preUp", "postUp"] * 2
            ifnames = [d.meshes[m].ifname for m in (first, second)]
            assert d.reconciler.interfaces() == ifnames
            for name in ifnames:
                kept.lose(name)
            real = d.reconciler.apply

            def failing_second(iface: Any, host: Any) -> Any:
                if iface.name == ifnames[1]:
                    raise OSError("cannot apply: RTNETLINK answers: Device or resource busy")
                return real(iface, host)

            d.reconciler.apply = failing_second  # type: ignore[method-assign]
            await d._health_check()
            await d._reconcile_pass()  # the second still fails
            assert _ran(root) == ["preUp", "postUp"] * 2 + ["postUp"]
            d.reconciler.apply = real  # type: ignore[method-assign]
            await d._reconcile_pass()
            assert _ran(root) == ["preUp", "postUp"] * 2 + ["postUp"] * 2
            await d._health_check()  # healthy: nothing more
            await d._reconcile_pass()
            assert _ran(root) == ["preUp", "postUp"] * 2 + ["postUp"] * 2
        finally:
            await d.stop()

    asyncio.run(main())
