"""The container image and a compose example, end to end (podman, wireguard-go).

Registries cannot be reached here, so the base image is a local Debian made
with ``debootstrap`` (kept in podman's image store between runs), the image is
built from the Containerfile with ``packaging/container/build-image.sh
--wheelhouse`` (no package index inside the build), and
``examples/three-peers`` runs under ``podman-compose`` inside a network
namespace of the test bed, so the containers' bridge and NAT rules never
touch the host's network. The mesh must form by itself (node1 creates it and
publishes an invitation on a shared volume, the others join) and every node
must ping every other over the overlay.

podman needs ``runc`` with the ``cgroupfs`` manager and no default ulimits
here (shared/testbed/NOTES.md); they are set through ``CONTAINERS_CONF``.
``nsenter --net`` (not ``ip netns exec``, which remounts /sys and hides the
cgroup mounts from runc) puts podman in the namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from envcheck import missing
from smegmesh.testbed.loopback import wait_until
from smegmesh.testbed.netns import Testbed

pytestmark = pytest.mark.netns
Completed = subprocess.CompletedProcess[str]

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/debian-local:bookworm"
IMAGE = "localhost/smegmesh:ci"
# Wheels of the dependencies, kept between runs (the image build needs no index).
CACHE = Path(os.environ.get("SMEG_IMAGE_CACHE", "/var/tmp/smegmesh-image-cache"))
TOOLS = ("podman", "runc", "debootstrap", "podman-compose", "nsenter")
INSTALL = "apt-get install -y --no-install-recommends podman runc debootstrap podman-compose"
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


def _run(cmd: list[str], env: dict[str, str], timeout: float = 600, **kw: Any) -> str:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    out = f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert r.returncode == 0, f"{' '.join(cmd)} -> {r.returncode}\n{out}"
    return r.stdout


@pytest.fixture(scope="module")
def podman_env() -> dict[str, str]:
    if os.geteuid() != 0:
        missing("needs root (rootful podman)")
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        missing(f"{', '.join(absent)} missing; install: {INSTALL}")
    pip = subprocess.run(["/usr/bin/python3", "-m", "pip", "--version"], capture_output=True)
    if pip.returncode != 0:
        missing("Debian's python3 has no pip (apt-get install python3-pip)")
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    # Debian's python3 builds the wheelhouse: the same release, so the same
    # Python (3.11) as the debootstrapped image.
    env = {**os.environ, "CONTAINERS_CONF": str(conf), "PYTHON": "/usr/bin/python3"}
    env.pop("VIRTUAL_ENV", None)
    return env


def _ensure_base_image(env: dict[str, str]) -> None:
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=env).returncode == 0:
        return
    mirror = "http://deb.debian.org/debian"
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                mirror = line.split()[1]
                break
    rootfs = CACHE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    try:
        _run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror], env, 900)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        _run(["podman", "import", "-", BASE_IMAGE], env, 600, stdin=tar.stdout)
        assert tar.wait(60) == 0
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


@pytest.fixture(scope="module")
def image(podman_env: dict[str, str]) -> str:
    t0 = time.monotonic()
    _ensure_base_image(podman_env)
    t1 = time.monotonic()
    context = CACHE / "context"
    context.mkdir(exist_ok=True)
    _run(
        [
            str(ROOT / "packaging" / "container" / "build-image.sh"),
            *("--wheelhouse", "--base", BASE_IMAGE, "--tag", IMAGE, "--context", str(context)),
            # RUN steps use the host's network directly: no bridge on the host.
            *("--", "--network", "host", "--quiet"),
        ],
        podman_env,
        1200,
    )
    t2 = time.monotonic()
    print(f"\nbase image {t1 - t0:.1f} s, image build {t2 - t1:.1f} s")
    return IMAGE


class Compose:
    """One podman-compose project run inside network namespace ``ns``."""

    def __init__(self, directory: Path, project: str, ns: str, env: dict[str, str]) -> None:
        self.dir = directory
        self.project = project
        self.ns = ns
        self.env = env

    def _in_ns(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns}", *argv]

    def compose(self, *args: str, timeout: float = 300) -> str:
        argv = self._in_ns("podman-compose", "-p", self.project, *args)
        return _run(argv, self.env, timeout, cwd=self.dir)

    def container(self, service: str) -> str:
        out = _run(
            [
                *("podman", "ps", "--format", "{{.Names}}"),
                *("--filter", f"label=com.docker.compose.project={self.project}"),
                *("--filter", f"label=com.docker.compose.service={service}"),
            ],
            self.env,
        ).split()
        assert len(out) == 1, (service, out)
        return out[0]

    def exec(self, service: str, *argv: str, timeout: float = 60) -> Completed:
        return subprocess.run(
            ["podman", "exec", self.container(service), *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def logs(self) -> str:
        out = []
        for c in _run(
            [
                *("podman", "ps", "-a", "--format", "{{.Names}}"),
                *("--filter", f"label=com.docker.compose.project={self.project}"),
            ],
            self.env,
        ).split():
            r = subprocess.run(["podman", "logs", c], env=self.env, capture_output=True, text=True)
            out.append(f"== {c}\n{(r.stdout + r.stderr)[-2500:]}")
        return "\n".join(out)

    def down(self) -> None:
        """Containers, volumes and the network of the project, also after a failure."""
        env = self.env
        subprocess.run(
            self._in_ns("podman-compose", "-p", self.project, "down", "-v"),
            env=env, cwd=self.dir, capture_output=True, timeout=300,
        )  # fmt: skip
        left = _run(
            ["podman", "ps", "-aq", "--filter", f"label=io.podman.compose.project={self.project}"],
            env,
        ).split()
        if left:
            subprocess.run(["podman", "rm", "-f", "-t", "5", *left], env=env, capture_output=True)
        vols = _run(["podman", "volume", "ls", "-q"], env).split()
        mine = [v for v in vols if v.startswith(f"{self.project}_")]
        if mine:
            subprocess.run(["podman", "volume", "rm", "-f", *mine], env=env, capture_output=True)
        subprocess.run(
            self._in_ns("podman", "network", "rm", "-f", f"{self.project}_default"),
            env=env, capture_output=True,
        )  # fmt: skip


def test_three_peers_compose_example_forms_a_mesh(
    testbed: Testbed, image: str, podman_env: dict[str, str]
) -> None:
    host = testbed.add_node()  # the namespace the containers' network lives in
    env = {**podman_env, "SMEG_IMAGE": image}
    proj = Compose(ROOT / "examples" / "three-peers", testbed.prefix, host.ns, env)
    services = ("node1", "node2", "node3")
    t0 = time.monotonic()
    try:
        proj.compose("up", "-d")
        t_up = time.monotonic()

        def mesh_of(service: str) -> dict[str, Any] | None:
            r = proj.exec(service, "smegctl", "list-meshes", "--json")
            if r.returncode != 0:
                return None
            meshes = json.loads(r.stdout)
            if len(meshes) != 1:
                return None
            r = proj.exec(
                service, "smegctl", "get-mesh", "--json", "--meshid", meshes[0]["mesh_id"]
            )
            return json.loads(r.stdout) if r.returncode == 0 else None

        def formed() -> dict[str, dict[str, Any]] | None:
            views = {s: mesh_of(s) for s in services}
            if any(v is None or len(v["nodes"]) != 3 for v in views.values()):
                return None
            return views  # type: ignore[return-value]

        try:
            views = wait_until(formed, 240, 2, "the three containers to form one mesh")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{proj.logs()}") from None
        t_formed = time.monotonic()
        assert len({v["mesh_id"] for v in views.values()}) == 1
        addrs = {
            s: next(n["overlay_address"] for n in v["nodes"] if n["public_key"] == v["self_key"])
            for s, v in views.items()
        }

        for src in services:
            for dst in services:
                if src == dst:
                    continue

                def ping(src: str = src, dst: str = dst) -> bool:
                    r = proj.exec(src, "ping", "-6", "-c", "1", "-W", "2", addrs[dst])
                    return r.returncode == 0

                try:
                    wait_until(ping, 120, 1, f"{src} to ping {dst} ({addrs[dst]}) over the overlay")
                except AssertionError as e:
                    raise AssertionError(f"{e}\n{proj.logs()}") from None
        t_pinged = time.monotonic()
        print(
            f"\ncompose up {t_up - t0:.1f} s, mesh formed {t_formed - t_up:.1f} s later, "
            f"all 6 overlay pings {t_pinged - t_formed:.1f} s later"
        )
    finally:
        t_down = time.monotonic()
        proj.down()
        print(f"compose down {time.monotonic() - t_down:.1f} s")
