#!/usr/bin/env bash
# End-to-end test: two mock-replica processes, the gateway binary in front of them, and the
# official `openai` Python client driving it. Every process started here is stopped by its PID.
# Needs: built binaries in $TARGET_DIR/debug, and a Python with `openai` ($PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/debug"
PYTHON="${PYTHON:-.venv/bin/python}"
. scripts/lib.sh


URLS=()
for i in 1 2; do
  start_mock --model e2e-model --ttft-ms 5 --itl-ms 2 --tokens 16
  URLS+=("$MOCK_URL")
done

cat >"$WORK/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[auth]
enabled = false

[[models]]
name = "e2e-model"
aliases = ["e2e-alias"]

[[models.versions]]
name = "1.0.0"
replicas = [{ url = "${URLS[0]}" }, { url = "${URLS[1]}" }]
TOML

"$BIN/gateway" check-config "$WORK/gateway.toml"
start_gateway
echo "gateway on $DATA, replicas ${URLS[*]}"

"$PYTHON" scripts/e2e_openai.py "http://$DATA/v1" e2e-model e2e-alias

# Graceful stop: SIGTERM, exit status 0.
kill -TERM "$GW_PID"
wait "$GW_PID"
echo "gateway exited 0 after SIGTERM"
