#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing (scripts/setup.sh), then every
# test, in the order a reviewer would want them to fail: formatting, lints, unit and
# integration tests, then the end-to-end runs (openai client, Prometheus, Chromium), then the
# profile-guided build the container image ships (short training: it must build and serve).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== setup"; . scripts/setup.sh
echo "== cargo fmt --check"; cargo fmt --all --check
echo "== cargo clippy"; cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"; cargo test --workspace --locked
echo "== e2e: openai client"; cargo build --workspace --locked --bins; scripts/e2e-openai.sh
echo "== e2e: Prometheus, promtool, dashboard, alerts, Kubernetes"; scripts/e2e-prometheus.sh
echo "== e2e: status page in Chromium (Playwright)"; scripts/e2e-ui.sh
echo "== PGO build: instrumented, trained, optimised, serving"; PGO_SECS=1 scripts/pgo.sh
echo "== all tests passed"
