#!/usr/bin/env bash
# A picture of the server-overview dashboard's data from a real load run:
# plaza-server in its own process, Debian's Prometheus scraping it every
# second (with Plaza's rules loaded), plaza-load driving it, then plot.py
# drawing the dashboard's panels from Prometheus into an SVG and a PNG.
#
# usage: deploy/snapshot/run.sh [BIN_DIR]
#   BIN_DIR  holds plaza-server and plaza-load (default: build them with the
#            bench profile into $CARGO_TARGET_DIR/release)
# env: SNAPSHOT_OUT (target/plaza-snapshot), SNAPSHOT_IMAGES (docs/images),
#      SNAPSHOT_LOAD_ARGS, SNAPSHOT_SERVER_PORT (7941), SNAPSHOT_PROM_PORT (9491)
set -euo pipefail
cd "$(dirname "$0")/../.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/plaza/target}"
if [ $# -ge 1 ]; then
  bin="$1"
else
  cargo build --profile bench -p plaza-load -p plaza-server
  bin="$CARGO_TARGET_DIR/release"
fi
out="${SNAPSHOT_OUT:-target/plaza-snapshot}"
images="${SNAPSHOT_IMAGES:-docs/images}"
server_port="${SNAPSHOT_SERVER_PORT:-7941}"
prom_port="${SNAPSHOT_PROM_PORT:-9491}"
load_args="${SNAPSHOT_LOAD_ARGS:---rooms 10 --users-per-room 20 --rate 20 --duration 60 --ramp 10}"

. deploy/snapshot/stack.sh
snapshot_needs prometheus rsvg-convert python3 curl
mkdir -p "$out" "$images"
snapshot_stack "$bin/plaza-server" "$server_port" "$prom_port" "$out"

start=$(date +%s)
sleep 10 # idle before the load, so the picture shows the step up
# shellcheck disable=SC2086 # word splitting of the flags is wanted
"$bin/plaza-load" run --server "http://127.0.0.1:$server_port" $load_args --out "$out/load" -q
sleep 15 # idle after: connections back to zero, rates falling
end=$(date +%s)

subtitle="plaza-load run $load_args against plaza-server (release build, own process, same $(nproc) cores as the load); scraped every 1 s, rates over 10 s; x: seconds from start"
python3 deploy/snapshot/plot.py --prometheus "$prom" --dashboard deploy/grafana/dashboards/server-overview.json \
  --start "$start" --end "$end" --step 1 --rate-interval 10s --subtitle "$subtitle" --load-result "$out/load/result.json" \
  --out "$images/dashboard-server-overview.svg" --data "$out/server-overview-data.json"
rsvg-convert --format png --output "$images/dashboard-server-overview.png" "$images/dashboard-server-overview.svg"
curl -s "$prom/api/v1/alerts" >"$out/alerts.json"
echo "snapshot: wrote $images/dashboard-server-overview.svg and .png; data, alerts and logs in $out/"
