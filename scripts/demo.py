"""Side-by-side demo: Keras Adam vs SNRAdam on digits with noisy labels.

Run with `bash scripts/demo.sh` (sets up `.venv` first) or
`python scripts/demo.py` (any backend: set `KERAS_BACKEND`). Needs
scikit-learn (for the digits data), which keras_snr itself does not.

The task: scikit-learn's `load_digits` (1,797 8x8 images, 10 classes, no
download), split 70/30 into train and test, with 30% of the *training*
labels flipped to a random other class; the test labels stay clean. An MLP
big enough to memorise the noisy labels is trained from the same initial
weights with:

- Keras `Adam` (lr 1e-3, the standard choice for an MLP of this size),
- `SNRAdam` with `alpha = finite_dataset_alpha(batch_size, n_train)`,
- `SNRAdam` with `alpha = 1`,

all with the same learning rate, batch size, epochs and decoupled weight
decay (SNRAdam's default 0.01, given to Adam too so that the gate is the
only difference). Settings were fixed once, before looking at results.

Printed per optimizer: final accuracy on the (noisy) training labels, the
share of flipped training examples whose *wrong* label the model predicts
(memorisation), best and final clean test accuracy, final test loss and
wall time. The closing paragraph is generated from those numbers.
"""

import argparse
import time

import numpy as np

import keras
import keras_snr

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.01
BATCH_SIZE = 32
EPOCHS = 40
STEPS_PER_EXECUTION = 40  # fewer host round trips; same updates
NOISE = 0.3
HIDDEN = (256, 256)


