#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite once per backend.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -x -k saving`).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export TF_CPP_MIN_LOG_LEVEL=2
status=0
summary=""
for backend in tensorflow jax torch; do
    echo "=== KERAS_BACKEND=$backend ==="
    start=$(date +%s)
    KERAS_BACKEND=$backend .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
    code=$?
    summary="$summary\n$backend: pytest exit $code in $(( $(date +%s) - start )) s"
    # Exit code 5 (no tests collected) is a failure too.
    if [ $code -ne 0 ]; then status=1; fi
done
echo -e "=== summary ===$summary"
exit $status
