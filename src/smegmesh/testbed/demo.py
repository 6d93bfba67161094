"""The demo: a real mesh of ``smegd`` daemons in network namespaces (``scripts/demo.sh``).

Brings up peers on a shared underlay and clients behind a NAT66 router, one
``smegd`` (with wireguard-go) per node; creates a mesh on the first peer,
invites the others with one token and has them join; prints
``smegctl get-mesh``, a full overlay ping matrix and ``smegctl status``; then waits for Enter
(or Ctrl-C; ``--no-wait`` for CI) and removes everything it created.

    python -m smegmesh.testbed.demo [--peers 3] [--clients 1] [--no-wait]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from types import FrameType

from rich.console import Console
from rich.table import Table

from smegmesh.testbed.cluster import Cluster, Daemon, Timings
from smegmesh.testbed.netns import Testbed, environment_problem, unique_prefix

console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def _step(msg: str) -> None:
    console.print(f"[bold cyan]==>[/bold cyan] {msg}")


def _ok(msg: str) -> None:
    console.print(f"    [green]✓[/green] {msg}")


def _sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _ctl_shown(d: Daemon, *args: str) -> str:
    """Show ``smegctl`` as the user would type it in that node's namespace."""
    return f"[dim]({d.name})$ smegctl {' '.join(args)}[/dim]"


def _show_get_mesh(d: Daemon, mesh_id: str) -> None:
    console.print(_ctl_shown(d, "get-mesh", "--meshid", mesh_id))
    argv = [sys.executable, "-m", "smegmesh.cli.main", "--socket", d.socket]
    argv += ["get-mesh", "--meshid", mesh_id]
    if sys.stdout.isatty():
        sys.stdout.flush()
        subprocess.run(argv, check=False, timeout=60)  # straight to the terminal: rich colours
    else:
        out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
        sys.stdout.write(out.stdout + out.stderr)
        sys.stdout.flush()


def _show_status(d: Daemon) -> None:
    """``smegctl status`` of ``d``: meshes, members, the path to each, handshakes, traffic."""
    console.print(_ctl_shown(d, "status"))
    argv = [sys.executable, "-m", "smegmesh.cli.main", "--socket", d.socket, "status"]
    if sys.stdout.isatty():
        sys.stdout.flush()
        subprocess.run(argv, check=False, timeout=60)
    else:
        out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
        sys.stdout.write(out.stdout + out.stderr)
        sys.stdout.flush()


def _matrix_table(
    names: list[str],
    roles: dict[str, str],
    rtts: dict[tuple[str, str], float | None],
) -> Table:
    t = Table(title="overlay ping RTT (ms), row = from, column = to", header_style="bold")
    t.add_column("from \\ to", style="bold")
    for n in names:
        t.add_column(n, justify="right")
    for s in names:
        row = []
        for d in names:
            if s == d:
                row.append("[dim]·[/dim]")
                continue
            v = rtts.get((s, d))
            row.append("[red]✗[/red]" if v is None else f"[green]{v:.2f}[/green]")
        t.add_row(f"{s} ({roles[s]})", *row)
    return t


def run(peers: int, clients: int, wait: bool) -> int:
    problem = environment_problem()
    if problem is not None:
        console.print(f"[red]demo: cannot run here: {problem}[/red]")
        return 1
    t_start = time.monotonic()
    prefix = unique_prefix("smd")
    with Testbed(prefix) as bed, Cluster(bed, Timings(log_level="info")) as cluster:
        _step(
            f"test bed [bold]{prefix}[/bold]: {peers} peers on {bed.public_net}, "
            f"{clients} client(s) behind a NAT66 router on {bed.private_net}"
        )
        try:
            rc = _demo(cluster, peers, clients, wait, t_start)
        except (TimeoutError, RuntimeError):
            console.print("[red]daemon logs (tail):[/red]\n" + cluster.logs(), markup=False)
            raise
        finally:
            _step("tearing down (daemons, wireguard-go, namespaces)")
    _ok(f"removed test bed {prefix}")
    return rc


