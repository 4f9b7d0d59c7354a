#!/usr/bin/env bash
# Runs the whole agentbus test suite, installing first what the tests need:
# Python's `websockets` (the original system's clients are driven with it).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

if ! python3 -c 'import websockets' 2>/dev/null; then
  log "installing Python's websockets"
  python3 -m pip install --quiet websockets 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages websockets
fi

log "building"
cargo build --workspace --all-targets
log "testing"
cargo test --workspace
