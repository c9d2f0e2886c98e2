"""Per-epoch overhead of keras_snr's callbacks on `fit()`, measured in one run.

Trains the same MLP without a callback, with `GateLogger` and with
`PopulationRiskEstimate`, interleaving the arms over several rounds, and
prints the median wall time per epoch and the ratio to the arm without a
callback. Each round is one `fit()` of `--epochs` epochs per arm; the first
epoch of every fit (where the callback compiles its epoch-end reduction, and
Keras its train step) is excluded, so the figure is the steady per-epoch cost
of a long run. The train step itself is the same in every arm.

    KERAS_BACKEND=jax python benchmarks/callback_overhead.py [--rounds 5]
    python benchmarks/callback_overhead.py --all-backends
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ARMS = ("none", "gate_logger", "pop_risk")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per fit (first excluded)")
    parser.add_argument("--n", type=int, default=4096, help="training examples")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--all-backends", action="store_true",
                        help="run tensorflow, jax and torch, each in its own process")
    return parser.parse_args()


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

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, 64)).astype("float32")
    y = rng.integers(0, 10, size=(args.n,))

    def make_model():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(args.width, activation="relu"),
                keras.layers.Dense(args.width, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
        model.compile(
            optimizer=keras_snr.SNRAdam(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return model

    def make_callbacks(arm):
        if arm == "gate_logger":
            return [keras_snr.GateLogger()]
        if arm == "pop_risk":
            return [keras_snr.PopulationRiskEstimate(dataset_size=args.n, batch_size=args.batch_size)]
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
    for round_ in range(args.rounds + 1):  # round 0 warms up (compilation)
        for arm in ARMS:
            timer = EpochTimer()  # last, so the callbacks' epoch-end work is timed
            models[arm].fit(
                x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                callbacks=make_callbacks(arm) + [timer],
            )
            if round_:
                times[arm].extend(timer.times[1:])

    steps = int(np.ceil(args.n / args.batch_size))
    base = statistics.median(times["none"])
    print(f"\nbackend {keras.backend.backend()}: {steps} steps/epoch, {args.rounds} rounds x "
          f"{args.epochs - 1} timed epochs per arm, MLP 64-{args.width}-{args.width}-10, "
          f"{args.threads} thread(s)")
    print("| arm | median epoch (ms) | per step (ms) | overhead per epoch |")
    print("| --- | --- | --- | --- |")
    for arm in ARMS:
        t = statistics.median(times[arm])
        print(f"| {arm} | {1e3 * t:.1f} | {1e3 * t / steps:.3f} | {100 * (t / base - 1):+.1f} % |")


if __name__ == "__main__":
    main()
