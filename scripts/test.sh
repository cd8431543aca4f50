#!/usr/bin/env bash
# Sets everything up (scripts/bootstrap.sh) and runs the whole check: ruff, mypy, then the unit
# and integration tests (integration tests need root; they run in throwaway namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --test
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy
set +e
.venv/bin/python -m pytest -p no:cacheprovider --durations=20 "$@" tests
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
if [ "$rc" = 5 ]; then echo "test.sh: no tests were collected" >&2; exit 1; fi
exit "$rc"
