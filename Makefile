# Plaza. `make run` and `make test` are the two commands that matter; both
# install what is missing first (tools/setup.sh, idempotent).
#
# One target directory outside the clone, shared by every command and by CI,
# so a Bevy build is paid once per machine.
CARGO_TARGET_DIR ?= $(HOME)/.cache/plaza/target
export CARGO_TARGET_DIR
CARGO ?= cargo
RUN_DIR := target/plaza-run
RUN_FRAMES ?= 30
FUZZ_SECONDS ?= 300
FUZZ_TARGETS := decode_client_bin decode_server_bin decode_client_json decode_server_json

.PHONY: setup build run test check-deps check-deploy check-tracy stack cluster peers bench bench-frames load load-voice load-restart load-hostile load-bad-network load-blackhole load-cluster load-balanced ladder soak fuzz clippy clean-run assets

setup:
	@bash tools/setup.sh

# Builds exactly what `make test` builds (tests included), so `make run`
# after `make test` (or the other way round) never compiles Bevy twice:
# different cargo invocations can unify features differently.
build: setup
	$(CARGO) test --workspace --locked --no-run

run: build
	@if [ -z "$$DISPLAY" ] && [ -z "$$WAYLAND_DISPLAY" ]; then \
		echo "make run: no display (DISPLAY and WAYLAND_DISPLAY unset); rendering headless to $(RUN_DIR)/"; \
		mkdir -p $(RUN_DIR); \
		"$(CARGO_TARGET_DIR)/debug/plaza" --headless --frames $(RUN_FRAMES) \
			--screenshot $(RUN_DIR)/screenshot.png --report $(RUN_DIR)/report.json $(ARGS) && \
		echo "make run: wrote $(RUN_DIR)/screenshot.png and $(RUN_DIR)/report.json"; \
	else \
		"$(CARGO_TARGET_DIR)/debug/plaza" $(ARGS); \
	fi

test: setup check-deps check-deploy check-tracy peers
	$(CARGO) test --workspace --locked

# The socket.io baseline peers (Node) that `plaza-load ladder` compares
# with; installed from the lockfile, once.
PEERS_DIR := tools/peers/socketio
peers: setup
	@if [ ! -f $(PEERS_DIR)/node_modules/.package-lock.json ] || [ $(PEERS_DIR)/package-lock.json -nt $(PEERS_DIR)/node_modules/.package-lock.json ]; then \
		echo "peers: npm ci in $(PEERS_DIR)"; \
		cd $(PEERS_DIR) && npm ci --no-audit --no-fund --loglevel=error; \
	fi

# The load issue's headline scenario: 50 rooms x 40 users at 20 Hz (2,000
# users) against an in-process server, optimized build. Short versions of
# the load scenarios run in `make test` (tools/load/tests).
LOAD_ARGS ?= --rooms 50 --users-per-room 40 --rate 20 --duration 60 --ramp 10
load: setup
	$(CARGO) build --profile bench -p plaza-load
	"$(CARGO_TARGET_DIR)/release/plaza-load" run $(LOAD_ARGS) --out target/plaza-load

# Instances sharing rooms: two on loopback with a Redis and the balancer in
# front (tools/cluster.sh, docs/operations.md "Several instances"); Ctrl-C
# stops them.
cluster: setup
	$(CARGO) build --profile bench -p plaza-server
	bash tools/cluster.sh "$(CARGO_TARGET_DIR)/release/plaza-server" target/plaza-cluster

# The relay under load: 20 rooms x 40 users at 20 Hz over those two
# instances, every other member of each room relayed (docs/load.md).
CLUSTER_LOAD_ARGS ?= --rooms 20 --users-per-room 40 --rate 20 --duration 40 --ramp 5
load-cluster: setup
	$(CARGO) build --profile bench -p plaza-load -p plaza-server
	bash tools/load-cluster.sh "$(CARGO_TARGET_DIR)/release/plaza-server" "$(CARGO_TARGET_DIR)/release/plaza-load" target/plaza-load/cluster spread $(CLUSTER_LOAD_ARGS)

# The same users through the balancer (deploy/balancer/nginx.conf), which
# routes by room: each room on one instance, nobody relayed.
load-balanced: setup
	$(CARGO) build --profile bench -p plaza-load -p plaza-server
	bash tools/load-cluster.sh "$(CARGO_TARGET_DIR)/release/plaza-server" "$(CARGO_TARGET_DIR)/release/plaza-load" target/plaza-load/balanced balanced $(CLUSTER_LOAD_ARGS)

# A 40-user room in voice: every user also sends and hears Opus-sized
# frames through the SFU (docs/load.md, "Voice in a run").
VOICE_LOAD_ARGS ?= --rooms 1 --users-per-room 40 --rate 20 --duration 60 --ramp 10 --voice
load-voice: setup
	$(CARGO) build --profile bench -p plaza-load
	"$(CARGO_TARGET_DIR)/release/plaza-load" run $(VOICE_LOAD_ARGS) --out target/plaza-load/voice

# The same load with the server restarted every 20 s: every user must come
# back to its room (docs/load.md, "Restarts in a run").
RESTART_LOAD_ARGS ?= --rooms 50 --users-per-room 40 --rate 20 --duration 60 --ramp 10 --restart-every 20s --access-ttl 80s
load-restart: setup
	$(CARGO) build --profile bench -p plaza-load
	"$(CARGO_TARGET_DIR)/release/plaza-load" run $(RESTART_LOAD_ARGS) --out target/plaza-load/restart

