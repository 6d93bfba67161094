#!/usr/bin/env bash
# Installs what smegmesh needs on a fresh Debian machine (idempotent, quiet when
# everything is already there): Debian packages, uv, and the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v wireguard-go >/dev/null || need_apt+=(wireguard-go)
command -v wg >/dev/null || need_apt+=(wireguard-tools)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v ping >/dev/null || need_apt+=(iputils-ping)
command -v nft >/dev/null || need_apt+=(nftables)
command -v dot >/dev/null || need_apt+=(graphviz)
command -v dig >/dev/null || need_apt+=(bind9-dnsutils)
command -v dnsperf >/dev/null || need_apt+=(dnsperf)
command -v curl >/dev/null || need_apt+=(curl)
# the dashboard's browser tests (tests/proc/test_ui_browser.py, tests/netns/test_ui_browser_netns.py) drive Debian's chromium
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# systemd-analyze verify checks packaging/systemd/smegd.service (tests/proc/test_packaging.py)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# the container image and its compose example (tests/netns/test_container_netns.py)
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v podman-compose >/dev/null || need_apt+=(podman-compose)
# uv is installed with pip, which a fresh Debian may lack (uv then fetches the
# Python the project needs by itself if the system's is too old).
if ! command -v uv >/dev/null && ! python3 -m pip --version >/dev/null 2>&1; then
  need_apt+=(python3 python3-pip ca-certificates)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages ${need_apt[*]}; run as root (or: sudo apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
  echo "bootstrap: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: wireguard-tools would otherwise pull a whole kernel image.
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v uv >/dev/null; then
  echo "bootstrap: installing uv" >&2
  python3 -m pip install -q --disable-pip-version-check uv 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages uv
  # pip puts it in ~/.local/bin when not root; that may not be on PATH yet
  command -v uv >/dev/null || export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --quiet --frozen
