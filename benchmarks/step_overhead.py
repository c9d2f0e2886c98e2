"""Optimizer-step overhead of SNRAdam against Keras Adam and SGD.

Times one optimizer step (gradients precomputed, no forward or backward pass)
the way Keras `fit()` runs it on each backend:

- JAX: `jax.jit` of `optimizer.stateless_apply(opt_vars, grads, train_vars)`,
  state buffers donated as in Keras's JAX trainer, `block_until_ready`.
- TensorFlow: `tf.function` wrapping `optimizer.apply(grads, vars)`, both
  without XLA (what `fit()`'s `jit_compile="auto"` picks on a CPU-only
  machine) and with `jit_compile=True` (what it picks when a GPU is present).
- PyTorch: eager `optimizer.apply(grads, vars)` (`fit()` runs the optimizer
  eagerly on torch).

Two models: (a) a ~1M-parameter MLP (6 variables) and (b) 40 small Dense
layers (80 variables, ~170k parameters), where per-variable dispatch
dominates. Every arm gets the same `weight_decay` (decoupled, as in AdamW) so
the ratio compares like with like. The arms are interleaved in rounds (in a
shuffled order each round) so that drift on a shared machine hits them
alike; the table reports the median step time per arm and the ratio of
medians to Adam. A fully fused SNRAdam step reads and writes 9
parameter-sized tensors against Adam's 7 (1.29x; Keras applies weight decay
as a pass of its own, 11 vs 9 with it, 1.22x): the memory-traffic floor on
large models.

Usage:
    KERAS_BACKEND=jax python benchmarks/step_overhead.py
    python benchmarks/step_overhead.py --all-backends
    python benchmarks/step_overhead.py --all-backends --quick   # smoke run
    # steadier on a small shared CPU machine:
    python benchmarks/step_overhead.py --all-backends --threads 1 --clock cpu
"""

import argparse
import json
import os
import random
import sys
import time

from _common import median, run_per_backend, set_threads, strip_options  # noqa: E402  (benchmarks/ is on sys.path)

