"""Per-epoch cost of keras_snr's callbacks on `fit()`, measured in one run.

Trains the same model without a callback, with `GateLogger`, with
`PopulationRiskEstimate` alone and with the recommended recipe
(`PopulationRiskEstimate(x_train=..., y_train=...)` + `ValidationFreeStopping(estimate)`,
whose patience is set so that it never stops here), interleaving the arms over
several rounds; prints the median wall time per epoch and its ratio to the
arm without a callback. The first epoch of every fit (compilation) is
excluded. Because fit-level ratios move by several per cent between runs on
a shared machine, the callbacks' own epoch-end work is also timed directly:
after training, each callback's `on_epoch_end` is called repeatedly on the
trained model (median), and reported as a share of the median epoch
without a callback.

Models (`--model`), at the population-risk benchmark's settings:
- `mlp`: MLP 64-256-256-10, n = 1500, batch 32 (47 steps per epoch), the
  typical generated MLP task;
- `mlp_few_steps`: the same MLP, n = 4096, batch 128 (32 steps);
- `cnn`: the MNIST-1D 1-D CNN of the benchmark's real tasks, n = 4000,
  batch 32 (125 steps).

    KERAS_BACKEND=jax python benchmarks/callback_overhead.py --model mlp
    python benchmarks/callback_overhead.py --all-backends --model cnn
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ARMS = ("none", "gate_logger", "pop_risk", "recipe")
MODELS = {"mlp": (1500, 32), "mlp_few_steps": (4096, 128), "cnn": (4000, 32)}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="mlp")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per fit (first excluded)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--all-backends", action="store_true",
                        help="run tensorflow, jax and torch, each in its own process")
    return parser.parse_args()


def build(kind):
    import keras

    keras.utils.set_random_seed(0)
    if kind == "cnn":
        layers = [keras.Input((40, 1)),
                  keras.layers.Conv1D(32, 5, padding="same", activation="relu"),
                  keras.layers.MaxPooling1D(2),
                  keras.layers.Conv1D(64, 5, padding="same", activation="relu"),
                  keras.layers.MaxPooling1D(2), keras.layers.Flatten(),
                  keras.layers.Dense(128, activation="relu")]
    else:
        layers = [keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                  keras.layers.Dense(256, activation="relu")]
    return keras.Sequential(layers + [keras.layers.Dense(10)])


def main():
    args = parse_args()
    if args.all_backends:
        argv = [a for a in sys.argv[1:] if a != "--all-backends"]
        for backend in ("tensorflow", "jax", "torch"):
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
            subprocess.run([sys.executable, __file__, *argv], env=env, check=True)
        return

    from _common import set_threads  # benchmarks/ is on sys.path

    set_threads(args.threads)
    import keras
    import numpy as np

    import keras_snr

    n, batch = MODELS[args.model]
    rng = np.random.default_rng(0)
    shape = (n, 40, 1) if args.model == "cnn" else (n, 64)
    x = rng.normal(size=shape).astype("float32")
    y = rng.integers(0, 10, size=(n,))

    def make_model():
        model = build(args.model)
        model.compile(optimizer=keras_snr.SNRAdam(),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    def make_callbacks(arm):
        if arm == "gate_logger":
            return [keras_snr.GateLogger()]
        if arm == "pop_risk":
            return [keras_snr.PopulationRiskEstimate(dataset_size=n, batch_size=batch)]
        if arm == "recipe":
            estimate = keras_snr.PopulationRiskEstimate(dataset_size=n, batch_size=batch,
                                                        x_train=x, y_train=y)
            return [estimate, keras_snr.ValidationFreeStopping(estimate, patience=10_000)]
        return []

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    models = {arm: make_model() for arm in ARMS}
    times = {arm: [] for arm in ARMS}
    last = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up (compilation)
        for arm in ARMS:
            timer = EpochTimer()  # last, so the callbacks' epoch-end work is timed
            callbacks = make_callbacks(arm)
            models[arm].fit(x, y, batch_size=batch, epochs=args.epochs, verbose=0,
                            callbacks=callbacks + [timer])
            last[arm] = callbacks
            if round_:
                times[arm].extend(timer.times[1:])

    # direct timing of each callback's epoch-end work on its trained model
    direct = {}
    for arm in ARMS[1:]:
        callbacks = last[arm]
        for callback in callbacks:  # a new fit() on the trained model
            callback.on_train_begin()
        samples = []
        for i in range(25):
            logs = {"loss": 1.0}
            for callback in callbacks:
                callback.on_epoch_begin(i, logs)
            t0 = time.perf_counter()
            for callback in callbacks:  # ValidationFreeStopping too (it may copy weights)
                callback.on_epoch_end(i, logs)
            samples.append(time.perf_counter() - t0)
        direct[arm] = statistics.median(samples[5:])

    steps = int(np.ceil(n / batch))
    base = statistics.median(times["none"])
    print(f"\nbackend {keras.backend.backend()}, model {args.model}: n {n}, batch {batch}, "
          f"{steps} steps/epoch, {args.rounds} rounds x {args.epochs - 1} timed epochs per arm, "
          f"{args.threads} thread(s)")
    print("| arm | median epoch (ms) | fit-level overhead | epoch-end work, timed directly |")
    print("| --- | --- | --- | --- |")
    for arm in ARMS:
        t = statistics.median(times[arm])
        own = (f"{1e3 * direct[arm]:.1f} ms ({100 * direct[arm] / base:.1f} % of an epoch)"
               if arm in direct else "-")
        print(f"| {arm} | {1e3 * t:.1f} | {100 * (t / base - 1):+.1f} % | {own} |")


if __name__ == "__main__":
    main()
