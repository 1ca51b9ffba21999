#!/usr/bin/env bash
# Set up, lint, and run the whole test suite (slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
export TMPDIR="${TMPDIR:-/tmp}/afmrl-tests"
mkdir -p "$TMPDIR"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q -m "slow or not slow" "$@"
