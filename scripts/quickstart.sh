#!/usr/bin/env bash
# Set up, then run the main job end to end on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
.venv/bin/afmrl pipeline --out outputs/quickstart "$@"
