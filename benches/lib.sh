# Shared by benches/compare.sh, access_log.sh, wakeup.sh, pgo_ab.sh and scripts/pgo.sh
# (sourced, after scripts/lib.sh, with BIN set): nginx installed when missing (need_nginx),
# the release build, the cores (load generator on 0, everything else on 1; MOCK_CORE moves
# replicas), the replicas, nginx and the gateway as the scripts configure them, the load
# generator's call, the rotation of targets, CPU and steal ticks, rounds of CPU runs.
# ACCESS_LOG=1 turns both proxies' access logs on (nginx to a file, a write per line, its
# default; the gateway's JSON lines on stdout, drained through a pipe as a log shipper would);
# off otherwise, as issue 7's comparison runs them.
# nginx from Debian's package, installed when missing (the baseline every ratio is to); the
# scripts that compare call it.
need_nginx() {
  command -v nginx >/dev/null && return 0
  echo "== installing nginx-light (Debian)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends nginx-light >/dev/null
  command -v nginx >/dev/null || { echo "nginx could not be installed (apt-get install nginx-light)" >&2; exit 1; }
}

echo "== building (release)"
cargo build --release --locked -p gateway -p loadtest --bins 2>&1 | tail -1

LOAD="taskset -c 0"
SERVE="taskset -c 1"
# NO_PIN=1 (scripts/pgo.sh on one core): nothing pinned.
if [ "${NO_PIN:-0}" = 1 ]; then LOAD=""; SERVE=""; fi
rss_kb() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' /proc/"$p"/status 2>/dev/null || echo 0))); done; echo "$t"; }
# User and system ticks of PIDS (nginx: its master and worker), summed: "user system".
ticks() { awk '{u += $14; s += $15} END {print u, s}' $(printf '/proc/%s/stat ' "$@"); }
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' /proc/"$p"/stat 2>/dev/null || echo 0))); done; echo "$t"; }
HZ="$(getconf CLK_TCK)"
# Each core's stolen and total ticks (/proc/stat): the time the hypervisor ran something else
# on the core while this VM wanted it. "cpu0 steal total cpu1 steal total".
host_ticks() {
  awk '/^cpu[01] / { t = 0; for (i = 2; i <= NF; i++) t += $i; printf "%s %d %d ", $1, $9, t } END { print "" }' /proc/stat
}
# The targets, starting at the round's position in the list (round 1: as given), so that no
# target is always first or last.
rotated() { # round targets...
  local r=$1; shift
  local all=("$@")
  local k=$(( (r - 1) % ${#all[@]} ))
  echo "${all[@]:k}" "${all[@]:0:k}"
}

# Replicas: 3 fast ones for request/response tests, 3 slow-streaming ones for stream tests.
# MOCK_CORE picks another core for them; further arguments go to each replica.
start_mocks() { # name ttft itl tokens [mock-replica args...] -> ports in $PORTS_<name>
  local name=$1 ttft=$2 itl=$3 tokens=$4 ports=()
  shift 4
  for i in 1 2 3; do
    local port; port="$(free_port)"
    local pin=(taskset -c "${MOCK_CORE:-1}")
    [ "${NO_PIN:-0}" = 1 ] && pin=()
    "${pin[@]}" "$BIN/mock-replica" --listen "127.0.0.1:$port" --model bench-model \
      --ttft-ms "$ttft" --itl-ms "$itl" --tokens "$tokens" "$@" 2>/dev/null &
    PIDS+=($!)
    wait_port "$port"
    ports+=("$port")
  done
  eval "PORTS_$name=(${ports[*]})"
}
start_nginx() { # name ports... -> NGINX_PORT, NGINX_PIDS
  local name=$1; shift
  local port; port="$(free_port)"
  mkdir -p "$WORK/nginx-$name"
  {
    echo "worker_processes 1; daemon off; user root; pid $WORK/nginx-$name/pid; error_log $WORK/nginx-$name/error.log;"
    echo "worker_rlimit_nofile 200000; events { worker_connections 60000; }"
    if [ "${ACCESS_LOG:-0}" = 1 ]; then
      echo "http { access_log $WORK/nginx-$name/access.log; client_body_temp_path $WORK/nginx-$name; proxy_temp_path $WORK/nginx-$name;"
    else
      echo "http { access_log off; client_body_temp_path $WORK/nginx-$name; proxy_temp_path $WORK/nginx-$name;"
    fi
    echo "  upstream replicas { least_conn;"
    for p in "$@"; do echo "    server 127.0.0.1:$p max_fails=0;"; done
    echo "    keepalive 256; keepalive_timeout 4s; }"
    # NGINX_H2=1: HTTP/2 without TLS (prior knowledge) on the listener, for the h2 clients.
    if [ "${NGINX_H2:-0}" = 1 ]; then
      echo "  http2_max_concurrent_streams 1000;"
      echo "  server { listen 127.0.0.1:$port http2 backlog=4096; keepalive_requests 100000;"
    else
      echo "  server { listen 127.0.0.1:$port backlog=4096; keepalive_requests 100000;"
    fi
    echo "    location / { proxy_pass http://replicas; proxy_http_version 1.1; proxy_set_header Connection \"\";"
    echo "      proxy_buffering off; proxy_read_timeout 300s; } } }"
  } >"$WORK/nginx-$name/nginx.conf"
  $SERVE nginx -c "$WORK/nginx-$name/nginx.conf" -p "$WORK/nginx-$name" &
  PIDS+=($!)
  NGINX_MASTER=$!
  wait_port "$port"
  NGINX_PORT=$port
  NGINX_PIDS="$NGINX_MASTER $(pgrep -P "$NGINX_MASTER" | tr '\n' ' ')"
}

KEY="sk-bench-0123456789abcdef"
# ROUNDS rounds of SECS-second runs at 64 connections (request/response), the targets in an
# order rotating each round: a line "round target requests user-ticks system-ticks" per run.
# Each target names its entries in the caller's associative arrays `port` and `pids`.
cpu_rounds() { # targets... -> lines on stdout
  local r name u0 s0 u1 s1 ok
  for r in $(seq 1 "$ROUNDS"); do
    for name in $(rotated "$r" "$@"); do
      read -r u0 s0 < <(ticks ${pids[$name]})
      loadgen "${port[$name]}" --concurrency 64 --duration "$SECS" >"$WORK/cpu-round.json"
      read -r u1 s1 < <(ticks ${pids[$name]})
      ok=$(python3 -c "import json; print(json.load(open('$WORK/cpu-round.json'))['ok'])")
      echo "$r $name $ok $((u1 - u0)) $((s1 - s0))"
    done
  done
}
loadgen() { # port args... -> JSON on stdout (the load generator on its core, the bench key)
  local port=$1; shift
  $LOAD "$BIN/loadgen" --url "http://127.0.0.1:$port" --model bench-model --api-key "$KEY" --json --quiet "$@"
}
KEY_SHA="$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"
start_gateway() { # name ports... -> GW_PORT, GW_PID (name "bare": no auth, no limits)
  local name=$1; shift
  local port admin; port="$(free_port)"; admin="$(free_port)"
  local replicas=""
  for p in "$@"; do replicas+="{ url = \"http://127.0.0.1:$p\" }, "; done
  # "bare": the same gateway without auth and limits (metrics and routing stay).
  local features="[auth]
enabled = false"
  if [ "$name" != bare ]; then
    features="[auth]
enabled = true
[[api_keys]]
name = \"bench\"
sha256 = \"$KEY_SHA\"
requests_per_second = 1000000.0
burst = 1000000
[limits]
per_ip_requests_per_second = 1000000.0
per_ip_burst = 1000000"
  fi
  cat >"$WORK/gateway-$name.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
[upstream]
response_head_timeout = "60s"
$features
[[models]]
name = "bench-model"
balancer = "least_inflight"
[[models.versions]]
name = "1"
replicas = [${replicas%, }]
TOML
  if [ "${ACCESS_LOG:-0}" = 1 ]; then
    mkfifo "$WORK/gateway-$name.log"
    cat "$WORK/gateway-$name.log" >/dev/null &
    PIDS+=($!)
    GATEWAY_LOG=info $SERVE "${GATEWAY_BIN:-$BIN/gateway}" --workers 1 serve --config "$WORK/gateway-$name.toml" \
      >"$WORK/gateway-$name.log" 2>&1 &
  else
    GATEWAY_LOG=warn $SERVE "${GATEWAY_BIN:-$BIN/gateway}" --workers 1 serve --config "$WORK/gateway-$name.toml" \
      >/dev/null 2>&1 &
  fi
  PIDS+=($!)
  GW_PID=$!
  wait_port "$port"
  GW_PORT=$port
}
