"""Real ``smegd`` daemons on a namespace test bed: shared by the e2e tests, the demo and benches.

One :class:`Daemon` per :class:`~smegmesh.testbed.netns.Node`: its config YAML
(userspace WireGuard with a private UAPI socket dir, its own state dir and
control socket, short timings), its process, its log. :class:`Cluster` adds
nodes (peers on the public bridge, clients behind the NAT66 router), forms
meshes through the real CLI (``smegctl new-mesh`` / ``invite`` / ``join-mesh``)
and offers the checks the tests need (overlay pings, WireGuard peers read over
the UAPI socket, convergence waits). Every wait has a deadline
(:func:`~smegmesh.testbed.wait.wait_until`); nothing sleeps a fixed time.
The daemon wrapper is :class:`~smegmesh.testbed.daemon.Daemon`.

The control sockets live on the shared filesystem, so ``smegctl`` and the
in-process API helper (:meth:`Daemon.api`, used for fast polling) run outside
the namespaces. Only pings and the daemons themselves run inside.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# the daemon wrapper lives in .daemon; re-exported here, where the tests import it
from smegmesh.testbed.daemon import GRPC_PORT, CtlError, Daemon, Timings, with_logs
from smegmesh.testbed.netns import Node, Testbed
from smegmesh.testbed.wait import wait_until

__all__ = ["GRPC_PORT", "Cluster", "CtlError", "Daemon", "Timings", "ping_rtt"]


class Cluster:
    """Daemons on a :class:`Testbed`; see module docstring. Use as a context manager."""

    def __init__(self, bed: Testbed, timings: Timings | None = None) -> None:
        self.bed = bed
        self.timings = timings or Timings()
        self.daemons: list[Daemon] = []
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="cluster")

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # ---------------------------------------------------------------- nodes
    #: The daemon wrapper ``add`` creates (a subclass may change the config it writes).
    daemon_type: type[Daemon] = Daemon

    def add(self, role: str = "peer", start: bool = True, nat: bool | None = None) -> Daemon:
        """A daemon of ``role`` on a node of its own, behind a NAT if ``nat`` (default: clients)."""
        node = self.bed.add_node(nat=role == "client" if nat is None else nat)
        d = self.daemon_type(node, role, self.timings)
        self.daemons.append(d)
        if start:
            d.start()
        return d

    def add_many(self, n: int, role: str = "peer") -> list[Daemon]:
        """``n`` daemons, started in parallel."""
        ds = [self.add(role, start=False) for _ in range(n)]
        self.start(*ds)
        return ds

    def add_named(self, names: str, role: str = "peer") -> list[Daemon]:
        """A daemon of ``role`` for each of the space-separated ``names``, not started
        (configure them, then :meth:`start` them together)."""
        ds = []
        for name in names.split():
            d = self.add(role, start=False)
            d.name = name
            ds.append(d)
        return ds

    def start(self, *daemons: Daemon, timeout: float = 60.0) -> None:
        """Start ``daemons`` at once and wait until each is ready."""
        for d in daemons:
            d.start(wait=False)
        self.map(lambda d: d.wait_ready(timeout), daemons)

    @property
    def peers(self) -> list[Daemon]:
        return [d for d in self.daemons if d.role == "peer"]

    @property
    def clients(self) -> list[Daemon]:
        return [d for d in self.daemons if d.role == "client"]

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """``fn`` over ``items`` in parallel threads; exceptions propagate."""
        return list(self._pool.map(fn, list(items)))

    # ---------------------------------------------------------------- meshes
    def new_mesh(self, d: Daemon, *args: str) -> str:
        return str(d.ctl("new-mesh", *args)["mesh_id"])

    def invite(self, d: Daemon, mesh_id: str, uses: int = 1, ttl: str = "1h") -> str:
        res = d.ctl("invite", "--meshid", mesh_id, "--uses", str(uses), "--ttl", ttl)
        return str(res["token"])

    def join(self, d: Daemon, token: str, *args: str) -> str:
        return str(d.ctl("join-mesh", "--token", token, *args)["mesh_id"])

    def form_mesh(
        self, members: Sequence[Daemon] | None = None, parallel: bool = True
    ) -> tuple[str, dict[str, float]]:
        """First peer creates a mesh, invites everybody else with one token, all join.

        Returns (mesh id, per-daemon join-mesh wall time in seconds).
        """
        members = list(members if members is not None else self.daemons)
        first = members[0]
        mesh_id = self.new_mesh(first)
        others = members[1:]
        times: dict[str, float] = {}
        if not others:
            return mesh_id, times
        token = self.invite(first, mesh_id, uses=len(others))

        def join(d: Daemon) -> None:
            t0 = time.monotonic()
            self.join(d, token)
            times[d.name] = time.monotonic() - t0

        if parallel:
            self.map(join, others)
        else:
            for d in others:
                join(d)
        return mesh_id, times

    # ---------------------------------------------------------------- checks
    def addresses(self, mesh_id: str, members: Sequence[Daemon] | None = None) -> dict[str, str]:
        """name -> overlay address, as each daemon reports its own."""
        out = {}
        for d in members if members is not None else self.daemons:
            a = d.overlay_address(mesh_id)
            if a is None:
                raise RuntimeError(f"{d.name} is not in mesh {mesh_id}")
            out[d.name] = a
        return out

    def keys(self, mesh_id: str, members: Sequence[Daemon] | None = None) -> dict[str, str]:
        out = {}
        for d in members if members is not None else self.daemons:
            m = d.get_mesh(mesh_id)
            if m is None:
                raise RuntimeError(f"{d.name} is not in mesh {mesh_id}")
            out[d.name] = str(m["self_key"])
        return out

    def live_keys(self, d: Daemon, mesh_id: str) -> set[str] | None:
        m = d.get_mesh(mesh_id)
        if m is None:
            return None
        return {n["public_key"] for n in m["nodes"]}

    def wait_members(
        self, mesh_id: str, members: Sequence[Daemon], expect: set[str], timeout: float = 30.0
    ) -> None:
        """Every daemon in ``members`` sees exactly the keys ``expect`` as live."""

        def ok() -> bool:
            return all(self.live_keys(d, mesh_id) == expect for d in members)

        wait_until(ok, timeout=timeout, interval=0.2, what=f"membership {len(expect)} converged")

    def ping_matrix(
        self,
        mesh_id: str,
        members: Sequence[Daemon] | None = None,
        count: int = 1,
        timeout: int = 1,
    ) -> dict[tuple[str, str], float | None]:
        """(src, dst) -> RTT in ms (None = no answer) for every ordered pair, in parallel."""
        members = list(members if members is not None else self.daemons)
        addrs = self.addresses(mesh_id, members)
        pairs = [(s, t) for s in members for t in members if s is not t]

        def one(pair: tuple[Daemon, Daemon]) -> tuple[tuple[str, str], float | None]:
            s, t = pair
            return (s.name, t.name), ping_rtt(s.node, addrs[t.name], count, timeout)

        return dict(self.map(one, pairs))

    def wait_full_connectivity(
        self, mesh_id: str, members: Sequence[Daemon] | None = None, timeout: float = 30.0
    ) -> dict[tuple[str, str], float | None]:
        """Retry the ping matrix (only the failing pairs) until every pair answers."""
        members = list(members if members is not None else self.daemons)
        addrs = self.addresses(mesh_id, members)
        todo = [(s, t) for s in members for t in members if s is not t]
        result: dict[tuple[str, str], float | None] = {}

        def one(pair: tuple[Daemon, Daemon]) -> tuple[tuple[str, str], float | None]:
            s, t = pair
            return (s.name, t.name), ping_rtt(s.node, addrs[t.name], 1, 1)

        def step() -> bool:
            nonlocal todo
            got = dict(self.map(one, todo))
            result.update(got)
            todo = [(s, t) for s, t in todo if got[(s.name, t.name)] is None]
            return not todo

        try:
            wait_until(step, timeout=timeout, interval=0.1, what="full overlay connectivity")
        except TimeoutError as e:
            missing = ", ".join(f"{s.name}->{t.name}" for s, t in todo)
            raise TimeoutError(f"{e}; unreachable: {missing}") from None
        return result

    def logs(self) -> str:
        return "\n".join(d.log_tail(60) for d in self.daemons)

    @contextlib.contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        """An error leaving the block carries every daemon's last log lines
        (:func:`~smegmesh.testbed.daemon.with_logs`: those it carries already
        are not added again, as after :meth:`wait_for`)."""
        try:
            yield
        except BaseException as e:
            with_logs(e, self.daemons)
            raise

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2
    ) -> float:
        """``wait_until`` ``predicate``; the seconds it took. On a timeout the
        ``TimeoutError`` carries every daemon's last log lines."""
        t0 = time.monotonic()
        try:
            wait_until(predicate, timeout=timeout, interval=interval, what=what)
        except TimeoutError as e:
            raise with_logs(TimeoutError(str(e)), self.daemons) from None
        return time.monotonic() - t0

    # --------------------------------------------------------------- teardown
    def teardown(self) -> None:
        """Stop every daemon (SIGTERM, then SIGKILL); the test bed removes the rest."""
        alive = [d for d in self.daemons if d.alive()]
        for d in alive:
            assert d.proc is not None
            with contextlib.suppress(ProcessLookupError):
                d.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for d in alive:
            assert d.proc is not None
            try:
                d.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                d.kill()
            d.close_http()
        self._pool.shutdown(wait=False, cancel_futures=True)


def ping_rtt(node: Node, address: str, count: int = 1, timeout: int = 1) -> float | None:
    """RTT in ms of ``ping -6`` from ``node`` to ``address`` (None if no answer)."""
    proc = node.run(
        ["ping", "-6", "-n", "-c", str(count), "-W", str(timeout), address],
        check=False,
        timeout=count * timeout + 5,
    )
    if proc.returncode != 0:
        return None
    for line in proc.stdout.splitlines():
        if "min/avg/max" in line:
            with contextlib.suppress(IndexError, ValueError):
                return float(line.split("=")[1].split("/")[1])
    return 0.0
