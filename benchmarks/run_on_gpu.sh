#!/usr/bin/env bash
# The GPU measurements (issues 7 and 22): the torch update paths against the
# NumPy reference, optimizer-step and fit() benchmarks, on the H200 device
# machine, in one command. Results go to $OUT (run.log, summary.md and one
# JSON per stage; at most 7 files, within the device tool's 8-file limit).
#
# The machine has torch, JAX (CUDA), optax, numpy, rich, h5py, ml-dtypes,
# absl-py and packaging, but not keras, optree or namex; they travel as
# wheels in .whl/ (keras 3.15.1's runtime requirements, from its METADATA,
# are absl-py, numpy, rich, namex, h5py, optree, ml-dtypes and packaging;
# optree's typing-extensions is in the image too). Prepare them once, in the
# repository root, on a machine with pip access:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
#       -d .whl keras==3.15.1 optree==0.20.0 namex==0.1.0
#
# (about 2.9 MB). Then the device tool's `run`, with
#
#   command:   bash benchmarks/run_on_gpu.sh
#   carry:     [".whl"]
#   timeout_s: 590
#
# Stages, each under its own time limit so that one slow stage cannot eat the
# others' (partial results of a stage that runs out are kept: gpu_step.py
# rewrites its JSON after every size):
#
#   check_torch  torch_paths_check.py: every gate, reduction and torch path
#                (compiled, foreach, generic) against the NumPy reference on
#                the GPU, with compile time and graphs compiled
#   step_torch   gpu_step.py --backend torch at $SIZES
#   fit_torch    fit_overhead.py on torch, ~110M-parameter transformer LM
#   step_jax     gpu_step.py --backend jax   at $SIZES
#   fit_jax      fit_overhead.py on JAX,   same model
#
# The torch stages run with TORCH_LOGS=recompiles: the summary counts the
# recompilations torch logged (none expected after a graph's first step).
#
# Environment knobs:
#   OUT          output folder (default: out/gpu; the device tool sets it)
#   SKIP_WHEELS  1: do not install .whl/ (a machine that already has keras)
#   PYTHON       interpreter (default python3)
#   STAGES       subset of "check_torch step_torch fit_torch step_jax fit_jax"
#                (default: all five; the limits add up to 560 s)
#   SIZES        gpu_step.py --sizes (default 100M,1B)
#   STEP_ARMS    gpu_step.py --arms for step_torch (default: a subset, below)
#   QUICK        1: tiny sizes and a tiny model, for a CPU smoke test:
#                  SKIP_WHEELS=1 QUICK=1 OUT=$(mktemp -d) bash benchmarks/run_on_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-out/gpu}"
PYTHON="${PYTHON:-python3}"
STAGES="${STAGES:-check_torch step_torch fit_torch step_jax fit_jax}"
QUICK="${QUICK:-0}"
STEP_ARMS="${STEP_ARMS:-keras_adam,snr_snr_elementwise,snr_snr_per_tensor,snr_soft_elementwise,\
snr_hard_elementwise,snr_none_elementwise,snr_foreach,torch_compile_snr,torch_adamw,copy}"
mkdir -p "$OUT"

main() {
if [ "${SKIP_WHEELS:-0}" != 1 ]; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/*.whl: see the top of $0"; exit 1; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

if [ "$QUICK" = 1 ]; then
    SIZES="${SIZES:-100K,300K}"
    STEP_ARGS="--steps 4 --rounds 2 --warmup 2 --threads 1 --torch-compile-cpu"
    FIT_ARGS="--quick --threads 1"
    CHECK_ARGS="--steps 3 --compile-on-cpu"
    LIMITS=(300 300 200 300 200)
else
    SIZES="${SIZES:-100M,1B}"
    STEP_ARGS="--steps 20 --rounds 4 --warmup 3"
    FIT_ARGS="--params 100M --vocab 16384 --seq-len 256 --batch-size 32 \
--dtype-policy mixed_bfloat16 --window 10 --rounds 5 --warmup 3"
    CHECK_ARGS="--steps 30"
    LIMITS=(70 150 170 100 70)
fi

echo "=== $(date -u +%FT%TZ) stages: $STAGES sizes: $SIZES"
nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
KERAS_BACKEND=jax "$PYTHON" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("keras", "jax", "jaxlib", "torch", "optax", "numpy", "optree"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        print(f"{name}: not importable ({type(e).__name__}: {e})")
EOF

status=0
run_stage() {  # name, time limit (s), command...
    local name=$1 limit=$2
    shift 2
    case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
    echo "=== stage $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local code=$?
    echo "=== stage $name: exit $code after $((SECONDS - start)) s"
    [ $code -eq 0 ] || status=1
}

run_stage check_torch "${LIMITS[0]}" env KERAS_BACKEND=torch TORCH_LOGS=recompiles \
    "$PYTHON" benchmarks/torch_paths_check.py $CHECK_ARGS \
    --out "$OUT/check_torch.json" --markdown-out "$OUT/check_torch.md"
run_stage step_torch "${LIMITS[1]}" env KERAS_BACKEND=torch TORCH_LOGS=recompiles \
    "$PYTHON" benchmarks/gpu_step.py --backend torch --sizes "$SIZES" $STEP_ARGS \
    --arms "$STEP_ARMS" --out "$OUT/gpu_step_torch.json" --markdown-out "$OUT/gpu_step_torch.md"
run_stage fit_torch "${LIMITS[2]}" env KERAS_BACKEND=torch TORCH_LOGS=recompiles \
    "$PYTHON" benchmarks/fit_overhead.py \
    $FIT_ARGS --out "$OUT/fit_overhead_torch.json" --markdown-out "$OUT/fit_torch.md"
run_stage step_jax "${LIMITS[3]}" env KERAS_BACKEND=jax "$PYTHON" benchmarks/gpu_step.py \
    --backend jax --sizes "$SIZES" $STEP_ARGS \
    --out "$OUT/gpu_step_jax.json" --markdown-out "$OUT/gpu_step_jax.md"
run_stage fit_jax "${LIMITS[4]}" env KERAS_BACKEND=jax "$PYTHON" benchmarks/fit_overhead.py \
    $FIT_ARGS --out "$OUT/fit_overhead_jax.json" --markdown-out "$OUT/fit_jax.md"

# One summary file (keeps the number of files under the tool's limit).
{
    echo "torch recompilations logged (TORCH_LOGS=recompiles): \
$(grep -c 'Recompiling function' "$OUT/run.log" 2>/dev/null || true)"
    echo
    for part in check_torch gpu_step_torch fit_torch gpu_step_jax fit_jax; do
        if [ -f "$OUT/$part.md" ]; then
            echo "## $part"
            echo
            cat "$OUT/$part.md"
            echo
            rm -f "$OUT/$part.md"
        fi
    done
} > "$OUT/summary.md"
echo "=== done (status $status); files in $OUT:"
ls -la "$OUT"
return $status
}

main 2>&1 | tee -a "$OUT/run.log"
exit "${PIPESTATUS[0]}"
