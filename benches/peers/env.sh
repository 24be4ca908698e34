# Sourced by install.sh, smoke.sh and every start.sh.  The repo holds sources only; everything
# built, downloaded or written at run time goes under $PEERS_STATE (default /tmp/takhin-peers).
PEERS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS_STATE="${PEERS_STATE:-/tmp/takhin-peers}"
export PEERS_DIR PEERS_STATE
# Default loopback ports (override with PORT=... when starting a peer).
PORT_NCHAN=18081
PORT_NODE_WS=18082
PORT_PY_WEBSOCKETS=18083      # HTTP publish side port: PORT+100 = 18183
PORT_GO_GORILLA=18084
PORT_GO_GORILLA_PREPARED=18085
PORT_RUST_TUNGSTENITE=18086
WS_PATH=/api/monitoring/ws
