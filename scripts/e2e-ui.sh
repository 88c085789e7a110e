#!/usr/bin/env bash
# Browser test of the status page: two mock-replica processes, the gateway (two versions, a
# canary at 10 %, a config file it writes back to), and Playwright driving Debian's chromium.
# Screenshots go to $UI_OUT (default target/ui-test). Every process is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/debug"
OUT="${UI_OUT:-$TARGET_DIR/ui-test}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
wait_for() {
  local file=$1 regex=$2
  for _ in $(seq 1 200); do
    if grep -qE "$regex" "$file" 2>/dev/null; then grep -oE "$regex" "$file" | head -1; return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for /$regex/ in $file:" >&2; cat "$file" >&2; return 1
}

URLS=()
for v in 1.0.0 1.1.0; do
  "$BIN/mock-replica" --listen 127.0.0.1:0 --model ui-model --root "/models/ui-model/$v" 2>"$WORK/mock-$v.log" &
  PIDS+=($!)
  URLS+=("$(wait_for "$WORK/mock-$v.log" 'http://127\.0\.0\.1:[0-9]+')")
done
cat >"$WORK/gateway.toml" <<TOML
# The status page test's gateway. Comments like this one must survive the page's changes.
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_env = "UI_TEST_ADMIN_TOKEN"

[auth]
enabled = false

[[models]]
name = "ui-model"
stable = "1.0.0"
canary = { version = "1.1.0", weight_percent = 10.0, sticky = "none", guard = { max_error_rate = 0.05, min_requests = 100, window = "60s" } }

[[models.versions]]
name = "1.0.0"
replicas = [{ url = "${URLS[0]}" }]

[[models.versions]]
name = "1.1.0"
replicas = [{ url = "${URLS[1]}" }]
TOML
TOKEN="ui-$RANDOM-$RANDOM"
UI_TEST_ADMIN_TOKEN="operator:$TOKEN" "$BIN/gateway" serve --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
DATA="$(wait_for "$WORK/gateway.log" '"message":"data listener ready","addr":"127\.0\.0\.1:[0-9]+"' | grep -oE '127\.0\.0\.1:[0-9]+')"
ADMIN="$(wait_for "$WORK/gateway.log" '"message":"admin listener ready","addr":"127\.0\.0\.1:[0-9]+"' | grep -oE '127\.0\.0\.1:[0-9]+')"
# Some traffic, so the figures and sparklines have something to show.
for i in $(seq 1 40); do
  curl -s -o /dev/null "http://$DATA/v1/chat/completions" -d '{"model":"ui-model","messages":[{"role":"user","content":"hi"}]}'
done
node scripts/ui-test/status-page.test.mjs "http://$ADMIN" "$TOKEN" "$WORK/gateway.toml" "$OUT" ui-model
grep -q "# The status page test's gateway" "$WORK/gateway.toml"
echo "ok - the config file kept its comments"
