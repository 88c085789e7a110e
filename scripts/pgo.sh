#!/usr/bin/env bash
# Builds the gateway with profile-guided optimisation (PGO), the build the container image
# ships and benches/compare.sh measures:
#   1. an instrumented build (rustc -Cprofile-generate) into $TARGET/pgo-train;
#   2. that build serves a training load from the project's own tools: mock replicas behind
#      it, loadgen in front, request/response and streaming, HTTP/1.1 and HTTP/2, the access
#      log off and on, auth and rate limits on, and a share of refusals (a wrong key, an
#      unknown model); the benchmarks' set-up (one worker thread, least_inflight), then the
#      defaults a deployment starts from (a worker per core, p2c_ewma, a canary taking a
#      share, a token budget, replicas with max_inflight);
#   3. llvm-profdata merges what it counted;
#   4. the release build uses it (rustc -Cprofile-use) into $TARGET/pgo.
# The compiler then lays out the request path's hot code together and its error paths apart,
# and inlines by what runs: see the README's performance section for what it saves.
# The last line printed is the optimised binary's path. Loopback only; every process is
# stopped by its PID.
#
#   scripts/pgo.sh                 (PGO_SECS=5: seconds per training phase)
#
# llvm-profdata must read the raw profiles of rustc's own LLVM. Tried in order: $LLVM_PROFDATA,
# rustup's llvm-tools component, Debian's llvm-19 (installed when missing), and rustup's
# component again, installed; the first that merges the profiles is used.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$PWD/$TARGET_DIR" ;; esac
BIN="$TARGET_DIR/release"
SECS="${PGO_SECS:-5}"
TRAIN="$TARGET_DIR/pgo-train"
OUT="$TARGET_DIR/pgo"
PROFILE="$TARGET_DIR/pgo-profile"
. scripts/lib.sh
# One core is enough to train; pinning needs two.
[ "$(nproc)" -lt 2 ] && NO_PIN=1
. benches/lib.sh
refused() { # status what... : loadgen's JSON on stdin -> "what: N refused with status"
  python3 -c "import json, sys; n = dict(map(tuple, json.load(sys.stdin)['statuses'])).get(int(sys.argv[1]), 0); print(sys.argv[2] + ':', n, 'refused with', sys.argv[1]); sys.exit(n == 0)" "$1" "${*:2}"
}
served() { # what... : loadgen's JSON on stdin -> "what: N ok"; fails when none was
  python3 -c "import json, sys; ok = json.load(sys.stdin)['ok']; print(sys.argv[1] + ':', ok, 'ok'); sys.exit(ok == 0)" "$*"
}

echo "== pgo: instrumented build"
RUSTFLAGS="-Cprofile-generate=$PROFILE/raw" CARGO_TARGET_DIR="$TRAIN" \
  cargo build --release --locked -p gateway --bin gateway 2>&1 | tail -1
INSTRUMENTED="$TRAIN/release/gateway"

# A profile newer than the instrumented binary and this script was made by them (neither the
# sources nor the training changed); it is kept if its training was as long as asked for (CI
# trains briefly, benchmarks longer).
if [ -s "$PROFILE/gateway.profdata" ] && [ "$PROFILE/gateway.profdata" -nt "$INSTRUMENTED" ] \
  && [ "$PROFILE/gateway.profdata" -nt scripts/pgo.sh ] \
  && [ "$(cat "$PROFILE/secs" 2>/dev/null || echo 0)" -ge "$SECS" ]; then
  echo "== pgo: profile up to date"
else
  echo "== pgo: training (${SECS} s a phase)"
  rm -rf "$PROFILE/raw"
  start_mocks fast 0 0 16
  start_mocks stream 5 2 32
  GATEWAY_BIN="$INSTRUMENTED" start_gateway fast "${PORTS_fast[@]}"
  FAST=$GW_PORT; FAST_PID=$GW_PID
  # The streaming gateway writes its access log (through a pipe, as a log shipper reads it).
  ACCESS_LOG=1 GATEWAY_BIN="$INSTRUMENTED" start_gateway stream "${PORTS_stream[@]}"
  STREAM=$GW_PORT; STREAM_PID=$GW_PID
  loadgen "$FAST" --concurrency 64 --duration "$SECS" | served "request/response"
  loadgen "$FAST" --concurrency 64 --duration "$SECS" --http2 4 | served "request/response, HTTP/2"
  loadgen "$STREAM" --concurrency 256 --duration "$SECS" --stream | served "streams"
  loadgen "$STREAM" --concurrency 64 --duration "$SECS" --stream --http2 4 | served "streams, HTTP/2"
  # A deployment's defaults: the multi-threaded runtime (a worker per core), p2c_ewma, 20 % to
  # a canary version, a token budget, per-replica max_inflight.
  DEPLOY="$(free_port)"
  cat >"$WORK/deploy.toml" <<TOML
