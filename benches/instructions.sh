#!/usr/bin/env bash
# Instructions per request and per stream, a measure this shared and noisy machine moves far
# less than time: nginx (one worker, the same configuration as compare.sh), the gateway with
# auth, per-key and per-IP limits on, and the gateway with them off, each run under
# `valgrind --tool=callgrind` behind one mock replica; and the profile-guided build
# (scripts/pgo.sh, what the container image ships and compare.sh measures) with everything on
# (PGO=0 leaves it out). Each figure is the difference between a
# run of BIG and one of SMALL requests (8 connections), divided by BIG - SMALL, so start-up
# cancels out; streams likewise (20 tokens 2 ms apart, 20 at a time; nginx and the gateway with
# everything on). How the event loop happens to batch wake-ups still moves a figure by a few
# per cent, so each is measured REPEAT times: the median, and the range. The limiters' clock
# calibration at start-up is left out (see `instructions`). Beside each count, the misses of
# callgrind's simulated first-level instruction cache (this CPU's, 32 KiB), per request: how
# much code a request runs through, which no instruction count shows. Installs Debian's
# valgrind and nginx-light when missing. Loopback only; every process is stopped by its PID.
#
#   benches/instructions.sh   (SMALL=500 BIG=3500 SMALL_STREAMS=100 BIG_STREAMS=600 REPEAT=3 PGO=1)
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL="${SMALL:-500}"
BIG="${BIG:-3500}"
SMALL_STREAMS="${SMALL_STREAMS:-100}"
BIG_STREAMS="${BIG_STREAMS:-600}"
REPEAT="${REPEAT:-3}"
PGO="${PGO:-1}"
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
GATEWAYS=(gateway gateway-bare)
if [ "$PGO" = 1 ]; then
  PGO_BIN="$(pgo_gateway)"
  GATEWAYS+=(gateway-pgo)
fi

start_mock() { # itl-ms tokens -> its port in MOCK_PORT (not a subshell: PIDS must keep its PID)
  MOCK_PORT="$(free_port)"
  "$BIN/mock-replica" --listen "127.0.0.1:$MOCK_PORT" --model bench-model --ttft-ms 0 \
    --itl-ms "$1" --tokens "$2" >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port "$MOCK_PORT"
}
start_mock 0 16
FAST_PORT=$MOCK_PORT
start_mock 2 20
STREAM_PORT=$MOCK_PORT

KEY="sk-bench-0123456789abcdef"
KEY_SHA="$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"

write_config() { # target port replica-port -> the target's config file in $WORK
  local target=$1 port=$2 mock=$3 admin
  case $target in
    nginx)
      mkdir -p "$WORK/nginx"
      cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1; master_process off; daemon off; user root; pid $WORK/nginx/pid;
