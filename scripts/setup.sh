#!/usr/bin/env bash
# Installs what the tests need, skipping what is there (sourced by scripts/test.sh):
# Debian's redis-server, prometheus and chromium; a Python venv with the openai client,
# PyYAML and kubernetes-validate; playwright-core from npm.
# Redis (Debian's package) for the shared-limit tests; each test starts its own server on a
# free port and stops it by PID, so only the binary is needed.
# Prometheus and promtool (Debian's) for the scrape test and the rule checks; Chromium
# (Debian's) for the status page's browser test.
NEED=()
command -v redis-server >/dev/null 2>&1 || NEED+=(redis-server)
command -v promtool >/dev/null 2>&1 || NEED+=(prometheus)
[ -x /usr/bin/chromium ] || NEED+=(chromium)
if [ ${#NEED[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${NEED[@]}"
fi

# Python venv: the official OpenAI client (end-to-end tests), PyYAML and kubernetes-validate
# (the Kubernetes manifests, against its bundled schemas).
if ! .venv/bin/python -c "import openai, yaml, kubernetes_validate" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check \
    "openai>=1.40,<4" "pyyaml>=6" "kubernetes-validate>=1.30"
fi
export PYTHON="${PYTHON:-$PWD/.venv/bin/python}"

# playwright-core (npm, pinned by package-lock.json) for the status page's browser test; it
# drives Debian's chromium, it downloads no browser of its own.
if [ ! -d scripts/ui-test/node_modules/playwright-core ]; then
  (cd scripts/ui-test && npm ci --no-audit --no-fund --silent)
fi

