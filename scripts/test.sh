#!/usr/bin/env bash
# The one test command: installs what is missing, then lint, type-check, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export PATH="$PATH:$HOME/.local/bin"  # where pip puts uv for a non-root user
echo "== ruff"; uv run --frozen ruff check src tests bench
echo "== ruff format --check"; uv run --frozen ruff format --check src tests bench
echo "== mypy"; uv run --frozen mypy
echo "== import contracts"; uv run --frozen lint-imports --no-logo
echo "== sizes (files <= 500 lines, functions <= 80)"; uv run --frozen python scripts/check_sizes.py
# Tests in parallel (pytest-xdist): SMEG_TEST_WORKERS processes (2: the
# namespace tests on one, everything else on the other; more flake under load);
# every tests/netns test runs on one of them, serially (the scheduler in
# tests/conftest.py). SMEG_TEST_WORKERS=0: no xdist, one process. Property tests
# run the full counts of the hypothesis profile "ci" (tests/hypo.py; a bare
# `pytest` uses the faster "dev" profile unless CI=true).
echo "== pytest"
uv run --frozen pytest -q -p no:cacheprovider --durations=25 \
  --hypothesis-profile=ci -n "${SMEG_TEST_WORKERS:-2}" "$@"
