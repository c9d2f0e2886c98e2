"""Whole `fit()` step time of a small transformer language model with
SNRAdam against Keras Adam, per backend.

Where `gpu_step.py` times the optimizer step alone, this times what a user
sees: `model.fit()` steps (forward, backward, optimizer, Keras's own
bookkeeping) of a decoder-only transformer built from Keras layers
(Embedding + learned positions, pre-norm blocks of causal MultiHeadAttention
and a GELU MLP, LayerNormalization, an untied output Dense), trained on
synthetic tokens (the data is random: only the step time matters here).

Protocol, on the current backend (`KERAS_BACKEND`), or on each backend in
its own subprocess with `--all-backends`:

- One model per arm (`adam`: `keras.optimizers.Adam(weight_decay=wd)`;
  `snr`: `SNRAdam(weight_decay=wd)`; `snr_per_tensor`:
  `SNRAdam(reduction="per_tensor", weight_decay=wd)`), all from the same
  initial weights, compiled the same way (`jit_compile="auto"`, the given
  `steps_per_execution`).
- Warm-up: one `fit()` of `--warmup` steps per arm (compilation happens here).
- Then `--rounds` rounds; in each, every arm (in a shuffled order) runs one
  `fit(epochs=1, steps_per_epoch=--window)`. A callback times the epoch from
  the first `on_train_batch_begin` (the data iterator already made, so its
  set-up cost is left out) to `on_epoch_end` (Keras syncs the device to
  report the epoch's logs); it defines no batch-end hook, so per-step
  dispatch stays asynchronous as in a normal run; ms/step = window time /
  window steps. The table reports the median over
  rounds, and the overhead of each SNRAdam arm over Adam in %.
- `--per-batch` times each batch instead (`on_train_batch_end`), which makes
  Keras sync the device after every batch.

Usage:
    KERAS_BACKEND=jax python benchmarks/fit_overhead.py
    python benchmarks/fit_overhead.py --all-backends --threads 1
    # ~100M parameters on a GPU:
    python benchmarks/fit_overhead.py --all-backends --backends jax,torch \\
        --params 100M --vocab 16384 --seq-len 256 --batch-size 32
"""

import argparse
import json
import math
import os
import random
import sys
import time

from _common import median, run_per_backend, set_threads, strip_options, write_outputs  # noqa: E402  (benchmarks/ is on sys.path)

BACKENDS = ("tensorflow", "jax", "torch")
ARM_TITLES = {
    "adam": "Adam",
    "snr": "SNRAdam snr",
    "snr_per_tensor": "SNRAdam snr per_tensor",
    "snr_generic": "SNRAdam snr, generic torch path",
}
_JSON_TAG = "FIT_OVERHEAD_JSON "