def load_data(seed, noise=NOISE):
    """Digits scaled to [0, 1]; train labels with `noise` of them flipped."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype("float32"), y, test_size=0.3, random_state=seed, stratify=y
    )
    # Pixels are 0..16; some are 0 on every training image, so scale by the
    # range rather than standardising per pixel.
    x_train, x_test = x_train / 16.0, x_test / 16.0

    rng = np.random.default_rng(seed)
    flipped = rng.random(len(y_train)) < noise
    # A random *other* class: add 1..9 modulo 10.
    offset = rng.integers(1, 10, size=len(y_train))
    y_noisy = np.where(flipped, (y_train + offset) % 10, y_train)
    return x_train, y_noisy, flipped, x_test, y_test


def make_model(input_dim):
    layers = [keras.Input((input_dim,))]
    layers += [keras.layers.Dense(units, activation="relu") for units in HIDDEN]
    layers += [keras.layers.Dense(10)]
    return keras.Sequential(layers)


def optimizers(n_train):
    alpha = keras_snr.finite_dataset_alpha(BATCH_SIZE, n_train)
    return [
        ("Adam", lambda: keras.optimizers.Adam(LEARNING_RATE, weight_decay=WEIGHT_DECAY)),
        (
            f"SNRAdam alpha=b/(n-b)={alpha:.3f}",
            lambda: keras_snr.SNRAdam(LEARNING_RATE, alpha=alpha, weight_decay=WEIGHT_DECAY),
        ),
        (
            "SNRAdam alpha=1",
            lambda: keras_snr.SNRAdam(LEARNING_RATE, alpha=1.0, weight_decay=WEIGHT_DECAY),
        ),
    ]


def run(seed=0, epochs=EPOCHS, verbose=True):
    keras.utils.set_random_seed(seed)
    x_train, y_noisy, flipped, x_test, y_test = load_data(seed)
    n_train = len(x_train)
    initial = make_model(x_train.shape[1]).get_weights()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    rows = []
    for name, make_optimizer in optimizers(n_train):
        keras.utils.set_random_seed(seed)  # same batch order for every arm
        model = make_model(x_train.shape[1])
        model.set_weights(initial)
        model.compile(
            optimizer=make_optimizer(),
            loss=loss,
            metrics=["accuracy"],
            # torch runs one step per call.
            steps_per_execution=(
                1 if keras.backend.backend() == "torch" else STEPS_PER_EXECUTION
            ),
        )
        start = time.perf_counter()
        history = model.fit(
            x_train,
            y_noisy,
            batch_size=BATCH_SIZE,
            epochs=epochs,
            validation_data=(x_test, y_test),
            verbose=0,
        )
        seconds = time.perf_counter() - start
        predicted = np.argmax(model.predict(x_train, verbose=0), axis=-1)
        test_acc = history.history["val_accuracy"]
        rows.append(
            {
                "name": name,
                "train_acc": float(np.mean(predicted == y_noisy)),
                "memorised": float(np.mean(predicted[flipped] == y_noisy[flipped])),
                "best_test_acc": float(np.max(test_acc)),
                "best_epoch": int(np.argmax(test_acc)) + 1,
                "final_test_acc": float(test_acc[-1]),
                "final_test_loss": float(history.history["val_loss"][-1]),
                "best_test_loss": float(np.min(history.history["val_loss"])),
                "seconds": seconds,
            }
        )
    info = {
        "seed": seed,
        "epochs": epochs,
        "n_train": n_train,
        "n_test": len(x_test),
        "n_flipped": int(flipped.sum()),
    }
    return rows, info


def table(rows, info):
    lines = [
        f"load_digits, {info['n_train']} train ({info['n_flipped']} labels flipped, "
        f"{info['n_flipped'] / info['n_train']:.0%}), {info['n_test']} clean test; "
        f"MLP {'-'.join(map(str, HIDDEN))}; batch {BATCH_SIZE}, {info['epochs']} epochs, "
        f"lr {LEARNING_RATE:g}, weight decay {WEIGHT_DECAY:g}; seed {info['seed']}; "
        f"backend {keras.backend.backend()}",
        "",
        "| optimizer | train acc (noisy labels) | flipped labels memorised "
        "| best test acc (epoch) | final test acc | final test loss (best) | wall time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['train_acc']:.1%} | {r['memorised']:.1%} "
            f"| {r['best_test_acc']:.1%} ({r['best_epoch']}) | {r['final_test_acc']:.1%} "
            f"| {r['final_test_loss']:.3f} ({r['best_test_loss']:.3f}) | {r['seconds']:.1f} s |"
        )
    return "\n".join(lines)


def interpretation(rows, info):
    """A paragraph whose every claim is computed from `rows`."""
    adam, others = rows[0], rows[1:]
    n_test = info["n_test"]
    # One test example is worth 1/n_test of accuracy: differences of a few
    # examples are not a result, whatever their sign.
    resolution = 3 / n_test

    def compare(a, b, key, higher_is_better=True, fmt="{:.1%}"):
        diff = a[key] - b[key]
        if abs(diff) < resolution:
            verdict = "about the same as"
        elif (diff > 0) == higher_is_better:
            verdict = "better than"
        else:
            verdict = "worse than"
        return f"{fmt.format(a[key])} ({verdict} Adam's {fmt.format(b[key])})"

    parts = []
    adam_drop = adam["best_test_acc"] - adam["final_test_acc"]
    parts.append(
        f"Adam fit {adam['memorised']:.0%} of the flipped training labels and its "
        f"clean test accuracy went from a best of {adam['best_test_acc']:.1%} "
        f"(epoch {adam['best_epoch']}) to {adam['final_test_acc']:.1%} at the end"
        + (f" (a drop of {adam_drop:.1%})" if adam_drop >= resolution else "")
        + f"; its test loss ended {adam['final_test_loss'] / adam['best_test_loss']:.2f}x "
        f"its best."
    )
    for r in others:
        drop = r["best_test_acc"] - r["final_test_acc"]
        parts.append(
            f"{r['name']} fit {r['memorised']:.0%} of the flipped labels; "
            f"final test accuracy {compare(r, adam, 'final_test_acc')}, best "
            f"{compare(r, adam, 'best_test_acc')}"
            + (f", dropping {drop:.1%} from its best" if drop >= resolution else "")
            + f"; final test loss {r['final_test_loss']:.3f} "
            f"({r['final_test_loss'] / r['best_test_loss']:.2f}x its best) vs Adam's "
            f"{adam['final_test_loss']:.3f}; time {r['seconds'] / adam['seconds']:.1f}x Adam's."
        )
    parts.append(
        f"One seed: differences below {resolution:.1%} ({3} of {n_test} test "
        "examples) are reported as 'about the same', and none of this is a "
        "seed-averaged result."
    )
    return " ".join(parts)


def limit_threads(n):
    """Intra-op CPU threads for torch / TensorFlow (`n` <= 0: leave as is).

    The model is tiny, so extra threads buy nothing, and on a busy machine
    (more runnable processes than cores) torch's OpenMP threads can make
    each small op wait for a descheduled thread: measured 20x slower.
    """
    if n <= 0:
        return
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(n)
    elif backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(n)
        except RuntimeError:  # TensorFlow already initialised
            pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads for torch/TensorFlow (default 1; 0 = backend default)",
    )
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    start = time.perf_counter()
    rows, info = run(seed=args.seed, epochs=args.epochs)
    print(table(rows, info))
    print()
    print(interpretation(rows, info))
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
