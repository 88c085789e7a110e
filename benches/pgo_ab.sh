#!/usr/bin/env bash
# CPU per request and throughput of nginx, the gateway's plain release build and its
# profile-guided build (scripts/pgo.sh), in rounds of runs seconds apart: 64 connections,
# request/response, SECS seconds each, the three in an order that rotates every round, set up
# as compare.sh sets them up (benches/lib.sh: auth, limits, metrics and routing on; load on
# core 0, everything else on core 1). Prints every run, then the medians of the rounds' ratios
# (a round's three runs are seconds apart, so the host's drift cancels in its ratios).
# Loopback only; every process is stopped by its PID. Installs Debian's nginx-light when
# missing.
#
#   benches/pgo_ab.sh            (ROUNDS=8 SECS=5 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-8}"
SECS="${SECS:-5}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/release"
. scripts/lib.sh
. benches/lib.sh
need_nginx
scripts/pgo.sh | tee "$WORK/pgo.log"
PGO_BIN="$(tail -1 "$WORK/pgo.log")"

start_mocks fast 0 0 16
start_nginx fast "${PORTS_fast[@]}"
PORT_nginx=$NGINX_PORT; PIDS_nginx=$NGINX_PIDS
start_gateway plain "${PORTS_fast[@]}"
PORT_plain=$GW_PORT; PIDS_plain=$GW_PID
GATEWAY_BIN="$PGO_BIN" start_gateway pgo "${PORTS_fast[@]}"
PORT_pgo=$GW_PORT; PIDS_pgo=$GW_PID
sleep 1

user_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14}' /proc/"$p"/stat))); done; echo "$t"; }
echo "== $ROUNDS rounds of ${SECS} s runs: round, target, req/s, CPU µs per request, of it user"
for round in $(seq 1 "$ROUNDS"); do
  for target in $(rotated "$round" nginx plain pgo); do
    port="PORT_$target"; pids="PIDS_$target"
    cpu0=$(cpu_ticks ${!pids}); user0=$(user_ticks ${!pids})
    loadgen "${!port}" --concurrency 64 --duration "$SECS" >"$WORK/run.json"
    cpu1=$(cpu_ticks ${!pids}); user1=$(user_ticks ${!pids})
    python3 - "$round" "$target" "$WORK/run.json" "$((cpu1 - cpu0))" "$((user1 - user0))" "$HZ" "$SECS" \
      <<'PY' | tee -a "$WORK/runs.txt"
import json, sys
rnd, target, path, cpu, user, hz, secs = sys.argv[1:8]
ok = max(json.load(open(path))["ok"], 1)
us = lambda ticks: int(ticks) * 1e6 / int(hz) / ok
print(f"{rnd} {target} {ok / float(secs):.0f} {us(cpu):.1f} {us(user):.1f}")
PY
  done
done

python3 - "$WORK/runs.txt" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    rnd, target, rps, cpu, user = line.split()
    runs.setdefault(rnd, {})[target] = (float(rps), float(cpu), float(user))
def ratio(a, b, i):
    values = [r[a][i] / r[b][i] for r in runs.values() if a in r and b in r and r[b][i] > 0]
    return f"{statistics.median(values):.2f}× ({min(values):.2f}–{max(values):.2f})"
print(f"\nmedians of {len(runs)} rounds' ratios (range)")
print("| | CPU per request | user time | throughput |")
print("|---|---|---|---|")
for a, b in (("pgo", "nginx"), ("plain", "nginx"), ("pgo", "plain")):
    print(f"| {a} ÷ {b} | {ratio(a, b, 1)} | {ratio(a, b, 2)} | {ratio(a, b, 0)} |")
PY