[server]
listen = "127.0.0.1:$DEPLOY"
admin_listen = "127.0.0.1:$(free_port)"
[auth]
enabled = true
[[api_keys]]
name = "bench"
sha256 = "$KEY_SHA"
requests_per_second = 1000000.0
burst = 1000000
tokens_per_minute = 1000000000
[limits]
per_ip_requests_per_second = 1000000.0
per_ip_burst = 1000000
[[models]]
name = "bench-model"
balancer = "p2c_ewma"
stable = "1"
canary = { version = "2", weight_percent = 20.0, sticky = "none" }
[[models.versions]]
name = "1"
replicas = [{ url = "http://127.0.0.1:${PORTS_stream[0]}", max_inflight = 128 }, { url = "http://127.0.0.1:${PORTS_stream[1]}", max_inflight = 128 }]
[[models.versions]]
name = "2"
replicas = [{ url = "http://127.0.0.1:${PORTS_stream[2]}", max_inflight = 128 }]
TOML
  GATEWAY_LOG=warn $SERVE "$INSTRUMENTED" serve --config "$WORK/deploy.toml" >/dev/null 2>&1 &
  DEPLOY_PID=$!
  PIDS+=($DEPLOY_PID)
  wait_port "$DEPLOY"
  loadgen "$DEPLOY" --concurrency 64 --duration "$SECS" | served "defaults, request/response"
  loadgen "$DEPLOY" --concurrency 128 --duration "$SECS" --stream | served "defaults, streams"
  # Refusals: a wrong key (401) and an unknown model (404), a few hundred of each (loadgen
  # fails a run in which nothing succeeded: the statuses tell).
  $LOAD "$BIN/loadgen" --url "http://127.0.0.1:$FAST" --model bench-model --api-key sk-wrong \
    --json --quiet --concurrency 8 --requests 300 >"$WORK/wrong-key.json" || true
  refused 401 "a wrong key" <"$WORK/wrong-key.json"
  $LOAD "$BIN/loadgen" --url "http://127.0.0.1:$FAST" --model no-such-model --api-key "$KEY" \
    --json --quiet --concurrency 8 --requests 300 >"$WORK/no-model.json" || true
  refused 404 "an unknown model" <"$WORK/no-model.json"
  # The profile is written when the process exits: a graceful stop.
  kill -INT "$FAST_PID" "$STREAM_PID" "$DEPLOY_PID"
  wait "$FAST_PID" "$STREAM_PID" "$DEPLOY_PID" || true
  ls "$PROFILE"/raw/*.profraw >/dev/null

  echo "== pgo: merging the profile"
  SYSROOT_TOOL="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | awk '/^host:/ { print $2 }')/bin/llvm-profdata"
  merge() { # tool -> 0 if it merged the raw profiles
    [ -x "$1" ] && "$1" merge -o "$PROFILE/gateway.profdata" "$PROFILE"/raw/*.profraw 2>"$WORK/merge.err"
  }
  need_debian_llvm() {
    [ -x /usr/lib/llvm-19/bin/llvm-profdata ] && return 0
    echo "== installing llvm-19 (Debian) for llvm-profdata"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
      $SUDO apt-get install -y -q --no-install-recommends llvm-19 >/dev/null
  }
  if merge "${LLVM_PROFDATA:-}" || merge "$SYSROOT_TOOL"; then :
  elif need_debian_llvm && merge /usr/lib/llvm-19/bin/llvm-profdata; then :
  elif rustup component add llvm-tools >/dev/null 2>&1 && merge "$SYSROOT_TOOL"; then :
  else
    echo "pgo: no llvm-profdata could merge the profiles of $(rustc -vV | grep LLVM):" >&2
    cat "$WORK/merge.err" >&2 2>/dev/null || true
    exit 1
  fi
  echo "$SECS" >"$PROFILE/secs"
fi

echo "== pgo: optimised build"
RUSTFLAGS="-Cprofile-use=$PROFILE/gateway.profdata" CARGO_TARGET_DIR="$OUT" \
  cargo build --release --locked -p gateway --bin gateway 2>&1 | tail -1

# It serves: one request through a replica.
start_mocks check 0 0 4
GATEWAY_BIN="$OUT/release/gateway" start_gateway check "${PORTS_check[@]}"
loadgen "$GW_PORT" --concurrency 1 --requests 1 | served "the optimised build"
echo "$OUT/release/gateway"
