"""Hypothesis profiles: a fast inner loop by default, today's full counts in CI.

``tests/conftest.py`` loads ``ci`` when ``CI=true`` (GitHub Actions sets it),
else ``dev``; ``pytest --hypothesis-profile=ci`` chooses one explicitly. A
property test states its CI example count through :func:`examples`, which
scales it to the profile loaded (a count fixed in ``@settings`` would override
any profile). No profile has a wall-clock ``deadline``: a loaded CI machine
must not fail a property for being slow.
"""

from __future__ import annotations

import os

from hypothesis import settings

__all__ = ["CI_EXAMPLES", "DEV_EXAMPLES", "examples", "load"]

#: ``max_examples`` of the profiles (tests scale their own counts by their ratio)
CI_EXAMPLES = 100
DEV_EXAMPLES = 20
#: never fewer examples than this, in any profile
MIN_EXAMPLES = 5

settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=DEV_EXAMPLES, deadline=None)


def load() -> str:
    """Load ``ci`` under ``CI=true``, else ``dev``; returns the profile's name."""
    name = "ci" if os.environ.get("CI", "").lower() == "true" else "dev"
    settings.load_profile(name)
    return name


def examples(ci_count: int) -> int:
    """``ci_count`` under the ``ci`` profile, scaled down in proportion under ``dev``."""
    scaled = ci_count * settings().max_examples // CI_EXAMPLES
    return max(min(MIN_EXAMPLES, ci_count), scaled)
