#!/usr/bin/env bash
# gorilla hub in the foreground (exec: $! is the hub's PID).  PORT (default 18084); extra
# arguments go to the binary (-prepared, -coalesce).  Needs: install.sh go.
#   go-gorilla/start.sh              classic hub, ws://127.0.0.1:18084/api/monitoring/ws
#   go-gorilla/start-prepared.sh     PreparedMessage variant on 18085
set -euo pipefail
. "$(dirname "$0")/../env.sh"
PORT="${PORT:-$PORT_GO_GORILLA}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$PEERS_STATE/bin/go-gorilla-hub" -addr "127.0.0.1:$PORT" "$@"
