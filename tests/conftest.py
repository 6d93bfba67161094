"""Shared pytest fixtures.

Network-namespace fixtures (``netns_env``, ``testbed``) skip with the reason
when the machine cannot run them (not root, no netns, no wireguard-go).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from envcheck import missing
from smegmesh.testbed.netns import Testbed, environment_problem

_netns_problem: list[str | None] = []


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


# --------------------------------------------------------------------------- markers by kind

#: Fixtures that run a test in network namespaces (root, wireguard-go).
_NETNS_FIXTURES = frozenset({"netns_env", "testbed"})
#: What a module imports from ``daemon_helpers`` to start real daemons on loopback.
_PROC_STARTERS = frozenset({"Smegd", "Cluster", "cluster"})
#: Names a test function uses to run ``smegd``/``smegctl`` as processes
#: (``executable``: ``sys.executable``).
_PROC_CALLS = frozenset({"subprocess", "executable", "smegctl_proc", "_smegd"})


def _imports_from(module: object, names: frozenset[str], source: str) -> bool:
    return any(getattr(getattr(module, n, None), "__module__", None) == source for n in names)


def _runs_processes(item: pytest.Item) -> bool:
    code = getattr(getattr(item, "function", None), "__code__", None)
    return code is not None and bool(_PROC_CALLS & set(code.co_names))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by kind, so ``-m "not netns and not proc"`` is the fast unit loop.

    ``netns``: uses a namespace fixture (the files that build a ``Testbed``
    themselves carry ``pytestmark = pytest.mark.netns``). ``proc`` (unless
    ``netns``): in a module that starts real ``smegd`` daemons on loopback
    (``daemon_helpers``), a ``packaging`` test, or a test that runs
    ``smegd``/``smegctl`` as a subprocess itself.
    """
    for item in items:
        module = getattr(item, "module", None)
        if _NETNS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.netns)
        elif item.get_closest_marker("netns") is None and (
            _imports_from(module, _PROC_STARTERS, "daemon_helpers")
            or item.get_closest_marker("packaging") is not None
            or _runs_processes(item)
        ):
            item.add_marker(pytest.mark.proc)
