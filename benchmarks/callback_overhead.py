"""Overhead of `PopulationRiskEstimate` on `fit()`, measured in one run.

Trains the same MLP with and without the callback, interleaving the two arms
over several rounds, and prints the median wall time per epoch and their
ratio. The callback reads the optimizer's slots once per epoch; the train
step itself is unchanged, so the overhead is that one read per epoch.

    KERAS_BACKEND=jax python benchmarks/callback_overhead.py [--rounds 5]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_snr  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, 64)).astype("float32")
    y = rng.integers(0, 10, size=(args.n,))

    def model_and_optimizer():
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

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    models = {"without": model_and_optimizer(), "with": model_and_optimizer()}
    times = {arm: [] for arm in models}
    for round_ in range(args.rounds + 1):  # round 0 is warm-up (compilation)
        for arm, model in models.items():
            timer = EpochTimer()
            timer.times = []
            callbacks = [timer]
            if arm == "with":
                # Listed before the timer's end, so its epoch-end read is timed.
                callbacks = [
                    keras_snr.PopulationRiskEstimate(dataset_size=args.n, batch_size=args.batch_size),
                    timer,
                ]
            model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0, callbacks=callbacks)
            if round_:
                times[arm].extend(timer.times)

    base = statistics.median(times["without"])
    with_cb = statistics.median(times["with"])
    steps = int(np.ceil(args.n / args.batch_size))
    print(f"backend: {keras.backend.backend()}, {steps} steps/epoch, {args.rounds} rounds")
    print("| arm | median epoch (ms) | per step (ms) |")
    print("| --- | --- | --- |")
    for arm, t in (("without callback", base), ("with PopulationRiskEstimate", with_cb)):
        print(f"| {arm} | {1e3 * t:.1f} | {1e3 * t / steps:.3f} |")
    print(f"overhead: {100 * (with_cb / base - 1):+.1f} %")


if __name__ == "__main__":
    main()
