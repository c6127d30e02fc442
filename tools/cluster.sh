#!/usr/bin/env bash
# Two plaza-server instances sharing rooms through one Redis, on loopback:
# what docs/operations.md ("Several instances") describes, without Docker.
#
#   tools/cluster.sh SERVER_BINARY DIR [PORT_A PORT_B REDIS_PORT]
#
# Starts redis-server and the two instances (one token secret, one SQLite
# file in DIR), waits until both answer /ready, prints their URLs, and
# keeps them running until interrupted; then stops all three. Logs in DIR.
set -euo pipefail
server=${1:?usage: tools/cluster.sh SERVER_BINARY DIR [PORT_A PORT_B REDIS_PORT]}
dir=${2:?usage: tools/cluster.sh SERVER_BINARY DIR [PORT_A PORT_B REDIS_PORT]}
port_a=${3:-7878}
port_b=${4:-7879}
redis_port=${5:-6390}
command -v redis-server >/dev/null || { echo "cluster: redis-server not found; run tools/setup.sh" >&2; exit 1; }
[ -x "$server" ] || { echo "cluster: $server is not an executable plaza-server" >&2; exit 1; }
mkdir -p "$dir"

pids=()
stop() {
  trap - EXIT INT TERM
  # SIGTERM: the instances drain (their leases given up), then exit.
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop EXIT INT TERM

redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no > "$dir/redis.log" 2>&1 &
pids+=($!)
export PLAZA_TOKEN_SECRET=${PLAZA_TOKEN_SECRET:-cluster-on-loopback-not-a-secret-0123456789}
for port in "$port_a" "$port_b"; do
  "$server" --bind "127.0.0.1:$port" --data-dir "$dir/data" --redis-url "redis://127.0.0.1:$redis_port" --drain-grace-s 1 > "$dir/server-$port.log" 2>&1 &
  pids+=($!)
done
for port in "$port_a" "$port_b"; do
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/ready" >/dev/null && continue 2
    sleep 0.1
  done
  echo "cluster: the instance on port $port isn't ready after 10 s; see $dir/server-$port.log" >&2
  exit 1
done
echo "cluster: instances at http://127.0.0.1:$port_a and http://127.0.0.1:$port_b, Redis at redis://127.0.0.1:$redis_port (logs in $dir)"
wait -n "${pids[@]}"
echo "cluster: a process exited; stopping the others" >&2
