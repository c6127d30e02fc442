#!/usr/bin/env bash
# Frame-time comparisons on whatever Vulkan this machine has (lavapipe in
# CI-like boxes): the same scripted scene (scenarios/crowd-200.toml, 200
# walkers, fixed time steps) rendered with low vs high, LOD on vs off and
# culling on vs off, in one run so the ratios are comparable. Writes each
# run's report and screenshot under target/plaza-bench/ and prints a
# markdown table (docs/benchmarks.md keeps the results).
#
# The client draws the asset models (assets/models/*.glb) when they are
# there. The `*-placeholders` runs point it at an empty asset folder, so it
# draws its built-in placeholder shapes: the same comparison before assets.
#
#   tools/frame-bench.sh [PLAZA_BINARY]    FRAMES=60 RESOLUTION=1280x720
#   RUNS="low high low-placeholders high-placeholders" tools/frame-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-${CARGO_TARGET_DIR:-$HOME/.cache/plaza/target}/debug/plaza}"
FRAMES="${FRAMES:-60}"
RESOLUTION="${RESOLUTION:-1280x720}"
OUT=target/plaza-bench
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "frame-bench: no plaza binary at $BIN; run make build first" >&2; exit 1; }

RUNS="${RUNS:-low high high-lod-off high-culling-off}"
EMPTY="$OUT/no-assets"
mkdir -p "$EMPTY"

run() { # name, flags...
  local name=$1; shift
  echo "frame-bench: $name ($*)" >&2
  PLAZA_CONFIG_DIR="$OUT" "$BIN" --headless --frames "$FRAMES" --resolution "$RESOLUTION" \
    --scenario scenarios/crowd-200.toml --report "$OUT/$name.json" --screenshot "$OUT/$name.png" "$@" \
    > "$OUT/$name.log" 2>&1 || { echo "frame-bench: $name failed; see $OUT/$name.log" >&2; exit 1; }
}

for name in $RUNS; do
  case $name in
    low) run low --preset low ;;
    high) run high --preset high ;;
    high-lod-off) run high-lod-off --preset high --lod off ;;
    high-culling-off) run high-culling-off --preset high --culling off ;;
    low-placeholders) BEVY_ASSET_ROOT="$EMPTY" run low-placeholders --preset low ;;
    high-placeholders) BEVY_ASSET_ROOT="$EMPTY" run high-placeholders --preset high ;;
    *) echo "frame-bench: unknown run $name" >&2; exit 2 ;;
  esac
done

python3 - "$OUT" $RUNS <<'PY'
import json, sys
out, runs = sys.argv[1], sys.argv[2:]
r = {n: json.load(open(f"{out}/{n}.json")) for n in runs}
first = r[runs[0]]
print(f"adapter: {first['adapter']}, {first['resolution'][0]}x{first['resolution'][1]}, {first['frames']} measured frames each\n")
print("| run | p50 ms | p95 ms | triangles | draw calls | visible | culled | avatars full/reduced/low/impostor/hidden | prop meshes lod0/1/2/3 |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for n in runs:
    x = r[n]; a = x["avatars_by_lod"]; p = x.get("props_by_lod", {})
    lod = "/".join(str(a[k]) for k in ["full", "reduced", "low", "impostor", "hidden"])
    props = "/".join(str(p.get(k, "-")) for k in ["lod0", "lod1", "lod2", "lod3"])
    print(f"| {n} | {x['frame_ms']['p50']:.1f} | {x['frame_ms']['p95']:.1f} | {x['triangles']:,} | {x['draw_calls']} | {x['entities']['visible']} | {x['entities']['culled']} | {lod} | {props} |")
def ratio(a, b, key):
    va = r[a][key] if key != "p50" else r[a]["frame_ms"]["p50"]
    vb = r[b][key] if key != "p50" else r[b]["frame_ms"]["p50"]
    return vb / va if va else float("inf")
print()
if "low" in r and "high" in r:
    print(f"- high / low: {ratio('low', 'high', 'triangles'):.1f}x triangles, {ratio('low', 'high', 'p50'):.1f}x median frame time")
if "low-placeholders" in r and "high-placeholders" in r:
    print(f"- high / low, placeholders: {ratio('low-placeholders', 'high-placeholders', 'triangles'):.1f}x triangles, {ratio('low-placeholders', 'high-placeholders', 'p50'):.1f}x median frame time")
if "high" in r and "high-placeholders" in r:
    print(f"- high, models / placeholders: {ratio('high-placeholders', 'high', 'triangles'):.1f}x triangles, {ratio('high-placeholders', 'high', 'p50'):.2f}x median frame time")
if "high" in r and "high-lod-off" in r:
    print(f"- LOD off / on (high): {ratio('high', 'high-lod-off', 'triangles'):.1f}x triangles, {ratio('high', 'high-lod-off', 'p50'):.2f}x median frame time")
if "high" in r and "high-culling-off" in r:
    print(f"- culling off / on (high): {ratio('high', 'high-culling-off', 'draw_calls'):.1f}x draw calls, {ratio('high', 'high-culling-off', 'p50'):.2f}x median frame time")
PY
