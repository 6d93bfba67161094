#!/usr/bin/env bash
# Builds the smegd container image from this checkout. In the build context
# (the checkout, or --context DIR):
#   dist/smegmesh-*.whl      the project's wheel (uv build)
#   dist/requirements.txt    its dependencies, pinned by uv.lock (uv export)
#   dist/deps/               with --wheelhouse: wheels of every dependency, so
#                            the image build needs no package index
# then `$ENGINE build` of the Containerfile at the top of the checkout.
#
# Usage: packaging/container/build-image.sh [--wheelhouse] [--base IMAGE]
#            [--tag TAG] [--context DIR] [-- ENGINE-BUILD-ARGS...]
# PYTHON (default python3, with pip; its version must be the image's,
# IMAGE_PYTHON, default 3.11) builds the wheelhouse.
# ENGINE defaults to podman (else docker); it may carry options, e.g.
#   ENGINE="podman --runtime runc --cgroup-manager cgroupfs"
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
tag=localhost/smegmesh:latest base="" wheelhouse=0 context="$repo"
while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse) wheelhouse=1 ;;
    --base) base="$2"; shift ;;
    --tag) tag="$2"; shift ;;
    --context) context="$2"; shift ;;
    --) shift; break ;;
    *) echo "usage: $0 [--wheelhouse] [--base IMAGE] [--tag TAG] [--context DIR] [-- ARGS]" >&2
       exit 2 ;;
  esac
  shift
done
if [ -z "${ENGINE:-}" ]; then
  if command -v podman >/dev/null; then ENGINE=podman; else ENGINE=docker; fi
fi
dist="$context/dist"
mkdir -p "$dist/deps"
rm -f "$dist"/smegmesh-*.whl
(cd "$repo" && uv build --quiet --wheel --out-dir "$dist" \
  && uv export --quiet --frozen --no-dev --no-emit-project --no-hashes -o "$dist/requirements.txt")
args=()
if [ "$wheelhouse" = 1 ]; then
  # pip (not uv): it builds wheels of sdist-only dependencies too. The image's
  # Python must match this one (Debian bookworm: 3.11 on both sides).
  # Binary wheels must fit the image's Python (Debian bookworm: 3.11).
  py="${PYTHON:-python3}" want="${IMAGE_PYTHON:-3.11}"
  have="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [ "$have" != "$want" ]; then
    echo "$0: $py is Python $have, the image's is $want: set PYTHON (or IMAGE_PYTHON)" >&2
    exit 2
  fi
  # Kept between builds: redone only when the pinned requirements change.
  if ! cmp -s "$dist/requirements.txt" "$dist/deps/.requirements.txt"; then
    "$py" -m pip wheel --quiet --disable-pip-version-check \
      -r "$dist/requirements.txt" -w "$dist/deps"
    cp "$dist/requirements.txt" "$dist/deps/.requirements.txt"
  fi
  args+=(--build-arg PIP_NO_INDEX=1)
fi
if [ -n "$base" ]; then args+=(--build-arg "BASE=$base"); fi
# shellcheck disable=SC2086  # ENGINE may carry options
$ENGINE build "${args[@]}" "$@" -t "$tag" -f "$repo/Containerfile" "$context"
echo "built $tag"
