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
