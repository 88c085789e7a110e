#!/usr/bin/env bash
# All tests, in the order a reviewer would want them to fail: formatting, lints, unit and
# integration tests, then the end-to-end run with the official openai client.
# Expects the Python venv from .ci/run (or PYTHON pointing at a Python with `openai`).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check"; cargo fmt --all --check
echo "== cargo clippy"; cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"; cargo test --workspace --locked
echo "== e2e: openai client"; cargo build --workspace --locked --bins; scripts/e2e-openai.sh
echo "== e2e: Prometheus, promtool, dashboard, alerts, Kubernetes"; scripts/e2e-prometheus.sh
echo "== e2e: status page in Chromium (Playwright)"; scripts/e2e-ui.sh
echo "== all tests passed"
