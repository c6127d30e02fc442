#!/usr/bin/env bash
# Load over tools/cluster.sh's two instances. Result in OUT (result.json,
# report.html), and what each instance ran in OUT/instances.txt.
#
#   tools/load-cluster.sh SERVER_BINARY LOAD_BINARY OUT spread|balanced [plaza-load run flags]
#
# spread:   every other member of each room connects to the second
#           instance and is relayed to the room's (what a relay costs);
# balanced: every user connects to the balancer in front, which sends each
#           room's members to one instance by their Plaza-Join header
#           (what routing by room saves: nobody should be relayed).
set -euo pipefail
usage="usage: tools/load-cluster.sh SERVER_BINARY LOAD_BINARY OUT spread|balanced [flags]"
server=${1:?$usage}
load=${2:?$usage}
out=${3:?$usage}
mode=${4:?$usage}
shift 4
case "$mode" in
  spread | balanced) ;;
  *) echo "load-cluster: the mode is spread or balanced, not '$mode'" >&2; exit 2 ;;
esac
ports=(7941 7942 6394 7943)
mkdir -p "$out"
rm -f "$out/cluster/ready"
bash "$(dirname "$0")/cluster.sh" "$server" "$out/cluster" "${ports[@]}" &
cluster=$!
sampler=
trap 'kill $cluster $sampler 2>/dev/null; wait $cluster 2>/dev/null || true' EXIT
# cluster.sh makes its ready file once every part answers.
until [ -e "$out/cluster/ready" ]; do
  kill -0 $cluster 2>/dev/null || { echo "load-cluster: the cluster didn't start; see $out/cluster" >&2; exit 1; }
  sleep 0.1
done

# Each instance's rooms, relayed sockets and connections every 2 s (the
# most seen), and its CPU over the run from its own /metrics: plaza-load's
# own server CPU reads one URL, which behind the balancer is a different
# instance from one scrape to the next.
gauge() { curl -sf "http://127.0.0.1:$1/metrics" | awk -v name="$2" '$1 == name { print $2 }'; }
sample() {
  declare -A most first_cpu
  while sleep 2; do
    line=""
    for port in "${ports[0]}" "${ports[1]}"; do
      for name in plaza_room_leases plaza_ws_relayed plaza_ws_connections; do
        value=$(gauge "$port" "$name" || true); value=${value%.*}
        (( ${value:-0} > ${most[$port$name]:-0} )) && most[$port$name]=$value
        line+="instance :$port most $name ${most[$port$name]:-0}"$'\n'
      done
      cpu=$(gauge "$port" process_cpu_seconds_total || true)
      [ -n "$cpu" ] && [ -z "${first_cpu[$port]:-}" ] && first_cpu[$port]=$cpu && first_at=$SECONDS
      if [ -n "$cpu" ] && (( SECONDS > ${first_at:-$SECONDS} )); then
        line+="instance :$port cpu $(awk -v a="${first_cpu[$port]}" -v b="$cpu" -v s=$(( SECONDS - first_at )) 'BEGIN { printf "%.1f%% of a core over %d s", 100 * (b - a) / s, s }')"$'\n'
      fi
    done
    printf '%s' "$line" > "$out/instances.txt"
  done
}
sample &
sampler=$!

if [ "$mode" = spread ]; then
  "$load" run --server "http://127.0.0.1:${ports[0]}" --also-server "http://127.0.0.1:${ports[1]}" --out "$out" "$@"
else
  "$load" run --server "http://127.0.0.1:${ports[3]}" --out "$out" "$@"
fi
kill $sampler 2>/dev/null || true
echo "load-cluster: what each instance ran (sampled every 2 s; CPU from the first sample to the last, ramp and all):"
cat "$out/instances.txt"
