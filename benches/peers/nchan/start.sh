#!/usr/bin/env bash
# nginx + nchan hub in the foreground (exec: $! of the caller is nginx's master PID; stop with kill).
#   PORT (default 18081), WORKERS (nginx worker_processes, default 1; 2 uses both cores).
#   Subscribe: ws://127.0.0.1:$PORT/api/monitoring/ws     Publish: POST http://127.0.0.1:$PORT/publish
# Needs: install.sh apt (nginx, libnginx-mod-nchan).
set -euo pipefail
. "$(dirname "$0")/../env.sh"
PORT="${PORT:-$PORT_NCHAN}"; WORKERS="${WORKERS:-1}"
P="$PEERS_STATE/nchan-$PORT"
mkdir -p "$P/tmp"
sed -e "s/@PORT@/$PORT/" -e "s/@WORKERS@/$WORKERS/" "$PEERS_DIR/nchan/nginx.conf" > "$P/nginx.conf"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec /usr/sbin/nginx -p "$P/" -e "$P/error.log" -c "$P/nginx.conf"
