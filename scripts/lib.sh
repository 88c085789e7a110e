# Shared by the end-to-end scripts and benches/compare.sh (sourced, not run).
# Every process a script starts is recorded in PIDS and stopped by its PID on exit.
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# A free TCP port on 127.0.0.1 (for programs that take a port, not `:0`).
free_port() {
  "${PYTHON:-python3}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The gateway's profile-guided build (scripts/pgo.sh makes it when it is missing or stale;
# its progress goes to stderr): prints the binary's path.
pgo_gateway() {
  scripts/pgo.sh | tee "$WORK/pgo.log" >&2 || return 1
  tail -1 "$WORK/pgo.log"
}

# Waits up to 20 s until something listens on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 1 400); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 never opened" >&2; return 1
}

# Waits until FILE contains a line matching REGEX; prints the first match.
wait_for() {
  local file=$1 regex=$2
  for _ in $(seq 1 200); do
    if grep -qE "$regex" "$file" 2>/dev/null; then grep -oE "$regex" "$file" | head -1; return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for /$regex/ in $file:" >&2; cat "$file" >&2; return 1
}

# The address a gateway started with `listen = "127.0.0.1:0"` logged for its LISTENER
# ("data" or "admin").
listener_addr() {
  wait_for "$1" "\"message\":\"$2 listener ready\",\"addr\":\"127\\.0\\.0\\.1:[0-9]+\"" \
    | grep -oE '127\.0\.0\.1:[0-9]+'
}

# Starts the gateway on $WORK/gateway.toml, with VAR=value arguments added to its environment
# (stopped by PID on exit); sets GW_PID, DATA and ADMIN (the listeners' addresses).
start_gateway() {
  env "$@" "${BIN:-target/debug}/gateway" serve --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
  GW_PID=$!
  PIDS+=($GW_PID)
  DATA="$(listener_addr "$WORK/gateway.log" data)"
  ADMIN="$(listener_addr "$WORK/gateway.log" admin)"
}

# Starts a mock replica with the given flags on a free port (stopped by PID on exit);
# sets MOCK_URL. Not for $(...): the PID must be recorded in this shell.
start_mock() {
  local log="$WORK/mock-$RANDOM$RANDOM.log"
  "${BIN:-target/debug}/mock-replica" --listen 127.0.0.1:0 "$@" 2>"$log" &
  PIDS+=($!)
  MOCK_URL="$(wait_for "$log" 'http://127\.0\.0\.1:[0-9]+')"
}
