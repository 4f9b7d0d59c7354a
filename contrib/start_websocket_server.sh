#!/usr/bin/env bash
# Drop-in for the original start script: starts agentbus in the background on port 3030.
# Data, PID file and log live in $AGENTBUS_DATA (default ./data). Extra flags go to `agentbus start`.
set -euo pipefail
exec "${AGENTBUS_BIN:-agentbus}" start "$@"