# The load issue's bad network: one 40-user room for 5 minutes at 500 ms
# each way ± 50 ms, 5% loss as TCP feels it, every connection cut after
# 30-90 s (docs/load.md, "Faults in a run").
BAD_NETWORK_LOAD_ARGS ?= --rooms 1 --users-per-room 40 --rate 20 --duration 300 --ramp 10 --latency 500ms --jitter 50ms --loss 5% --reset-every 60s --ping-every 1 --drain 10
load-bad-network: setup
	$(CARGO) build --profile bench -p plaza-load
	"$(CARGO_TARGET_DIR)/release/plaza-load" run $(BAD_NETWORK_LOAD_ARGS) --out target/plaza-load/bad-network

# A link that goes silent for real: users in network namespaces of their
# own, 10 of them cut off for 9 s in a busy room; they must resume their
# own seats (needs root; docs/benchmarks.md, session 21).
load-blackhole: setup
	$(CARGO) build --profile bench -p plaza-server -p plaza-load
	CARGO_TARGET_DIR=$(CARGO_TARGET_DIR) tools/netns-blackhole.sh target/plaza-load/blackhole

# Misbehaving clients beside the users: 5 in each room, one that stops
# reading, one that floods, one that sends junk, one that sends an
# oversized message and one that never finishes its upgrade request
# (docs/load.md, "Hostile clients in a run").
HOSTILE_LOAD_ARGS ?= --rooms 10 --users-per-room 40 --rate 20 --duration 60 --ramp 10 --hostile 5
load-hostile: setup
	$(CARGO) build --profile bench -p plaza-load
	"$(CARGO_TARGET_DIR)/release/plaza-load" run $(HOSTILE_LOAD_ARGS) --out target/plaza-load/hostile

# 30 minutes of steady load on a server in its own process, then the leak
# checks (RSS drift < 5%, connections and tasks back to idle); see docs/load.md.
SOAK_ARGS ?= --rooms 10 --users-per-room 40 --rate 20 --duration 1800 --ramp 10
soak: setup
	$(CARGO) build --profile bench -p plaza-load -p plaza-server
	bash tools/load/soak.sh "$(CARGO_TARGET_DIR)/release" target/plaza-load/soak $(SOAK_ARGS)

# Plaza against the socket.io peers, stepped up (the load issue's capacity
# ratio); LADDER_ARGS overrides the steps, e.g. --steps 400,800,1600.
LADDER_ARGS ?=
ladder: setup peers
	$(CARGO) build --profile bench -p plaza-load
	"$(CARGO_TARGET_DIR)/release/plaza-load" ladder $(LADDER_ARGS) --out target/plaza-load/ladder

# Regenerates assets/ (deterministic: the same bytes every run), checks it
# and rewrites docs/assets.md. The dev build: it reuses the test build.
assets: setup
	$(CARGO) build -p plaza-assets --locked
	"$(CARGO_TARGET_DIR)/debug/plaza-assets" make
	"$(CARGO_TARGET_DIR)/debug/plaza-assets" check
	"$(CARGO_TARGET_DIR)/debug/plaza-assets" report

# Prometheus config, alert rules and the rules' unit tests (each alert fires
# on bad input and stays quiet on healthy input); promtool comes from
# Debian's prometheus package (tools/setup.sh).
PROM_DIR := deploy/prometheus
check-deploy: setup
	promtool check config $(PROM_DIR)/prometheus.yml
	promtool check rules $(PROM_DIR)/rules/*.yml
	promtool test rules $(PROM_DIR)/tests/*.test.yml

# The `tracy` profiling feature still builds (docs/profiling.md). Its own
# target directory: Bevy with tracing compiled in is a second Bevy build,
# and sharing the main one would swap the two builds back and forth.
TRACY_TARGET_DIR ?= $(HOME)/.cache/plaza/target-tracy
check-tracy: setup
	CARGO_TARGET_DIR=$(TRACY_TARGET_DIR) $(CARGO) check --locked -p plaza-server --features tracy
	CARGO_TARGET_DIR=$(TRACY_TARGET_DIR) $(CARGO) check --locked -p plaza-client --features tracy

# Server, Prometheus, Grafana (http://localhost:3000), Jaeger
# (http://localhost:16686) and Postgres, for people with Docker.
stack:
	@docker compose version >/dev/null 2>&1 || { echo "make stack: needs Docker with the compose plugin ('docker compose'); not found"; exit 1; }
	PLAZA_BUILD_COMMIT=$$(git rev-parse --short=12 HEAD 2>/dev/null) docker compose -f deploy/compose.yaml up --build

# Only plaza-client may pull in Bevy.
check-deps:
	@bash tools/check-deps.sh

bench: setup
	$(CARGO) bench -p plaza-benches --bench codec
	$(CARGO) bench -p plaza-benches --bench voice
	$(CARGO) bench -p plaza-client --bench client_systems

# Frame times on this machine's Vulkan with the release client: low vs high,
# LOD and culling on/off, one run (tools/frame-bench.sh).
bench-frames: setup
	$(CARGO) build --profile bench -p plaza-client --bin plaza
	bash tools/frame-bench.sh "$(CARGO_TARGET_DIR)/release/plaza"

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# Each decoder for FUZZ_SECONDS (default 5 minutes). Needs cargo-fuzz; the
# stable toolchain runs it with RUSTC_BOOTSTRAP=1.
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzz: $$t for $(FUZZ_SECONDS)s"; \
		CARGO_TARGET_DIR=$(CURDIR)/fuzz/target RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir fuzz $$t -- \
			-max_total_time=$(FUZZ_SECONDS) -max_len=16384 -print_final_stats=1 || exit 1; \
	done

clean-run:
	rm -rf $(RUN_DIR)
