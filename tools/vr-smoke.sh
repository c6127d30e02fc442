#!/usr/bin/env bash
# A VR smoke test against a real OpenXR runtime, for machines that have one
# (CI has none: Monado is not packaged for Debian 12; docs/vr.md says how to
# build it with its simulated headset). Runs `plaza --xr` through a short
# `--frames` run and checks that the session reached the headset, that the
# left eye drew the plaza, and that the run ended cleanly.
#
#   XR_RUNTIME_JSON=/path/to/openxr_monado.json tools/vr-smoke.sh [PLAZA_BINARY]
#
# With Monado, the simulated headset and controllers and the null
# compositor are chosen unless the environment says otherwise. Needs a
# display (use xvfb-run on a headless box): the client keeps its window.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-${CARGO_TARGET_DIR:-$HOME/.cache/plaza/target}/debug/plaza}"
[ -x "$BIN" ] || { echo "vr-smoke: no plaza binary at $BIN; run make build first" >&2; exit 2; }
[ -n "${XR_RUNTIME_JSON:-}" ] || { echo "vr-smoke: set XR_RUNTIME_JSON to your OpenXR runtime's manifest (docs/vr.md)" >&2; exit 2; }
[ -f "$XR_RUNTIME_JSON" ] || { echo "vr-smoke: XR_RUNTIME_JSON=$XR_RUNTIME_JSON: no such file" >&2; exit 2; }
[ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] || { echo "vr-smoke: no display; run it under xvfb-run" >&2; exit 2; }

export SIMULATED_ENABLE="${SIMULATED_ENABLE:-1}" SIMULATED_LEFT="${SIMULATED_LEFT:-simple}" SIMULATED_RIGHT="${SIMULATED_RIGHT:-simple}"
[ -n "${XRT_COMPOSITOR_FORCE_XCB:-}" ] || export XRT_COMPOSITOR_NULL="${XRT_COMPOSITOR_NULL:-1}"
export XRT_COMPOSITOR_SCALE_PERCENTAGE="${XRT_COMPOSITOR_SCALE_PERCENTAGE:-40}"

OUT=target/plaza-vr-smoke
mkdir -p "$OUT"
status=0
timeout 300 "$BIN" --xr --frames "${FRAMES:-30}" --resolution 640x360 --bots 8 --voice off --preset low \
  --report "$OUT/report.json" --screenshot "$OUT/mirror.png" > "$OUT/plaza.log" 2>&1 || status=$?
fail() { echo "vr-smoke: $1 (log: $OUT/plaza.log)" >&2; exit 1; }
[ "$status" = 0 ] || fail "plaza exited with $status"
grep -q "starting in VR" "$OUT/plaza.log" || fail "the probe found no headset: $(grep -o 'VR is off: .*' "$OUT/plaza.log" | head -1)"
grep -q "in the headset" "$OUT/plaza.log" || fail "the session never reached the headset"
python3 - "$OUT/report.json" <<'PY' || fail "the report is not what a VR run draws"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["frames"] > 0, r["frames"]
assert r["triangles"] > 0 and r["draw_calls"] > 0, (r["triangles"], r["draw_calls"])
print(f"vr-smoke: {r['frames']} frames, left eye {r['triangles']:,} triangles in {r['draw_calls']} draws, p50 {r['frame_ms']['p50']:.0f} ms ({r['adapter']})")
PY
echo "vr-smoke: passed ($OUT)"
