#!/usr/bin/env bash
# A link that goes silent for real, under load (docs/benchmarks.md, session 21).
#
# The server runs in a network namespace of its own; 30 users in a second
# namespace and 10 in a third, all in room load-1, reach it over veth pairs.
# Some seconds in, the 10 users' end of their link goes down for a while:
# nothing delivered, nothing acknowledged, no reset (Wi-Fi lost). Then it
# comes back. Prints, for each side, who resumed their own seat, and what
# the server did with the silent sockets.
#
# Needs root (network namespaces) and bench builds of both binaries:
#   cargo build --profile bench -p plaza-server -p plaza-load
# Usage: tools/netns-blackhole.sh [OUT_DIR] [CUT_AT_S] [OUTAGE_S]
set -euo pipefail

OUT=${1:-target/netns-blackhole}
CUT_AT=${2:-15}
OUTAGE=${3:-9}
for v in "$CUT_AT" "$OUTAGE"; do
  [[ "$v" =~ ^[0-9]+$ && "$v" -ge 1 && "$v" -le 600 ]] || { echo "netns-blackhole: CUT_AT_S and OUTAGE_S are whole seconds, 1-600; got '$v'" >&2; exit 2; }
done
BIN=${CARGO_TARGET_DIR:-target}/release
for b in plaza-server plaza-load; do
  [ -x "$BIN/$b" ] || { echo "netns-blackhole: $BIN/$b not found; cargo build --profile bench -p plaza-server -p plaza-load" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "netns-blackhole: needs root for network namespaces" >&2; exit 2; }

ID=$$
SRV=pzbh-s$ID OK=pzbh-o$ID BAD=pzbh-b$ID
cleanup() { for n in $SRV $OK $BAD; do ip netns del "$n" 2>/dev/null || true; done; }
trap cleanup EXIT
for n in $SRV $OK $BAD; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip link add pzbho$ID type veth peer name pzbhO$ID
ip link add pzbhb$ID type veth peer name pzbhB$ID
ip link set pzbho$ID netns $SRV; ip link set pzbhb$ID netns $SRV
ip link set pzbhO$ID netns $OK; ip link set pzbhB$ID netns $BAD
ip -n $SRV addr add 10.232.1.1/24 dev pzbho$ID; ip -n $SRV addr add 10.232.2.1/24 dev pzbhb$ID
ip -n $OK addr add 10.232.1.2/24 dev pzbhO$ID; ip -n $BAD addr add 10.232.2.2/24 dev pzbhB$ID
for l in "$SRV pzbho$ID" "$SRV pzbhb$ID" "$OK pzbhO$ID" "$BAD pzbhB$ID"; do set -- $l; ip -n "$1" link set "$2" up; done

rm -rf "$OUT"; mkdir -p "$OUT"
ip netns exec $SRV "$BIN/plaza-server" --dev --data-dir "$OUT/data" --bind 0.0.0.0:7979 --log-format json > "$OUT/server.log" 2>&1 &
SERVER=$!
sleep 1.5
DURATION=$((CUT_AT + OUTAGE + 20))
ip netns exec $OK "$BIN/plaza-load" run --server http://10.232.1.1:7979 --rooms 1 --users-per-room 30 --rate 20 \
  --duration $DURATION --ramp 3 --ping-every 1 --out "$OUT/ok" --quiet > "$OUT/ok.log" 2>&1 &
OKRUN=$!
sleep 0.5
ip netns exec $BAD "$BIN/plaza-load" run --server http://10.232.2.1:7979 --rooms 1 --users-per-room 10 --rate 20 \
  --duration $((DURATION - 1)) --ramp 3 --ping-every 1 --out "$OUT/silent" --quiet > "$OUT/silent.log" 2>&1 &
BADRUN=$!
sleep "$CUT_AT"
echo "netns-blackhole: the 10 users' link goes down for ${OUTAGE} s"
ip -n $BAD link set pzbhB$ID down
sleep "$OUTAGE"
ip -n $BAD link set pzbhB$ID up
echo "netns-blackhole: the link is back"
wait $OKRUN $BADRUN || true
kill -INT $SERVER; wait $SERVER || true

for side in ok silent; do
  python3 - "$OUT/$side/result.json" "$side" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"netns-blackhole: {sys.argv[2]:6} users {r['users_joined']}, reconnects {r['reconnects']}, resumed own seat {r['resumed']}, "
      f"lost {r['lost']}, errors {r['errors_by_kind']}, p99 {r['latency_ms']['p99']:.1f} ms")
PY
done
echo "netns-blackhole: server: $(grep -c 'link went silent' "$OUT/server.log" || true) sockets let go as silent (seat held), $(grep -c 'too slow to keep up' "$OUT/server.log" || true) closed 4009, $(grep -c 'no seat held' "$OUT/server.log" || true) resumes that found no seat"
