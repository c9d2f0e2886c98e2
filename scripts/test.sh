#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite once per backend, then
# the optimizer-level tests on JAX with the oldest supported Keras
# (constraints-floor.txt, in .venv-floor).
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -x -k saving`);
# the floor run gets them too, but runs only its own test files (those of
# them the arguments name, if they name test paths).
# The four runs are independent processes; TEST_JOBS of them (default 2, one
# per core of the CI machine) run at a time, each into its own log, printed
# whole when it ends. TEST_JOBS=1 runs them one after the other.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export TF_CPP_MIN_LOG_LEVEL=2
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT

run_backend() {  # backend: the whole suite on it
    KERAS_BACKEND=$1 .venv/bin/python -m pytest -q -p no:cacheprovider "${@:2}"
}

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
run_floor() {
    if [ ${#floor_paths[@]} -eq 0 ]; then
        echo "floor: skipped (none of the given test paths is a floor test)"
        return 0
    fi
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
    [ -x .venv-floor/bin/python ] || return 1
    # The cross-backend test loads the checkpoint on TensorFlow and PyTorch,
    # which .venv-floor does not have.
    KERAS_BACKEND=jax .venv-floor/bin/python -m pytest -q -p no:cacheprovider \
        --deselect tests/test_saving.py::test_cross_backend_load_and_train \
        ${options[@]+"${options[@]}"} "${floor_paths[@]}"
    local code=$?
    # With the caller's filters (-k ...), selecting no floor test is fine.
    if [ $code -eq 5 ] && [ $nargs -gt 0 ]; then code=0; fi
    return $code
}
nargs=$#

# --- Run the four jobs, TEST_JOBS at a time.
JOBS=(tensorflow jax torch floor)
declare -A TITLE=([tensorflow]="KERAS_BACKEND=tensorflow" [jax]="KERAS_BACKEND=jax"
                  [torch]="KERAS_BACKEND=torch"
                  [floor]="KERAS_BACKEND=jax, oldest supported Keras ($(grep '^keras==' constraints-floor.txt))")
declare -A started pid_job
status=0
summary=""
finish() {  # pid, exit code: print the job's log and record it
    local job=${pid_job[$1]} code=$2
    echo "=== ${TITLE[$job]} ==="
    cat "$LOGS/$job.log"
    # Exit code 5 (no tests collected) is a failure too.
    summary="$summary\n$job: exit $code in $(( $(date +%s) - ${started[$job]} )) s"
    if [ "$code" -ne 0 ]; then status=1; fi
}
running=0
for job in "${JOBS[@]}"; do
    if [ "$running" -ge "${TEST_JOBS:-2}" ]; then
        wait -n -p done_pid; code=$?
        finish "$done_pid" "$code"
        running=$((running - 1))
    fi
    started[$job]=$(date +%s)
    if [ "$job" = floor ]; then
        run_floor > "$LOGS/$job.log" 2>&1 &
    else
        run_backend "$job" "$@" > "$LOGS/$job.log" 2>&1 &
    fi
    pid_job[$!]=$job
    running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
    wait -n -p done_pid; code=$?
    finish "$done_pid" "$code"
    running=$((running - 1))
done
echo -e "=== summary ===$summary"
exit $status
