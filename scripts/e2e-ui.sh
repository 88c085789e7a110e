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
. scripts/lib.sh

URLS=()
for v in 1.0.0 1.1.0; do
  start_mock --model ui-model --root "/models/ui-model/$v"
  URLS+=("$MOCK_URL")
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
start_gateway UI_TEST_ADMIN_TOKEN="operator:$TOKEN"
# Some traffic, so the figures and sparklines have something to show.
for i in $(seq 1 40); do
  curl -s -o /dev/null "http://$DATA/v1/chat/completions" -d '{"model":"ui-model","messages":[{"role":"user","content":"hi"}]}'
done
node scripts/ui-test/status-page.test.mjs "http://$ADMIN" "$TOKEN" "$WORK/gateway.toml" "$OUT" ui-model
grep -q "# The status page test's gateway" "$WORK/gateway.toml"
echo "ok - the config file kept its comments"