def parse_count(text):
    text = str(text).strip().upper()
    scale = {"K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9}.get(text[-1:], None)
    return int(float(text[:-1]) * scale) if scale else int(float(text))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--all-backends", action="store_true",
                   help="run each backend in its own subprocess; one table")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="comma-separated backends for --all-backends")
    p.add_argument("--params", default="3M",
                   help="target parameter count, e.g. 3M (CPU) or 100M (GPU); "
                        "the width d (a multiple of 64) and depth L = d/64 "
                        "closest to it are used (default 3M)")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--arms", default="adam,snr,snr_per_tensor",
                   help="comma-separated: " + ", ".join(ARM_TITLES))
    p.add_argument("--window", type=int, default=10,
                   help="steps per timed fit() call (default 10)")
    p.add_argument("--rounds", type=int, default=5,
                   help="timed fit() calls per arm, interleaved (default 5)")
    p.add_argument("--warmup", type=int, default=3,
                   help="steps of the untimed first fit() per arm (default 3)")
    p.add_argument("--steps-per-execution", type=int, default=1)
    p.add_argument("--dtype-policy", default=None,
                   help="e.g. mixed_bfloat16 (default: float32)")
    p.add_argument("--weight-decay", type=float, default=0.01,
                   help="decoupled weight decay on every arm (default 0.01)")
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--per-batch", action="store_true",
                   help="time each batch (forces a device sync per batch)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU intra-op threads (default: the backend's choice)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny model, 2 rounds of 2 steps")
    p.add_argument("--out", default=None, help="write results as JSON here")
    p.add_argument("--markdown-out", default=None, help="also write the table here")
    p.add_argument("--json", action="store_true",
                   help="emit tagged JSON lines (used by --all-backends)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.params, args.vocab, args.seq_len, args.batch_size = "200K", 512, 16, 4
        args.window, args.rounds, args.warmup = 2, 2, 1
    return args


# --------------------------------------------------------------------- model

def param_count(vocab, seq_len, d, layers):
    block = (4 * d * d + 4 * d) + (8 * d * d + 5 * d) + 4 * d
    return vocab * d + seq_len * d + layers * block + 2 * d + d * vocab + vocab


def choose_config(target, vocab, seq_len):
    best = None
    for k in range(1, 129):
        d, layers = 64 * k, max(2, k)
        n = param_count(vocab, seq_len, d, layers)
        score = abs(math.log(n / target))
        if best is None or score < best[0]:
            best = (score, d, layers)
    _, d, layers = best
    return {"d_model": d, "layers": layers, "heads": max(1, d // 64)}


def build_model(vocab, seq_len, d_model, layers, heads):
    import keras
    from keras import layers as L

    class AddPositions(L.Layer):
        """Adds a learned (seq_len, d) position embedding."""

        def build(self, input_shape):
            self.positions = self.add_weight(
                shape=tuple(input_shape[1:]), initializer="random_normal",
                name="positions",
            )

        def call(self, x):
            return x + keras.ops.cast(self.positions, x.dtype)

    tokens = keras.Input((seq_len,), dtype="int32")
    x = L.Embedding(vocab, d_model)(tokens)
    x = AddPositions()(x)
    for _ in range(layers):
        h = L.LayerNormalization(epsilon=1e-5)(x)
        h = L.MultiHeadAttention(heads, d_model // heads)(h, h, use_causal_mask=True)
        x = L.Add()([x, h])
        h = L.LayerNormalization(epsilon=1e-5)(x)
        h = L.Dense(4 * d_model, activation="gelu")(h)
        h = L.Dense(d_model)(h)
        x = L.Add()([x, h])
    x = L.LayerNormalization(epsilon=1e-5)(x)
    logits = L.Dense(vocab, dtype="float32")(x)
    return keras.Model(tokens, logits, name="transformer_lm")


def make_optimizer(arm, args):
    import keras

    from keras_snr import SNRAdam

    wd = args.weight_decay or None
    if arm == "adam":
        return keras.optimizers.Adam(args.learning_rate, weight_decay=wd)
    opt = SNRAdam(
        args.learning_rate,
        weight_decay=wd,
        reduction="per_tensor" if arm == "snr_per_tensor" else "elementwise",
        fused=arm != "snr_generic",
    )
    return opt


# -------------------------------------------------------------------- timing

def make_timer_class():
    import keras

    class WindowTimer(keras.callbacks.Callback):
        """Wall time from the start of the epoch's first batch (after the
        data iterator is made and has yielded) to `on_epoch_end` (after
        Keras has synced the device for the epoch's logs). Defines no
        `on_*_batch_end`, so Keras keeps dispatching steps asynchronously."""

        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = None

        def on_train_batch_begin(self, batch, logs=None):
            if self._t0 is None:
                self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._t0)

    class BatchTimer(keras.callbacks.Callback):
        """Time between consecutive batch ends (syncs every batch)."""

        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self._last = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            self.times.append(now - self._last)
            self._last = now

    return WindowTimer, BatchTimer
def describe_device(backend):
    if backend == "jax":
        import jax

        d = jax.devices()[0]
        return f"{d.platform}:{getattr(d, 'device_kind', '')}"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return "cuda:" + torch.cuda.get_device_name(0)
        return "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return "gpu" if gpus else "cpu"


def run_backend(args):
    set_threads(args.threads)
    import keras
    import numpy as np

    backend = keras.backend.backend()
    if args.dtype_policy:
        keras.config.set_dtype_policy(args.dtype_policy)
    keras.utils.set_random_seed(args.seed)
    target = parse_count(args.params)
    cfg = choose_config(target, args.vocab, args.seq_len)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if backend != "torch":
        arms = [a for a in arms if a != "snr_generic"]

    models = {}
    reference = None
    for arm in arms:
        model = build_model(args.vocab, args.seq_len, **cfg)
        if reference is None:
            reference = model.get_weights()
        else:
            model.set_weights(reference)
        model.compile(
            optimizer=make_optimizer(arm, args),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            steps_per_execution=args.steps_per_execution,
        )
        models[arm] = model
    n_params = models[arms[0]].count_params()

    rng = np.random.default_rng(args.seed)
    steps_needed = max(args.window, args.warmup)
    n_rows = steps_needed * args.batch_size
    x = rng.integers(0, args.vocab, size=(n_rows, args.seq_len + 1), dtype="int32")
    inputs, targets = x[:, :-1], x[:, 1:]

    WindowTimer, BatchTimer = make_timer_class()
    fit_kwargs = dict(batch_size=args.batch_size, epochs=1, verbose=0, shuffle=False)

    def fit(model, steps, callbacks=()):
        model.fit(inputs, targets, steps_per_epoch=steps, callbacks=list(callbacks),
                  **fit_kwargs)

    warm = {}
    for arm in arms:  # compile + warm up
        t0 = time.perf_counter()
        fit(models[arm], args.warmup)
        warm[arm] = time.perf_counter() - t0
        print(f"[{backend}] warm-up {arm}: {warm[arm]:.1f} s", file=sys.stderr, flush=True)

    per_step = {arm: [] for arm in arms}
    order = list(arms)
    shuffle = random.Random(args.seed)
    for _ in range(args.rounds):
        shuffle.shuffle(order)
        for arm in order:
            if args.per_batch:
                timer = BatchTimer()
                fit(models[arm], args.window, [timer])
                per_step[arm] += timer.times[1:]  # drop the iterator start
            else:
                timer = WindowTimer()
                fit(models[arm], args.window, [timer])
                per_step[arm].append(timer.times[-1] / args.window)

    ms = {arm: 1e3 * median(t) for arm, t in per_step.items()}
    return {
        "backend": backend,
        "device": describe_device(backend),
        "params": n_params,
        "config": cfg,
        "vocab": args.vocab,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "steps_per_execution": args.steps_per_execution,
        "dtype_policy": args.dtype_policy or "float32",
        "timing": "per batch" if args.per_batch else f"windows of {args.window} steps",
        "samples": {arm: len(t) for arm, t in per_step.items()},
        "ms": ms,
        "ms_all": {arm: [1e3 * t for t in ts] for arm, ts in per_step.items()},
        "warmup_s": warm,
        "overhead_pct": {arm: 100 * (ms[arm] / ms["adam"] - 1)
                         for arm in arms if arm != "adam" and "adam" in ms},
        "versions": {"keras": keras.__version__},
    }


# -------------------------------------------------------------------- output

def table(rows):
    arms = [a for a in ARM_TITLES if any(a in r["ms"] for r in rows)]
    head = "| backend | device | model | " + " | ".join(
        f"{ARM_TITLES[a]} ms/step" + ("" if a == "adam" else " (overhead)") for a in arms
    ) + " |"
    lines = [head, "|" + " --- |" * (3 + len(arms))]
    for r in rows:
        c = r["config"]
        model = (f"{r['params'] / 1e6:.1f}M params (d {c['d_model']}, {c['layers']} "
                 f"blocks), batch {r['batch_size']}x{r['seq_len']}, {r['dtype_policy']}")
        cells = []
        for a in arms:
            if a not in r["ms"]:
                cells.append("-")
            elif a == "adam":
                cells.append(f"{r['ms'][a]:.1f}")
            else:
                cells.append(f"{r['ms'][a]:.1f} ({r['overhead_pct'][a]:+.1f}%)")
        lines.append(f"| {r['backend']} | {r['device']} | {model} | " + " | ".join(cells) + " |")
    if rows:
        r = rows[0]
        lines.append("")
        lines.append(
            f"Median ms per fit() step over {min(min(r['samples'].values()) for r in rows)}+ "
            f"samples per arm ({r['timing']}, arms interleaved in shuffled order, "
            f"after a compiled warm-up); steps_per_execution={r['steps_per_execution']}; "
            "same initial weights, data and weight decay for every arm; "
            "overhead relative to Adam."
        )
    return "\n".join(lines)


def emit(rows, args):
    text = table(rows)
    print(text, flush=True)
    write_outputs(text, {"rows": rows}, args.markdown_out, args.out)


def run_all(args, argv):
    child = strip_options(
        argv, valued=("--backends", "--out", "--markdown-out"), flags=("--all-backends",)
    )
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows, failed = run_per_backend(
        os.path.abspath(__file__), backends, ["--json", *child], _JSON_TAG
    )
    emit(rows, args)
    return 1 if failed else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.all_backends:
        return run_all(args, argv)
    row = run_backend(args)
    if args.json:
        print(_JSON_TAG + json.dumps(row), flush=True)
    else:
        emit([row], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
