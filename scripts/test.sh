#!/usr/bin/env bash
# Runs the whole agentbus test suite, installing first what the tests need:
# Python's `websockets` (the original system's clients are driven with it), Debian's
# Chromium with its WebDriver (the admin page is tested in a real browser), and Debian's
# redis-server (the Redis engine's tests start their own on free ports; no service is run).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

packages=()
[ -x /usr/bin/chromium ] || packages+=(chromium)
[ -x /usr/bin/chromedriver ] || packages+=(chromium-driver)
[ -x /usr/bin/redis-server ] || packages+=(redis-server)
if [ ${#packages[@]} -gt 0 ]; then
  log "installing ${packages[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  # The package may start a system-wide Redis on a systemd host; the tests need none.
  if [[ " ${packages[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null \
    && systemctl is-active --quiet redis-server 2>/dev/null; then
    sudo_if_needed systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
fi

if ! python3 -c 'import websockets' 2>/dev/null; then
  log "installing Python's websockets"
  python3 -m pip install --quiet websockets 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages websockets
fi

log "building"
cargo build --workspace --all-targets
log "testing"
cargo test --workspace
