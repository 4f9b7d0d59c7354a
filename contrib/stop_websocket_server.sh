#!/usr/bin/env bash
# Drop-in for the original stop script: stops the background agentbus gracefully.
set -euo pipefail
exec "${AGENTBUS_BIN:-agentbus}" stop "$@"