error_log $WORK/nginx/error.log; events { worker_connections 1000; }
http { access_log off; client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
  upstream replicas { least_conn; server 127.0.0.1:$mock max_fails=0; keepalive 256; keepalive_timeout 4s; }
  server { listen 127.0.0.1:$port backlog=4096; keepalive_requests 100000;
    location / { proxy_pass http://replicas; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off; proxy_read_timeout 300s; } } }
CONF
      ;;
    gateway | gateway-bare | gateway-pgo)
      admin="$(free_port)"
      {
        printf '[server]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\n' "$port" "$admin"
        if [ "$target" != gateway-bare ]; then
          printf '[auth]\nenabled = true\n[[api_keys]]\nname = "bench"\nsha256 = "%s"\n' "$KEY_SHA"
          printf 'requests_per_second = 1000000.0\nburst = 1000000\n'
          printf '[limits]\nper_ip_requests_per_second = 1000000.0\nper_ip_burst = 1000000\n'
        else
          printf '[auth]\nenabled = false\n'
        fi
        printf '[[models]]\nname = "bench-model"\nbalancer = "least_inflight"\n'
        printf '[[models.versions]]\nname = "1"\nreplicas = [{ url = "http://127.0.0.1:%s" }]\n' "$mock"
      } >"$WORK/$target.toml"
      ;;
  esac
}

instructions() { # target requests [stream] -> "instructions I1-misses" the target ran, start-up included
  local target=$1 n=$2 shape=${3:-} port pid out mock=$FAST_PORT load=(--concurrency 8)
  [ "$shape" = stream ] && mock=$STREAM_PORT && load=(--concurrency 20 --stream)
  port="$(free_port)"
  write_config "$target" "$port" "$mock"
  out="$WORK/$target-$n.callgrind"
  case $target in
    nginx) valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file="$out" \
      nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" >/dev/null 2>&1 & ;;
    *)
      local bin="$BIN/gateway"
      [ "$target" = gateway-pgo ] && bin="$PGO_BIN"
      GATEWAY_LOG=warn valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file="$out" \
        "$bin" --workers 1 serve --config "$WORK/$target.toml" >/dev/null 2>&1 &
      ;;
  esac
  pid=$!
  PIDS+=($pid)
  wait_port "$port"
  "$BIN/loadgen" --url "http://127.0.0.1:$port" --model bench-model --api-key "$KEY" --json --quiet \
    "${load[@]}" --requests "$n" --duration 300 >"$WORK/$target-$n.json"
  # nginx ends on SIGQUIT (graceful), the gateway on SIGINT (drain); callgrind writes its file then.
  if [ "$target" = nginx ]; then kill -QUIT "$pid"; else kill -INT "$pid"; fi
  wait "$pid" || true
  local ok
  ok="$(python3 -c "import json; print(json.load(open('$WORK/$target-$n.json'))['ok'])")"
  [ "$ok" = "$n" ] || { echo "$target: $ok of $n requests succeeded" >&2; exit 1; }
  # The rate limiters' clock (`quanta`) calibrates itself once at start-up, for a time, not
  # for a number of instructions: under valgrind that varies by up to 3 M between runs, which
  # the difference of two runs would spread over every request. It is taken out.
  local total calibration i1
  total="$(awk '/^(summary|totals):/ { print $2; exit }' "$out")"
  # The events are "Ir Dr Dw I1mr ...": the fifth field of the summary line.
  i1="$(awk '/^(summary|totals):/ { print $5; exit }' "$out")"
  calibration="$(callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$out" 2>/dev/null |
    awk '/quanta::Clock as core::default::Default>::default/ { gsub(",", "", $1); if ($1 + 0 > m) m = $1 + 0 }
      END { print m + 0 }')"
  echo "$((total - calibration)) $i1"
}

per() { # target small big [stream] -> per request (or stream): instructions median (min-max), I1 misses median
  local target=$1 small=$2 big=$3 shape=${4:-} runs=() i a b
  for ((i = 0; i < REPEAT; i++)); do
    read -r a a1 < <(instructions "$target" "$small" "$shape")
    read -r b b1 < <(instructions "$target" "$big" "$shape")
    runs+=("$(((b - a) / (big - small))) $(((b1 - a1) / (big - small)))")
  done
  local ins i1
  ins="$(printf '%s\n' "${runs[@]}" | awk '{ print $1 }' | sort -n |
    awk '{ v[NR] = $1 } END { printf "%6d  (%d-%d)", v[int((NR + 1) / 2)], v[1], v[NR] }')"
  i1="$(printf '%s\n' "${runs[@]}" | awk '{ print $2 }' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"
  echo "$ins  I1 misses $i1"
}

echo "== instructions per request (callgrind; $BIG minus $SMALL requests; median of $REPEAT)"
for target in nginx "${GATEWAYS[@]}"; do
  printf '%-13s %s\n' "$target" "$(per "$target" "$SMALL" "$BIG")"
done
echo "== instructions per 20-token stream ($BIG_STREAMS minus $SMALL_STREAMS streams; median of $REPEAT)"
STREAMED=(nginx gateway)
[ "$PGO" = 1 ] && STREAMED+=(gateway-pgo)
for target in "${STREAMED[@]}"; do
  printf '%-13s %s\n' "$target" "$(per "$target" "$SMALL_STREAMS" "$BIG_STREAMS" stream)"
done
