#!/usr/bin/env bash
# Python websockets hub in the foreground (exec: $! is python's PID).
#   PORT (default 18083), PUB_PORT (HTTP publish + healthz, default PORT+100).  Needs: install.sh python.
set -euo pipefail
. "$(dirname "$0")/../env.sh"
export PORT="${PORT:-$PORT_PY_WEBSOCKETS}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$PEERS_STATE/venv/bin/python" "$PEERS_DIR/py-websockets/hub.py"