BACKENDS = ("tensorflow", "jax", "torch")
ARMS = ("snr", "snr_per_tensor", "adam", "sgd")
_JSON_TAG = "STEP_OVERHEAD_JSON "


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--all-backends", action="store_true",
                   help="run each backend in its own subprocess; one table")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="comma-separated backends for --all-backends")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: few steps, small models")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds (default 10; quick 2)")
    p.add_argument("--steps-per-round", type=int, default=None,
                   help="timed steps per arm per round (default 5; quick 2)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps per arm first (default 5; quick 2)")
    p.add_argument("--weight-decay", type=float, default=0.01,
                   help="decoupled weight decay for every arm (default 0.01, "
                        "SNRAdam's default); 0 disables it")
    p.add_argument("--tf-modes", default=None, choices=("both", "fit", "xla", "graph"),
                   help="TensorFlow: time without and/or with XLA (default both, "
                        "or fit with --quick; 'fit' = what fit()'s "
                        "jit_compile='auto' picks on this machine)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op CPU threads for the backend (default: the "
                        "backend's own choice). On a small shared machine "
                        "--threads 1 gives far steadier numbers")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="wall: perf_counter (default); cpu: this process's CPU "
                        "time, steadier on a loaded machine when the backend "
                        "runs single-threaded (--threads 1); meaningless on GPU")
    p.add_argument("--json", action="store_true",
                   help="emit results as JSON lines (used by --all-backends)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 10)
    args.steps_per_round = args.steps_per_round or (2 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    args.tf_modes = args.tf_modes or ("fit" if args.quick else "both")
    return args


# --------------------------------------------------------------------- models

def model_specs(quick):
    """name -> list of variable shapes (kernel, bias per Dense layer)."""
    if quick:
        mlp = [(64, 128), (128,), (128, 10), (10,)]
        many = [(16, 16), (16,)] * 8
    else:
        # 784-1024-256-10: 1,068,810 parameters in 6 variables.
        mlp = [(784, 1024), (1024,), (1024, 256), (256,), (256, 10), (10,)]
        # 40 Dense(64) layers: 80 variables, 166,400 parameters.
        many = [(64, 64), (64,)] * 40
    return {"mlp": mlp, "many_small": many}


def describe(shapes):
    import math

    n = sum(math.prod(s) for s in shapes)
    return f"{n / 1e6:.2f}M params, {len(shapes)} vars"


def make_optimizer(arm, weight_decay):
    import keras

    from keras_snr import SNRAdam

    wd = weight_decay or None
    if arm == "snr":
        return SNRAdam(weight_decay=wd)
    if arm == "snr_per_tensor":
        return SNRAdam(weight_decay=wd, reduction="per_tensor")
    if arm == "adam":
        return keras.optimizers.Adam(weight_decay=wd)
    if arm == "sgd":
        return keras.optimizers.SGD(weight_decay=wd)
    raise ValueError(arm)


# ------------------------------------------------------------ step builders
#
# Each builder returns `step()`, which runs one optimizer step and waits for
# it to finish.

def build_steppers(backend, shapes, weight_decay, seed, tf_xla=False):
    import numpy as np

    rng = np.random.default_rng(seed)
    init = [rng.normal(scale=0.05, size=s).astype("float32") for s in shapes]
    grads = [rng.normal(scale=1e-3, size=s).astype("float32") for s in shapes]
    return {
        arm: _BUILDERS[backend](arm, init, grads, weight_decay, tf_xla)
        for arm in ARMS
    }


def _build_jax(arm, init, grads, weight_decay, _):
    import jax
    import keras

    opt = make_optimizer(arm, weight_decay)
    variables = [keras.Variable(w) for w in init]
    opt.build(variables)
    train = [v.value for v in variables]
    opt_vars = [v.value for v in opt.variables]
    g = [jax.numpy.asarray(x) for x in grads]

    def apply(opt_vars, grads, train):
        new_train, new_opt = opt.stateless_apply(opt_vars, grads, train)
        return new_opt, new_train

    fn = jax.jit(apply, donate_argnums=(0, 2))
    state = {"opt": opt_vars, "train": train}

    def step():
        state["opt"], state["train"] = fn(state["opt"], g, state["train"])
        jax.block_until_ready(state["train"])

    return step


def _build_tensorflow(arm, init, grads, weight_decay, xla):
    import keras
    import tensorflow as tf

    opt = make_optimizer(arm, weight_decay)
    variables = [keras.Variable(w) for w in init]
    opt.build(variables)
    g = [tf.constant(x) for x in grads]

    @tf.function(jit_compile=xla, reduce_retracing=True)
    def apply(grads):
        opt.apply(grads, variables)
        return opt.iterations.value

    def step():
        apply(g).numpy()  # waits for the step

    return step


def _build_torch(arm, init, grads, weight_decay, _):
    import keras
    import torch

    opt = make_optimizer(arm, weight_decay)
    variables = [keras.Variable(w) for w in init]
    opt.build(variables)
    g = [keras.ops.convert_to_tensor(x) for x in grads]
    cuda = g[0].is_cuda

    def step():
        opt.apply(g, variables)
        if cuda:
            torch.cuda.synchronize()

    return step


_BUILDERS = {"jax": _build_jax, "tensorflow": _build_tensorflow, "torch": _build_torch}


# ----------------------------------------------------------------- timing

def time_arms(steppers, rounds, steps_per_round, warmup, seed, clock=time.perf_counter):
    """Interleaved timing; returns arm -> list of per-step seconds."""
    for step in steppers.values():
        for _ in range(warmup):
            step()
    order = list(steppers)
    shuffle = random.Random(seed)
    times = {arm: [] for arm in order}
    for _ in range(rounds):
        shuffle.shuffle(order)
        for arm in order:
            step = steppers[arm]
            for _ in range(steps_per_round):
                t0 = clock()
                step()
                times[arm].append(clock() - t0)
    return times
def run_backend(args):
    """Time every model (and TF mode) on this process's backend."""
    set_threads(args.threads)
    import keras

    backend = keras.backend.backend()
    keras.utils.set_random_seed(args.seed)
    modes = [None]
    if backend == "tensorflow":
        fit_xla = _tf_fit_uses_xla()
        modes = {
            "both": [False, True],
            "fit": [fit_xla],
            "xla": [True],
            "graph": [False],
        }[args.tf_modes]
    rows = []
    for model, shapes in model_specs(args.quick).items():
        for xla in modes:
            steppers = build_steppers(backend, shapes, args.weight_decay, args.seed, xla)
            clock = time.process_time if args.clock == "cpu" else time.perf_counter
            times = time_arms(
                steppers, args.rounds, args.steps_per_round, args.warmup, args.seed, clock
            )
            rows.append(
                {
                    "backend": backend,
                    "how": _how(backend, xla),
                    "model": model,
                    "size": describe(shapes),
                    "steps": len(times["adam"]),
                    "clock": args.clock,
                    "threads": args.threads,
                    "ms": {arm: 1e3 * median(t) for arm, t in times.items()},
                }
            )
    return rows


def _tf_fit_uses_xla():
    import tensorflow as tf

    return any(d.device_type != "CPU" for d in tf.config.list_physical_devices())


def _how(backend, xla):
    if backend == "jax":
        return "jax.jit(stateless_apply)"
    if backend == "torch":
        return "eager apply"
    fit = _tf_fit_uses_xla() == xla
    return ("tf.function(jit_compile=True)" if xla else "tf.function") + (
        " [fit default here]" if fit else ""
    )


# ----------------------------------------------------------------- output

def table(rows, weight_decay):
    head = (
        "| backend | step | model | SNRAdam (ms) | SNRAdam per_tensor (ms) "
        "| Adam (ms) | SGD (ms) | SNRAdam / Adam | per_tensor / Adam |"
    )
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        ms = r["ms"]
        lines.append(
            f"| {r['backend']} | {r['how']} | {r['model']} ({r['size']}) "
            f"| {ms['snr']:.3f} | {ms['snr_per_tensor']:.3f} | {ms['adam']:.3f} "
            f"| {ms['sgd']:.3f} | {ms['snr'] / ms['adam']:.2f}x "
            f"| {ms['snr_per_tensor'] / ms['adam']:.2f}x |"
        )
    steps = rows[0]["steps"] if rows else 0
    clock = rows[0].get("clock", "wall") if rows else "wall"
    threads = rows[0].get("threads") if rows else None
    lines.append("")
    lines.append(
        f"Median {'CPU' if clock == 'cpu' else 'wall'} time of {steps} timed "
        f"steps per arm"
        + (f" ({threads} intra-op thread{'s' if threads != 1 else ''})" if threads else "")
        + ", arms interleaved in rounds; "
        f"weight_decay={weight_decay or None} on every arm; float32; "
        "gradients precomputed."
    )
    return "\n".join(lines)


def run_all(args, argv):
    cleaned = strip_options(argv, valued=("--backends",), flags=("--all-backends",))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows, failed = run_per_backend(
        os.path.abspath(__file__), backends, ["--json", *cleaned], _JSON_TAG,
        capture_stderr=True,
    )
    print(table(rows, args.weight_decay))
    return 1 if failed else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.all_backends:
        return run_all(args, argv)
    rows = run_backend(args)
    if args.json:
        for r in rows:
            print(_JSON_TAG + json.dumps(r), flush=True)
    else:
        print(table(rows, args.weight_decay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
