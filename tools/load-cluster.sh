#!/usr/bin/env bash
# The relay's cost under load: tools/cluster.sh's two instances, and
# plaza-load with every other member of each room at the second instance
# (relayed to the room's). Result in OUT (result.json, report.html).
#
#   tools/load-cluster.sh SERVER_BINARY LOAD_BINARY OUT [plaza-load run flags]
set -euo pipefail
server=${1:?usage: tools/load-cluster.sh SERVER_BINARY LOAD_BINARY OUT [flags]}
load=${2:?usage: tools/load-cluster.sh SERVER_BINARY LOAD_BINARY OUT [flags]}
out=${3:?usage: tools/load-cluster.sh SERVER_BINARY LOAD_BINARY OUT [flags]}
shift 3
ports=(7941 7942 6394)
mkdir -p "$out"
bash "$(dirname "$0")/cluster.sh" "$server" "$out/cluster" "${ports[@]}" &
cluster=$!
trap 'kill $cluster 2>/dev/null; wait $cluster 2>/dev/null || true' EXIT
for port in "${ports[0]}" "${ports[1]}"; do
  for _ in $(seq 150); do
    curl -sf "http://127.0.0.1:$port/ready" >/dev/null && continue 2
    kill -0 $cluster 2>/dev/null || { echo "load-cluster: the cluster didn't start" >&2; exit 1; }
    sleep 0.1
  done
  echo "load-cluster: the instance on port $port isn't ready" >&2
  exit 1
done
"$load" run --server "http://127.0.0.1:${ports[0]}" --also-server "http://127.0.0.1:${ports[1]}" --out "$out" "$@"
