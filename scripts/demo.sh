#!/usr/bin/env bash
# The main demo: a real mesh of smegd daemons in network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export PATH="$PATH:$HOME/.local/bin"  # where pip puts uv for a non-root user
exec uv run --frozen python -m smegmesh.testbed.demo "$@"
