#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite once per backend, then
# the optimizer-level tests on JAX with the oldest supported Keras
# (constraints-floor.txt, in .venv-floor).
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -x -k saving`);
# the floor run gets them too, but runs only its own test files (those of
# them the arguments name, if they name test paths).
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

# --- The oldest supported Keras, on JAX: the optimizer-level tests.
FLOOR_TESTS=(tests/test_snr_adam.py tests/test_statistics.py tests/test_saving.py
             tests/test_keras_conformance.py)
# The caller's pytest options, and the floor tests among the test paths
# they name (all of them if they name none).
options=()
paths=()
takes_value=0
for arg in "$@"; do
    if [ $takes_value -eq 1 ]; then options+=("$arg"); takes_value=0; continue; fi
    case "$arg" in
        -k|-m|-p|-o|-c|-W|--deselect|--ignore|--ignore-glob|--rootdir|--basetemp|\
        --maxfail|--durations|--tb|--confcutdir)
            options+=("$arg"); takes_value=1 ;;
        -*) options+=("$arg") ;;
        *) if [ -e "${arg%%::*}" ]; then paths+=("$arg"); else options+=("$arg"); fi ;;
    esac
done
floor_paths=()
if [ ${#paths[@]} -eq 0 ]; then
    floor_paths=("${FLOOR_TESTS[@]}")
else
    for arg in "${paths[@]}"; do
        path="${arg%%::*}"; path="${path#./}"; path="${path%/}"
        for test_file in "${FLOOR_TESTS[@]}"; do
            if [ "$path" = "$test_file" ]; then
                floor_paths+=("$arg")
            elif [ -d "$path" ] && { [ "$path" = "." ] || [[ "$test_file" == "$path"/* ]]; }; then
                floor_paths+=("$test_file")
            fi
        done
    done
fi
echo "=== KERAS_BACKEND=jax, oldest supported Keras (constraints-floor.txt) ==="
start=$(date +%s)
if [ ${#floor_paths[@]} -eq 0 ]; then
    summary="$summary\nfloor: skipped (none of the given test paths is a floor test)"
else
    # (Re)create .venv-floor when missing or when constraints-floor.txt changed.
    if ! cmp -s constraints-floor.txt .venv-floor/constraints-floor.txt; then
        rm -rf .venv-floor
        "${PYTHON:-python3}" -m venv .venv-floor \
            && .venv-floor/bin/python -m pip install --quiet --disable-pip-version-check \
                -c constraints-floor.txt keras "jax[cpu]" numpy pytest \
            && .venv-floor/bin/python -m pip install --quiet --disable-pip-version-check \
                --no-deps -e . \
            && cp constraints-floor.txt .venv-floor/ \
            || { echo "setting up .venv-floor failed"; rm -rf .venv-floor; }
    fi
    if [ -x .venv-floor/bin/python ]; then
        # The cross-backend test loads the checkpoint on TensorFlow and
        # PyTorch, which .venv-floor does not have.
        KERAS_BACKEND=jax .venv-floor/bin/python -m pytest -q -p no:cacheprovider \
            --deselect tests/test_saving.py::test_cross_backend_load_and_train \
            ${options[@]+"${options[@]}"} "${floor_paths[@]}"
        code=$?
        # With the caller's filters (-k ...), selecting no floor test is fine.
        if [ $code -eq 5 ] && [ $# -gt 0 ]; then code=0; fi
    else
        code=1
    fi
    summary="$summary\nfloor (jax, $(grep '^keras==' constraints-floor.txt)): exit $code in $(( $(date +%s) - start )) s"
    if [ $code -ne 0 ]; then status=1; fi
fi
echo -e "=== summary ===$summary"
exit $status
