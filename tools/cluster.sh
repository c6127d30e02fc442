#!/usr/bin/env bash
# Two plaza-server instances sharing rooms through one Redis, on loopback,
# behind the load balancer of deploy/balancer/nginx.conf: what
# docs/operations.md ("Several instances") describes, without Docker.
#
#   tools/cluster.sh SERVER_BINARY DIR [PORT_A PORT_B REDIS_PORT BALANCER_PORT]
#
# Starts redis-server, the two instances (one token secret, one SQLite file
# in DIR) and nginx, waits until all answer /ready, prints their URLs, and
# keeps them running until interrupted; then stops them all. Logs in DIR,
# and DIR/ready once all of them answer.
set -euo pipefail
server=${1:?usage: tools/cluster.sh SERVER_BINARY DIR [PORT_A PORT_B REDIS_PORT BALANCER_PORT]}
dir=${2:?usage: tools/cluster.sh SERVER_BINARY DIR [PORT_A PORT_B REDIS_PORT BALANCER_PORT]}
port_a=${3:-7878}
port_b=${4:-7879}
redis_port=${5:-6390}
balancer_port=${6:-7880}
for tool in redis-server nginx; do
  command -v "$tool" >/dev/null || { echo "cluster: $tool not found; run tools/setup.sh" >&2; exit 1; }
done
[ -x "$server" ] || { echo "cluster: $server is not an executable plaza-server" >&2; exit 1; }
mkdir -p "$dir"
# Made once everything answers, for scripts that start this in the
# background (tools/load-cluster.sh).
rm -f "$dir/ready"

pids=()
stop() {
  trap - EXIT INT TERM
  # SIGTERM: the instances drain (their leases given up), then exit.
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop EXIT INT TERM

redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no > "$dir/redis.log" 2>&1 &
redis=$!
pids+=($redis)
# Its own Redis, not one already on the port: wait until it listens.
until grep -q "Ready to accept connections" "$dir/redis.log" 2>/dev/null; do
  kill -0 "$redis" 2>/dev/null || { echo "cluster: redis-server didn't start on port $redis_port: $(tail -1 "$dir/redis.log")" >&2; exit 1; }
  sleep 0.1
done
export PLAZA_TOKEN_SECRET=${PLAZA_TOKEN_SECRET:-cluster-on-loopback-not-a-secret-0123456789}
for port in "$port_a" "$port_b"; do
  "$server" --bind "127.0.0.1:$port" --data-dir "$dir/data" --redis-url "redis://127.0.0.1:$redis_port" --drain-grace-s 1 > "$dir/server-$port.log" 2>&1 &
  pids+=($!)
done
# The balancer the docs describe, its upstreams swapped for these two.
conf=$(cd "$(dirname "$0")/.." && pwd)/deploy/balancer/nginx.conf
sed -e "s/plaza-server-1:7878/127.0.0.1:$port_a/" -e "s/plaza-server-2:7878/127.0.0.1:$port_b/" \
    -e "s/listen 7878;/listen 127.0.0.1:$balancer_port;/" "$conf" > "$dir/balancer.conf"
nginx -c "$dir/balancer.conf" -e "$dir/balancer.log" -g "daemon off; pid $dir/balancer.pid;" &
pids+=($!)
for port in "$port_a" "$port_b" "$balancer_port"; do
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/ready" >/dev/null && continue 2
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "cluster: a process exited while starting; see the logs in $dir" >&2; exit 1; }
    done
    sleep 0.1
  done
  echo "cluster: nothing ready on port $port after 10 s; see the logs in $dir" >&2
  exit 1
done
touch "$dir/ready"
echo "cluster: instances at http://127.0.0.1:$port_a and http://127.0.0.1:$port_b, Redis at redis://127.0.0.1:$redis_port, and the balancer in front at http://127.0.0.1:$balancer_port, which sends each room's members to one instance (logs in $dir)"
wait -n "${pids[@]}"
echo "cluster: a process exited; stopping the others" >&2
