#!/usr/bin/env bash
# Instructions per request, a measure this shared and noisy machine cannot move: nginx (one
# worker, the same configuration as compare.sh), the gateway with auth, per-key and per-IP limits
# on, and the gateway with them off, each run under `valgrind --tool=callgrind` behind one mock
# replica. Each figure is the difference between a run of BIG and one of SMALL requests (8
# connections), divided by BIG - SMALL, so start-up cancels out. Installs Debian's valgrind and
# nginx-light when missing. Loopback only; every process is stopped by its PID.
#
#   benches/instructions.sh            (SMALL=500 BIG=3500 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL="${SMALL:-500}"
BIG="${BIG:-3500}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/release"
. scripts/lib.sh

NEED=()
command -v valgrind >/dev/null || NEED+=(valgrind)
command -v nginx >/dev/null || NEED+=(nginx-light)
if [ ${#NEED[@]} -gt 0 ]; then
  echo "== installing ${NEED[*]} (Debian)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${NEED[@]}" >/dev/null
fi

echo "== building (release)"
cargo build --release --locked -p gateway -p loadtest --bins 2>&1 | tail -1

MOCK_PORT="$(free_port)"
"$BIN/mock-replica" --listen "127.0.0.1:$MOCK_PORT" --model bench-model --ttft-ms 0 --itl-ms 0 --tokens 16 2>/dev/null &
PIDS+=($!)
wait_port "$MOCK_PORT"

KEY="sk-bench-0123456789abcdef"
KEY_SHA="$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"

write_config() { # target port -> the target's config file in $WORK
  local target=$1 port=$2 admin
  case $target in
    nginx)
      mkdir -p "$WORK/nginx"
      cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1; master_process off; daemon off; user root; pid $WORK/nginx/pid;
error_log $WORK/nginx/error.log; events { worker_connections 1000; }
http { access_log off; client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
  upstream replicas { least_conn; server 127.0.0.1:$MOCK_PORT max_fails=0; keepalive 256; keepalive_timeout 4s; }
  server { listen 127.0.0.1:$port backlog=4096; keepalive_requests 100000;
    location / { proxy_pass http://replicas; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off; proxy_read_timeout 300s; } } }
CONF
      ;;
    gateway | gateway-bare)
      admin="$(free_port)"
      {
        printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\n' "$port" "$admin"
        if [ "$target" = gateway ]; then
          printf '[auth]\nenabled = true\n[[api_keys]]\nname = "bench"\nsha256 = "%s"\n' "$KEY_SHA"
          printf 'requests_per_second = 1000000.0\nburst = 1000000\n'
          printf '[limits]\nper_ip_requests_per_second = 1000000.0\nper_ip_burst = 1000000\n'
        else
          printf '[auth]\nenabled = false\n'
        fi
        printf '[[models]]\nname = "bench-model"\nbalancer = "least_inflight"\n'
        printf '[[models.versions]]\nname = "1"\nreplicas = [{ url = "http://127.0.0.1:%s" }]\n' "$MOCK_PORT"
      } >"$WORK/$target.toml"
      ;;
  esac
}

instructions() { # target requests -> total instructions the target ran, start-up included
  local target=$1 n=$2 port pid out
  port="$(free_port)"
  write_config "$target" "$port"
  out="$WORK/$target-$n.callgrind"
  case $target in
    nginx) valgrind --tool=callgrind --callgrind-out-file="$out" \
      nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" >/dev/null 2>&1 & ;;
    *) GATEWAY_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$BIN/gateway" --workers 1 serve --config "$WORK/$target.toml" >/dev/null 2>&1 & ;;
  esac
  pid=$!
  PIDS+=($pid)
  wait_port "$port"
  "$BIN/loadgen" --url "http://127.0.0.1:$port" --model bench-model --api-key "$KEY" --json --quiet \
    --concurrency 8 --requests "$n" --duration 300 >"$WORK/$target-$n.json"
  # nginx ends on SIGQUIT (graceful), the gateway on SIGINT (drain); callgrind writes its file then.
  if [ "$target" = nginx ]; then kill -QUIT "$pid"; else kill -INT "$pid"; fi
  wait "$pid" || true
  local ok
  ok="$(python3 -c "import json; print(json.load(open('$WORK/$target-$n.json'))['ok'])")"
  [ "$ok" = "$n" ] || { echo "$target: $ok of $n requests succeeded" >&2; exit 1; }
  awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

echo "== instructions per request (callgrind; $BIG minus $SMALL requests)"
for target in nginx gateway gateway-bare; do
  small="$(instructions "$target" "$SMALL")"
  big="$(instructions "$target" "$BIG")"
  printf '%-13s %6d\n' "$target" $(((big - small) / (BIG - SMALL)))
done
