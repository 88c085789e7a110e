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
PGO_BIN="$(pgo_gateway)"

start_mocks fast 0 0 16
declare -A port pids
start_nginx fast "${PORTS_fast[@]}"; port[nginx]=$NGINX_PORT; pids[nginx]=$NGINX_PIDS
start_gateway plain "${PORTS_fast[@]}"; port[plain]=$GW_PORT; pids[plain]=$GW_PID
GATEWAY_BIN="$PGO_BIN" start_gateway pgo "${PORTS_fast[@]}"; port[pgo]=$GW_PORT; pids[pgo]=$GW_PID
sleep 1

echo "== $ROUNDS rounds of ${SECS} s runs: round, target, requests, user and system ticks"
cpu_rounds nginx plain pgo | tee "$WORK/runs.txt"

python3 - "$WORK/runs.txt" "$HZ" "$SECS" <<'PY'
import statistics, sys
path, hz, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
runs = {}  # round -> target -> (req/s, CPU µs per request, of it user)
for line in open(path):
    rnd, target, ok, user, system = line.split()
    ok = max(int(ok), 1)
    us = lambda ticks: ticks * 1e6 / hz / ok
    runs.setdefault(rnd, {})[target] = (ok / secs, us(int(user) + int(system)), us(int(user)))
def ratio(a, b, i):
    values = [r[a][i] / r[b][i] for r in runs.values() if a in r and b in r and r[b][i] > 0]
    return f"{statistics.median(values):.2f}× ({min(values):.2f}–{max(values):.2f})"
print(f"\nmedians of {len(runs)} rounds' ratios (range)")
print("| | CPU per request | user time | throughput |")
print("|---|---|---|---|")
for a, b in (("pgo", "nginx"), ("plain", "nginx"), ("pgo", "plain")):
    print(f"| {a} ÷ {b} | {ratio(a, b, 1)} | {ratio(a, b, 2)} | {ratio(a, b, 0)} |")
PY
