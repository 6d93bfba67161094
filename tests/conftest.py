"""Shared pytest fixtures.

Network-namespace fixtures (``netns_env``, ``testbed``) skip with the reason
when the machine cannot run them (not root, no netns, no wireguard-go).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hypo
from envcheck import missing
from smegmesh.testbed.loopback import short_tmpdir
from smegmesh.testbed.netns import Testbed, environment_problem

_netns_problem: list[str | None] = []


@pytest.fixture
def root() -> Iterator[Path]:
    """A daemon's directory under /tmp, short: a unix socket's path is limited to 107 bytes."""
    d = short_tmpdir("smt")
    yield d
    shutil.rmtree(d, ignore_errors=True)


#: Hypothesis: ``ci`` (today's counts) when ``CI=true``, else the fast ``dev`` profile.
HYPOTHESIS_PROFILE = hypo.load()


def _problem() -> str | None:
    if not _netns_problem:
        _netns_problem.append(environment_problem())
    return _netns_problem[0]


@pytest.fixture
def netns_env() -> None:
    """Skip unless root, network namespaces and wireguard-go are available."""
    problem = _problem()
    if problem is not None:
        missing(problem)


@pytest.fixture
def testbed(netns_env: None) -> Iterator[Testbed]:
    """A fresh :class:`Testbed` with a unique prefix, torn down even on failure."""
    with Testbed() as bed:
        yield bed


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    """One :class:`Testbed` for a whole module: its tests share it, each with daemons of its own."""
    problem = _problem()
    if problem is not None:
        missing(problem)
    with Testbed() as tb:
        yield tb


# --------------------------------------------------------------------------- markers by kind

#: Directory under ``tests/`` -> the marker every test in it carries.
_KIND_BY_DIR = {"netns": "netns", "proc": "proc"}
#: Fixtures that run a test in network namespaces (root, wireguard-go).
_NETNS_FIXTURES = frozenset({"netns_env", "testbed"})
_TESTS = Path(__file__).resolve().parent


def _kind(item: pytest.Item) -> str | None:
    try:
        rel = Path(str(item.path)).resolve().relative_to(_TESTS)
    except ValueError:
        return None
    return _KIND_BY_DIR.get(rel.parts[0]) if len(rel.parts) > 1 else None


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark a test by the directory it lives in: ``tests/netns`` and ``tests/proc``.

    ``tests/unit`` is pure and fast (no processes, no root): ``pytest tests/unit``
    is the inner loop. A test elsewhere that asks for a namespace fixture is
    marked ``netns`` too (a new file not yet moved to its directory).
    """
    kind = _kind(item)
    if kind is None and _NETNS_FIXTURES & set(getattr(item, "fixturenames", ())):
        kind = "netns"
    if kind is not None:
        item.add_marker(getattr(pytest.mark, kind))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With pytest-xdist: one worker runs every ``tests/netns`` (or ``*_netns.py``) test, serially.

    They share the host's nftables, wireguard-go and timing budget. Every other
    test is a work unit of its own (what ``--dist load`` does). The scope is
    taken from the test's path: ``--dist loadgroup`` cannot be used, its
    ``xdist_group`` marker rewrites ``item._nodeid``, which pytest 9 no longer
    reads.
    """
    from xdist.scheduler import LoadScopeScheduling

    class NetnsSerial(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            netns = nodeid.startswith("tests/netns/") or "_netns.py::" in nodeid
            return "netns" if netns else nodeid

    return NetnsSerial(config, log)
