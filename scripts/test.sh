#!/usr/bin/env bash
# Set up, lint, and run the whole test suite (slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
# The demo's real-browser test drives Debian's chromium through playwright (playwright's own browser
# download is not reachable here). Install it when missing and this runs as root with apt; otherwise
# that test is skipped and says why (-rs prints skip reasons).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[test] installing Debian chromium for the browser test"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1; then
        echo "[test] could not install chromium: the browser test will be skipped"
    fi
fi
export TMPDIR="${TMPDIR:-/tmp}/afmrl-tests"
mkdir -p "$TMPDIR"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q -rs -m "slow or not slow" "$@"
