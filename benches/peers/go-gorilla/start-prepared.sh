#!/usr/bin/env bash
# gorilla hub, websocket.PreparedMessage variant (same binary with -prepared).  PORT (default 18085).
set -euo pipefail
. "$(dirname "$0")/../env.sh"
export PORT="${PORT:-$PORT_GO_GORILLA_PREPARED}"
exec "$PEERS_DIR/go-gorilla/start.sh" -prepared "$@"
