#!/usr/bin/env bash
# Node ws hub in the foreground (exec: $! is node's PID).  PORT (default 18082),
# HUB_MODE=preframe|send (default preframe), MAX_BUFFERED.  Needs: install.sh node.
set -euo pipefail
. "$(dirname "$0")/../env.sh"
export PORT="${PORT:-$PORT_NODE_WS}"
export NODE_PATH="$PEERS_STATE/node/node_modules"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec node "$PEERS_DIR/node-ws/hub.js"
