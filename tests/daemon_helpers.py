"""Moved: the loopback daemon harness is :mod:`smegmesh.testbed.loopback`.

Kept as an alias for tests written against the old location (a branch merged
later); new tests import ``smegmesh.testbed.loopback``.
"""

from smegmesh.testbed.loopback import *  # noqa: F403
from smegmesh.testbed.loopback import __all__ as __all__
