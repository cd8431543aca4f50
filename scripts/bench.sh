#!/usr/bin/env bash
# Sets everything up (scripts/bootstrap.sh) and runs the main job: the benchmark that reproduces
# the article, writing the table to the terminal and the chart/report under bench-results/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
mkdir -p bench-results
exec .venv/bin/portwright bench --json bench-results/bench.json --plot bench-results/bench.png \
  --html bench-results/bench.html "$@"
