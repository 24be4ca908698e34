#!/usr/bin/env bash
# tokio-tungstenite hub in the foreground (exec: $! is the hub's PID).
#   PORT (default 18086), CAP (broadcast capacity, 1024), WORKERS (tokio threads).  Needs: install.sh rust.
set -euo pipefail
. "$(dirname "$0")/../env.sh"
export PORT="${PORT:-$PORT_RUST_TUNGSTENITE}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$PEERS_STATE/bin/rust-tungstenite-hub"
