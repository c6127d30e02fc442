#!/usr/bin/env bash
# Fails when a crate other than plaza-client depends on Bevy: a cold Bevy
# build is half an hour on the CI machine, and only the client needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for crate in plaza-shared plaza-server plaza-load plaza-assets plaza-benches; do
  if cargo tree --locked -p "$crate" -e normal,build --prefix none 2>/dev/null | grep -qE '^bevy(_[a-z_]+)? '; then
    echo "check-deps: $crate depends on Bevy; only plaza-client may" >&2
    status=1
  fi
done
if ! cargo tree --locked -p plaza-client -e normal --prefix none | grep -qE '^bevy '; then
  echo "check-deps: plaza-client does not depend on bevy? (cargo tree changed format)" >&2
  status=1
fi
exit $status
