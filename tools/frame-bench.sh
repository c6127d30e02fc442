#!/usr/bin/env bash
# Frame-time comparisons on whatever Vulkan this machine has (lavapipe in
# CI-like boxes): the same scripted scene (scenarios/crowd-200.toml, 200
# walkers, fixed time steps) rendered with low vs high, LOD on vs off and
# culling on vs off, in one run so the ratios are comparable. Writes each
# run's report and screenshot under target/plaza-bench/ and prints a
# markdown table (docs/benchmarks.md keeps the results).
#
#   tools/frame-bench.sh [PLAZA_BINARY]    FRAMES=60 RESOLUTION=1280x720
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-${CARGO_TARGET_DIR:-$HOME/.cache/plaza/target}/debug/plaza}"
FRAMES="${FRAMES:-60}"
RESOLUTION="${RESOLUTION:-1280x720}"
OUT=target/plaza-bench
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "frame-bench: no plaza binary at $BIN; run make build first" >&2; exit 1; }

run() { # name, flags...
  local name=$1; shift
  echo "frame-bench: $name ($*)" >&2
  PLAZA_CONFIG_DIR="$OUT" "$BIN" --headless --frames "$FRAMES" --resolution "$RESOLUTION" \
    --scenario scenarios/crowd-200.toml --report "$OUT/$name.json" --screenshot "$OUT/$name.png" "$@" \
    > "$OUT/$name.log" 2>&1 || { echo "frame-bench: $name failed; see $OUT/$name.log" >&2; exit 1; }
}

run low --preset low
run high --preset high
run high-lod-off --preset high --lod off
run high-culling-off --preset high --culling off

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
runs = ["low", "high", "high-lod-off", "high-culling-off"]
r = {n: json.load(open(f"{out}/{n}.json")) for n in runs}
print(f"adapter: {r['low']['adapter']}, {r['low']['resolution'][0]}x{r['low']['resolution'][1]}, {r['low']['frames']} measured frames each\n")
print("| run | p50 ms | p95 ms | triangles | draw calls | visible | culled | avatars full/reduced/low/impostor/hidden |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for n in runs:
    x = r[n]; a = x["avatars_by_lod"]
    lod = "/".join(str(a[k]) for k in ["full", "reduced", "low", "impostor", "hidden"])
    print(f"| {n} | {x['frame_ms']['p50']:.1f} | {x['frame_ms']['p95']:.1f} | {x['triangles']:,} | {x['draw_calls']} | {x['entities']['visible']} | {x['entities']['culled']} | {lod} |")
def ratio(a, b, key):
    va = r[a][key] if key != "p50" else r[a]["frame_ms"]["p50"]
    vb = r[b][key] if key != "p50" else r[b]["frame_ms"]["p50"]
    return vb / va if va else float("inf")
print()
print(f"- high / low: {ratio('low', 'high', 'triangles'):.1f}x triangles, {ratio('low', 'high', 'p50'):.1f}x median frame time")
print(f"- LOD off / on (high): {ratio('high', 'high-lod-off', 'triangles'):.1f}x triangles, {ratio('high', 'high-lod-off', 'p50'):.2f}x median frame time")
print(f"- culling off / on (high): {ratio('high', 'high-culling-off', 'draw_calls'):.1f}x draw calls, {ratio('high', 'high-culling-off', 'p50'):.2f}x median frame time")
PY
