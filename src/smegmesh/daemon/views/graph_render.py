"""Rendering a graph's DOT source with Graphviz (``dot -Tsvg`` / ``-Tpng``), bounded in time."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

from smegmesh.daemon.api_models import GraphFormat
from smegmesh.daemon.service import ServiceError, invalid_argument, unavailable

__all__ = ["RENDER_TIMEOUT_S", "render_graph", "render_graph_async"]

#: Seconds Graphviz may take to lay out a graph before we give up.
RENDER_TIMEOUT_S = 30.0


def _dot_args(fmt: str) -> list[str]:
    if fmt not in ("svg", "png"):
        raise invalid_argument(f"format: must be dot, svg or png (got {fmt!r})")
    exe = shutil.which("dot")
    if exe is None:
        raise unavailable("graphviz is not installed: apt-get install graphviz")
    return [exe, f"-T{fmt}"]


def _render_failed(rc: int, err: bytes) -> ServiceError:
    lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
    return unavailable(f"graphviz failed (exit {rc}): {lines[0] if lines else 'no message'}")


def render_graph(dot: str, fmt: GraphFormat, *, timeout: float = RENDER_TIMEOUT_S) -> bytes:
    """``dot`` itself, or Graphviz's SVG/PNG rendering of it (``dot -T<fmt>``).

    Blocking; from the event loop use :func:`render_graph_async`. Raises
    ``unavailable`` when Graphviz is missing, fails or takes over ``timeout``.
    """
    if fmt == "dot":
        return dot.encode()
    args = _dot_args(fmt)
    try:
        proc = subprocess.run(args, input=dot.encode(), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise unavailable(f"graphviz took more than {timeout:g} s to draw the graph") from None
    except OSError as e:
        raise unavailable(f"cannot run graphviz: {e}") from None
    if proc.returncode != 0:
        raise _render_failed(proc.returncode, proc.stderr)
    return proc.stdout


async def render_graph_async(
    dot: str, fmt: GraphFormat, *, timeout: float = RENDER_TIMEOUT_S
) -> bytes:
    """:func:`render_graph` without blocking the event loop (Graphviz is killed on timeout)."""
    if fmt == "dot":
        return dot.encode()
    args = _dot_args(fmt)
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        raise unavailable(f"cannot run graphviz: {e}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(dot.encode()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise unavailable(f"graphviz took more than {timeout:g} s to draw the graph") from None
    if proc.returncode != 0:
        raise _render_failed(proc.returncode or 0, err)
    return out
