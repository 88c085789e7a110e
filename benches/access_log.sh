#!/usr/bin/env bash
# CPU per request and throughput with the ACCESS LOG ON, side by side in one run: nginx
# (`access_log` to a file, its default of a write per line) and the gateway (JSON access lines
# on stdout, drained through a pipe as a log shipper would), each behind the same three mock
# replicas, one worker each. `compare.sh` runs both with their logs off, as issue 7 set it up;
# this is the same request/response load with the logs as they run in production.
# Optionally GATEWAY_BEFORE=path/to/an/older/gateway adds that binary as a third target.
# ROUNDS rounds of SECS seconds at 64 connections, targets in an order rotating each round;
# medians. The set-up is compare.sh's (`benches/lib.sh`, with ACCESS_LOG=1): the load
# generator on core 0, everything else on core 1. Loopback only; every process is stopped by
# its PID. Installs Debian's nginx-light when missing.
#
#   benches/access_log.sh            (ROUNDS=6 SECS=5 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-6}"
SECS="${SECS:-5}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/release"
. scripts/lib.sh
ACCESS_LOG=1
. benches/lib.sh
need_nginx

start_mocks fast 0 0 16
declare -A port pids
start_nginx fast "${PORTS_fast[@]}"; port[nginx]=$NGINX_PORT; pids[nginx]=$NGINX_PIDS
start_gateway fast "${PORTS_fast[@]}"; port[gateway]=$GW_PORT; pids[gateway]=$GW_PID
names=(nginx gateway)
if [ -n "${GATEWAY_BEFORE:-}" ]; then
  GATEWAY_BIN="$GATEWAY_BEFORE" start_gateway before "${PORTS_fast[@]}"
  port[before]=$GW_PORT; pids[before]=$GW_PID
  names+=(before)
fi

echo "== measuring: $ROUNDS rounds, ${SECS}s each, 64 connections, access logs on"
cpu_rounds "${names[@]}" > "$WORK/runs"
python3 - "$WORK/runs" "$HZ" "$SECS" <<'PY'
import statistics, sys
runs, hz, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
by = {}
for line in open(runs):
    _, name, ok, u, s = line.split()
    ok, u, s = int(ok), int(u), int(s)
    by.setdefault(name, []).append((ok / secs, 1e6 * (u + s) / hz / ok, 1e6 * u / hz / ok, 1e6 * s / hz / ok))
med = {n: [statistics.median(r[i] for r in v) for i in range(4)] for n, v in by.items()}
print("\n| with the access log on (medians) | " + " | ".join(med) + " | gateway ÷ nginx |")
print("|---" * (len(med) + 2) + "|")
rows = [("throughput", 0, "{:.0f} req/s"), ("CPU per request", 1, "{:.1f} µs"),
        ("user CPU per request", 2, "{:.1f} µs"), ("system CPU per request", 3, "{:.1f} µs")]
for label, i, fmt in rows:
    cells = " | ".join(fmt.format(med[n][i]) for n in med)
    print(f"| {label} | {cells} | {med['gateway'][i] / med['nginx'][i]:.2f}× |")
PY
