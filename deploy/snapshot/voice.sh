#!/usr/bin/env bash
# A picture of the Voice dashboard's data from real desktop clients in a
# call: plaza-server in its own process, Prometheus scraping it every
# second, and CLIENTS headless `plaza` clients in one room, voice on, each
# with ALSA's file plugin as its microphone (a tone, so each talks all the
# time) and ALSA's null device as its speakers. Their telemetry reports
# carry what they heard; plot.py draws the dashboard's panels.
#
# usage: deploy/snapshot/voice.sh [BIN_DIR]
#   BIN_DIR  holds plaza-server and plaza; default: plaza-server from
#            $CARGO_TARGET_DIR/release, plaza from $CARGO_TARGET_DIR/debug
# env: SNAPSHOT_OUT (target/plaza-snapshot-voice), SNAPSHOT_IMAGES
#      (docs/images), SNAPSHOT_CLIENTS (3), SNAPSHOT_SECONDS (120),
#      SNAPSHOT_SERVER_PORT (7942), SNAPSHOT_PROM_PORT (9492)
set -euo pipefail
cd "$(dirname "$0")/../.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/plaza/target}"
server_bin="${1:-$CARGO_TARGET_DIR/release}/plaza-server"
client_bin="${1:-$CARGO_TARGET_DIR/debug}/plaza"
for bin in "$server_bin" "$client_bin"; do
  [ -x "$bin" ] || { echo "snapshot: no $bin (cargo build --profile bench -p plaza-server; cargo build -p plaza-client)" >&2; exit 1; }
done
out="${SNAPSHOT_OUT:-target/plaza-snapshot-voice}"
images="${SNAPSHOT_IMAGES:-docs/images}"
clients="${SNAPSHOT_CLIENTS:-3}"
seconds="${SNAPSHOT_SECONDS:-120}"
server_port="${SNAPSHOT_SERVER_PORT:-7942}"
prom_port="${SNAPSHOT_PROM_PORT:-9492}"
. deploy/snapshot/stack.sh
snapshot_needs prometheus rsvg-convert python3 curl
mkdir -p "$out" "$images"
snapshot_stack "$server_bin" "$server_port" "$prom_port" "$out"

# The microphones' sound: 220 Hz, its loudness wobbling 3 times a second,
# about −28 dBFS, 48 kHz stereo s16, a second repeated for the whole run.
python3 - "$tmp/tone.raw" "$((seconds + 60))" <<'PY'
import math, struct, sys
path, seconds = sys.argv[1], int(sys.argv[2])
rate = 48000
second = bytearray()
for i in range(rate):
    a = 0.06 * (0.6 + 0.4 * math.sin(2 * math.pi * 3 * i / rate)) * math.sin(2 * math.pi * 220 * i / rate)
    second += struct.pack("<hh", int(a * 32767), int(a * 32767))
with open(path, "wb") as f:
    for _ in range(seconds):
        f.write(second)
PY
mkdir -p "$tmp/home"
printf '%s\n' \
  'pcm.!default { type asym; playback.pcm "null"; capture.pcm "tone" }' \
  "pcm.tone { type file; slave.pcm \"null\"; file \"/dev/null\"; infile \"$tmp/tone.raw\"; format \"raw\" }" \
  'ctl.!default { type hw; card 0 }' >"$tmp/home/.asoundrc"

start=$(date +%s)
sleep 10 # idle first, so the picture shows the call start
client_pids=()
for n in $(seq "$clients"); do
  HOME="$tmp/home" XDG_CONFIG_HOME="$tmp/config-$n" "$client_bin" --server "http://127.0.0.1:$server_port" --room voice-demo \
    --name "Talker $n" --headless --voice on --frames 1000000 --preset low --resolution 320x180 >"$out/client-$n.log" 2>&1 &
  client_pids+=($!)
  pids+=($!)
done
sleep "$seconds"
for pid in "${client_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
sleep 15 # after: streams and calls back to zero
end=$(date +%s)

subtitle="$clients headless plaza clients (debug build, 320x180, low) in one room for $seconds s, voice on: ALSA's file plugin as microphone (a tone: always talking), null device as speakers; plaza-server release build; same $(nproc) cores; scraped every 1 s, rates over 10 s"
python3 deploy/snapshot/plot.py --prometheus "$prom" --dashboard deploy/grafana/dashboards/voice.json \
  --start "$start" --end "$end" --step 1 --rate-interval 10s --subtitle "$subtitle" \
  --out "$images/dashboard-voice.svg" --data "$out/voice-data.json"
rsvg-convert --format png --output "$images/dashboard-voice.png" "$images/dashboard-voice.svg"
curl -s "$prom/api/v1/alerts" >"$out/alerts.json"
echo "snapshot: wrote $images/dashboard-voice.svg and .png; data, alerts and logs in $out/"
