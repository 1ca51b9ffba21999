#!/usr/bin/env bash
# Create .venv and install the project with its dev extras. Idempotent: when pyproject.toml has not
# changed since the last successful install, this returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=".venv/.setup-stamp"
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "[setup] installing afmrl and its dependencies into .venv (first run: a few minutes)"
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned to the release that ships on these machines' disks (no multi-GB download).
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "$want" > "$stamp"
echo "[setup] done"
