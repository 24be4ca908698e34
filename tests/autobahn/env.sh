# Sourced by install.sh, wstest.sh and run.sh. Everything downloaded or written goes under
# $AUTOBAHN_STATE (default /tmp/takhin-autobahn); the repo holds only these scripts and the
# expected results.
AUTOBAHN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
AUTOBAHN_STATE="${AUTOBAHN_STATE:-/tmp/takhin-autobahn}"
export AUTOBAHN_DIR AUTOBAHN_STATE
