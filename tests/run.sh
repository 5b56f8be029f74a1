#!/usr/bin/env bash
# Set up and run the whole test suite: installs what the tests need, then lint, types and pytest.
# Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  need=()
  for cmd_pkg in sqlite3:sqlite3 kubectl:kubectl promtool:prometheus prometheus-node-exporter:prometheus-node-exporter knotd:knot kdig:knot-dnsutils dnsperf:dnsperf; do
    command -v "${cmd_pkg%%:*}" >/dev/null 2>&1 || need+=("${cmd_pkg##*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff" && python3 -m ruff check . && python3 -m ruff format --check .
echo "== mypy" && python3 -m mypy
echo "== kube-apiserver (built once, then cached)" && bash tests/support/kube/build-apiserver.sh
echo "== pytest"
python3 -m pytest "$@"
