#!/usr/bin/env bash
# CPU per request and throughput with the ACCESS LOG ON, side by side in one run: nginx
# (`access_log` to a file, its default of a write per line) and the gateway (JSON access lines
# on stdout, drained through a pipe as a log shipper would), each behind the same three mock
# replicas, one worker each. `compare.sh` runs both with their logs off, as issue 7 set it up;
# this is the same request/response load with the logs as they run in production.
# Optionally GATEWAY_BEFORE=path/to/an/older/gateway adds that binary as a third target.
# ROUNDS rounds of SECS seconds at 64 connections, targets in an order rotating each round;
# medians. The load generator runs on core 0, everything else on core 1. Loopback only;
# every process is stopped by its PID. Installs Debian's nginx-light when missing.
#
#   benches/access_log.sh            (ROUNDS=6 SECS=5 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-6}"
SECS="${SECS:-5}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/release"
. scripts/lib.sh
if ! command -v nginx >/dev/null; then
  echo "== installing nginx-light (Debian)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends nginx-light >/dev/null
fi
echo "== building (release)"
cargo build --release --locked -p gateway -p loadtest --bins 2>&1 | tail -1
HZ="$(getconf CLK_TCK)"

ports=()
for _ in 1 2 3; do
  p=$(free_port)
  taskset -c 1 "$BIN/mock-replica" --listen "127.0.0.1:$p" --model bench-model --ttft-ms 0 --itl-ms 0 --tokens 16 2>/dev/null &
  PIDS+=($!); wait_port "$p"; ports+=("$p")
done

NGINX_PORT=$(free_port); mkdir -p "$WORK/nginx"
{
  echo "worker_processes 1; daemon off; master_process off; pid $WORK/nginx/pid; error_log $WORK/nginx/error.log;"
  [ "$(id -u)" -eq 0 ] && echo "user root;"
  echo "events { worker_connections 6000; }"
  echo "http { access_log $WORK/nginx/access.log; client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;"
  echo "upstream replicas { least_conn;"
  for p in "${ports[@]}"; do echo "server 127.0.0.1:$p max_fails=0;"; done
  echo "keepalive 256; keepalive_timeout 4s; }"
  echo "server { listen 127.0.0.1:$NGINX_PORT backlog=4096; keepalive_requests 100000;"
  echo "location / { proxy_pass http://replicas; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; } } }"
} > "$WORK/nginx/nginx.conf"
taskset -c 1 nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
NGINX_PID=$!; PIDS+=($NGINX_PID); wait_port "$NGINX_PORT"

KEY="sk-bench-0123456789abcdef"
SHA=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
reps=""; for p in "${ports[@]}"; do reps+="{ url = \"http://127.0.0.1:$p\" }, "; done
start_gateway() { # binary name -> sets TARGET_PORT TARGET_PID
  local gp ap; gp=$(free_port); ap=$(free_port)
  cat > "$WORK/$2.toml" <<TOML
[server]
listen = "127.0.0.1:$gp"
admin_listen = "127.0.0.1:$ap"
[auth]
enabled = true
[[api_keys]]
name = "bench"
sha256 = "$SHA"
requests_per_second = 1000000.0
burst = 1000000
[limits]
per_ip_requests_per_second = 1000000.0
per_ip_burst = 1000000
[[models]]
name = "bench-model"
balancer = "least_inflight"
[[models.versions]]
name = "1"
replicas = [${reps%, }]
TOML
  # stdout through a pipe that is read, as a log shipper reads it.
  mkfifo "$WORK/$2.log"
  cat "$WORK/$2.log" > /dev/null &
  PIDS+=($!)
  GATEWAY_LOG=info taskset -c 1 "$1" --workers 1 serve --config "$WORK/$2.toml" > "$WORK/$2.log" 2>&1 &
  TARGET_PID=$!; PIDS+=($TARGET_PID); wait_port "$gp"; TARGET_PORT=$gp
}
names=(nginx gateway); declare -A port pid
port[nginx]=$NGINX_PORT; pid[nginx]=$NGINX_PID
start_gateway "$BIN/gateway" gateway; port[gateway]=$TARGET_PORT; pid[gateway]=$TARGET_PID
if [ -n "${GATEWAY_BEFORE:-}" ]; then
  start_gateway "$GATEWAY_BEFORE" before; port[before]=$TARGET_PORT; pid[before]=$TARGET_PID
  names+=(before)
fi

echo "== measuring: $ROUNDS rounds, ${SECS}s each, 64 connections, access logs on"
: > "$WORK/runs"
for r in $(seq 0 $((ROUNDS - 1))); do
  n=${#names[@]}
  for i in $(seq 0 $((n - 1))); do
    name=${names[$(((i + r) % n))]}
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/${pid[$name]}/stat")
    taskset -c 0 "$BIN/loadgen" --url "http://127.0.0.1:${port[$name]}" --model bench-model --api-key "$KEY" \
      --json --quiet --concurrency 64 --duration "$SECS" > "$WORK/out.json"
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/${pid[$name]}/stat")
    ok=$(python3 -c "import json; print(json.load(open('$WORK/out.json'))['ok'])")
    echo "$name $ok $((u1 - u0)) $((s1 - s0))" >> "$WORK/runs"
  done
done
python3 - "$WORK/runs" "$HZ" "$SECS" <<'PY'
import statistics, sys
runs, hz, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
by = {}
for line in open(runs):
    name, ok, u, s = line.split()
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
