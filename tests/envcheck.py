"""Skips for missing machine features, which CI must never take.

CI (``CI=true``, set by the CI runner) installs everything the tests need
(`scripts/bootstrap.sh`); there a missing feature is a failure, not a skip,
so a broken install cannot hide behind skipped tests.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IN_CI = bool(os.environ.get("CI"))


def missing(reason: str) -> NoReturn:
    """Skip locally; fail in CI, which is expected to provide the feature."""
    if IN_CI:
        pytest.fail(f"CI should provide this, but: {reason}", pytrace=False)
    pytest.skip(reason)
