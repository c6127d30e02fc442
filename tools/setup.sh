#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages Plaza needs, only those missing.
# Idempotent; works as root or through sudo. Safe to run on every `make`.
set -euo pipefail

PACKAGES=(
  # build
  pkg-config cmake clang lld
  # Bevy on Linux: audio, input, windowing
  libasound2-dev libudev-dev libwayland-dev libxkbcommon-dev libx11-dev
  libxcursor-dev libxrandr-dev libxi-dev
  # headless rendering: Vulkan on the CPU (lavapipe) under Xvfb
  mesa-vulkan-drivers libvulkan1 vulkan-tools xvfb xauth
  # voice
  libopus-dev libspeexdsp-dev
  # VR: the OpenXR loader the client opens at run time for --xr (-dev has
  # the libopenxr_loader.so link it opens); the runtime is the headset's
  libopenxr-loader1 libopenxr-dev
  # chat store tests on PostgreSQL (the tests start their own cluster)
  postgresql
  # instances sharing rooms (--redis-url; the tests start their own Redis)
  redis-server
  # the balancer in front of them (deploy/balancer, `make cluster`)
  nginx
  # the socket.io baseline peers for load comparisons (tools/peers)
  nodejs
  # promtool (`make check-deploy`: alert rules and their unit tests) and the
  # Prometheus server that deploy/snapshot/run.sh scrapes a load run with
  prometheus
  # the dashboard pictures' SVG to PNG (deploy/snapshot/run.sh, voice.sh)
  librsvg2-bin
  # `ip`: the network namespaces of the silent-link test (server/tests)
  iproute2
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

# Debian splits npm out of nodejs; other Node packages bundle it.
if ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup.sh: apt-get not found; install these packages by hand: ${missing[*]}" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "setup.sh: not root and no sudo; install these packages: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