def _demo(cluster: Cluster, peers: int, clients: int, wait: bool, t_start: float) -> int:
    ps = cluster.add_many(peers, "peer")
    cs = cluster.add_many(clients, "client") if clients else []
    for d in cluster.daemons:
        _ok(
            f"{d.name:<8} netns {d.node.ns:<10} underlay {d.node.address:<22} "
            f"smegd pid {d.pid}" + ("  (behind NAT)" if d.node.nat else "")
        )

    first = ps[0]
    _step("create a mesh on " + first.name)
    console.print(_ctl_shown(first, "new-mesh"))
    mesh_id = cluster.new_mesh(first)
    _ok(f"mesh id [bold]{mesh_id}[/bold]")

    others = [*ps[1:], *cs]
    _step(f"invite {len(others)} nodes with one token")
    console.print(_ctl_shown(first, "invite", "--meshid", mesh_id, "--uses", str(len(others))))
    token = cluster.invite(first, mesh_id, uses=len(others))
    _ok(f"token {token[:40]}… ({len(token)} chars)")

    _step("every other node joins with the token")
    t0 = time.monotonic()

    def join(d: Daemon) -> None:
        cluster.join(d, token)
        console.print(
            f"    [green]✓[/green] {d.name} joined ({time.monotonic() - t0:.1f}s)"
            f"  [dim]smegctl join-mesh --token …[/dim]"
        )

    cluster.map(join, others)

    _step("waiting for every node to see every other (gossip)")
    keys = cluster.keys(mesh_id)
    cluster.wait_members(mesh_id, cluster.daemons, set(keys.values()), timeout=60)
    _ok(f"all {len(cluster.daemons)} nodes agree on the membership")

    _step("waiting for WireGuard handshakes (first ping of every pair)")
    cluster.wait_full_connectivity(mesh_id, timeout=60)
    _ok("every node reaches every other over the overlay")

    console.print()
    _show_get_mesh(first, mesh_id)
    console.print()

    _step("ping matrix over the overlay (ping -6, 3 probes per pair)")
    rtts = cluster.ping_matrix(mesh_id, count=3, timeout=1)
    names = [d.name for d in cluster.daemons]
    roles = {d.name: d.role for d in cluster.daemons}
    console.print(_matrix_table(names, roles, rtts))
    fails = [k for k, v in rtts.items() if v is None]
    if cs:
        console.print(
            "    [dim]clients have one WireGuard peer (their assigned peer) and reach "
            "everyone through it[/dim]"
        )
    console.print(
        f"[bold]{len(rtts) - len(fails)}/{len(rtts)} pairs answered[/bold] "
        f"(set up in {time.monotonic() - t_start:.1f}s)"
    )
    console.print()
    _show_status(cs[0] if cs else first)  # a client's view: who is reached through whom

    if wait:
        console.print(
            f"\nThe mesh stays up. Try: [bold]ip netns exec {ps[0].node.ns} ping -6 "
            f"{cluster.addresses(mesh_id, [ps[-1]])[ps[-1].name]}[/bold]\n"
            f"or: [bold]uv run smegctl --socket {ps[0].socket} get-mesh --meshid "
            f"{mesh_id}[/bold]"
        )
        console.print("[bold]Press Enter (or Ctrl-C) to tear everything down.[/bold]")
        with contextlib.suppress(EOFError):
            input()
    return 0 if not fails else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m smegmesh.testbed.demo",
        description="A real smegmesh mesh in network namespaces: peers, NATed clients, "
        "one smegd each, WireGuard by wireguard-go.",
    )
    p.add_argument("--peers", type=int, default=3, help="number of peers (>= 1, default 3)")
    p.add_argument("--clients", type=int, default=1, help="clients behind NAT (default 1)")
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="do not wait for Enter before tearing down (CI); implied when stdin is no tty",
    )
    args = p.parse_args(argv)
    if args.peers < 1 or args.clients < 0 or args.peers + args.clients > 40:
        p.error("need 1 <= peers, 0 <= clients, peers + clients <= 40")
    signal.signal(signal.SIGTERM, _sigterm)
    wait = not args.no_wait and sys.stdin.isatty()
    try:
        return run(args.peers, args.clients, wait)
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted: everything was torn down[/yellow]")
        return 130
    except (TimeoutError, RuntimeError) as e:
        console.print(f"[red]demo failed: {e}[/red]")
        return 1


if __name__ == "__main__":
    sys.exit(main())
