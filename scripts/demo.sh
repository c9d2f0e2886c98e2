#!/usr/bin/env bash
# Set up (first run only) and run the demo: Adam vs SNRAdam on noisy-label digits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
