#!/usr/bin/env bash
# Create .venv (if missing) and install keras_snr with all three backends,
# pinned to the CPU builds in constraints.txt (the package itself depends on
# no backend: see the README for GPU installs). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[test]" \
    tensorflow-cpu "jax[cpu]" torch
