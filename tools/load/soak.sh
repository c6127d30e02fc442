#!/usr/bin/env bash
# `make soak`: a Plaza server in its own process (its memory must be its own),
# then `plaza-load soak` against it: a long steady load, RSS drift, and the
# server back to idle after (no connections, no leaked tasks).
#
# usage: tools/load/soak.sh BIN_DIR OUT_DIR [plaza-load soak flags…]
set -euo pipefail
bin="$1"
out="$2"
shift 2
port="${SOAK_PORT:-7931}"
mkdir -p "$out"
data="$(mktemp -d)"
"$bin/plaza-server" --dev --data-dir "$data" --bind "127.0.0.1:$port" --log-format json >"$out/server.log" 2>&1 &
server=$!
cleanup() {
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
# plaza-load waits (bounded) for /health itself.
"$bin/plaza-load" soak --server "http://127.0.0.1:$port" --out "$out" "$@"
