# Sourced by run.sh and voice.sh: plaza-server in its own process and
# Debian's Prometheus scraping it every second with Plaza's rules, both
# stopped (and their temporary files removed) when the script exits.
#
# Sets: tmp (a temporary folder), prom (Prometheus's base URL), pids.
# snapshot_stack SERVER_BIN SERVER_PORT PROM_PORT OUT

snapshot_needs() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "snapshot: needs $tool (prometheus: tools/setup.sh; rsvg-convert: librsvg2-bin)" >&2; exit 1; }
  done
}

snapshot_stack() {
  local server_bin="$1" server_port="$2" prom_port="$3" out="$4"
  tmp="$(mktemp -d)"
  pids=()
  trap snapshot_cleanup EXIT
  "$server_bin" --dev --data-dir "$tmp/server" --bind "127.0.0.1:$server_port" --log-format json >"$out/server.log" 2>&1 &
  pids+=($!)
  printf '%s\n' 'global:' '  scrape_interval: 1s' '  evaluation_interval: 1s' 'rule_files:' "  - $PWD/deploy/prometheus/rules/*.rules.yml" \
    'scrape_configs:' '  - job_name: plaza' '    static_configs:' "      - targets: [\"127.0.0.1:$server_port\"]" >"$tmp/prometheus.yml"
  prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$out/prometheus.log" 2>&1 &
  pids+=($!)
  prom="http://127.0.0.1:$prom_port"
  for _ in $(seq 100); do
    curl -sf "$prom/-/ready" >/dev/null && curl -sf "http://127.0.0.1:$server_port/health" >/dev/null && break
    sleep 0.2
  done
  curl -sf "$prom/-/ready" >/dev/null || { echo "snapshot: Prometheus did not come up; see $out/prometheus.log" >&2; exit 1; }
}

snapshot_cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
