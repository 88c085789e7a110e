#!/usr/bin/env bash
# Deployment checks and a real Prometheus scraping a running gateway:
#  - promtool checks the alert rules and the Prometheus config;
#  - the Kubernetes manifests pass kubernetes-validate (PyPI; bundled schemas, strict mode);
#  - the ConfigMap's embedded gateway.toml passes `gateway check-config`;
#  - a mock replica, the gateway and Prometheus (Debian's) run on loopback; e2e_prometheus.py
#    sends traffic and compares what Prometheus reports with what was sent.
# Every process started here is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/debug"
PYTHON="${PYTHON:-.venv/bin/python}"
VENV_BIN="$(dirname "$PYTHON")"
. scripts/lib.sh

promtool check rules docker/alerts.yml
promtool test rules docker/alerts.test.yml
promtool check config docker/prometheus.yml
"$VENV_BIN/kubernetes-validate" -k 1.30.0 --strict docker/kubernetes/*.yaml
"$PYTHON" - "$WORK/k8s-gateway.toml" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open("docker/kubernetes/configmap.yaml")):
    open(sys.argv[1], "w").write(doc["data"]["gateway.toml"])
PY
REDIS_URL=redis://127.0.0.1:6379 "$BIN/gateway" check-config "$WORK/k8s-gateway.toml"
"$BIN/gateway" check-config docker/gateway.compose.toml

start_mock --model prom-model --ttft-ms 20 --itl-ms 5 --tokens 16
REPLICA="$MOCK_URL"
cat >"$WORK/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[auth]
enabled = false
[[models]]
name = "prom-model"
[[models.versions]]
name = "1.0.0"
replicas = [{ url = "$REPLICA" }]
TOML
start_gateway

PROM_PORT="$(free_port)"
cat >"$WORK/prometheus.yml" <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$PWD/docker/alerts.yml"]
scrape_configs:
  - job_name: gateway
    static_configs: [{targets: ["$ADMIN"]}]
YML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  if "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PROM_PORT/-/ready', timeout=1)" 2>/dev/null; then break; fi
  sleep 0.1
done
echo "gateway $DATA (admin $ADMIN), Prometheus 127.0.0.1:$PROM_PORT"
"$PYTHON" scripts/e2e_prometheus.py "http://$DATA" "http://$ADMIN" "http://127.0.0.1:$PROM_PORT" prom-model
