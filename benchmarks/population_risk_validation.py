"""How well does `PopulationRiskEstimate` track held-out loss?

Trains small models on four tasks whose held-out data the estimator never
sees, under `SNRAdam(gate=None)` (AdamW dynamics) and `SNRAdam` with the snr
gate at `alpha = finite_dataset_alpha(b, n)`, and compares every estimator
of `keras_snr.callbacks.ESTIMATORS` against the held-out loss of each epoch:

- Spearman correlation between the estimate and the held-out loss over
  epochs (NaN for a constant estimate);
- mean absolute relative error |estimate - held-out| / held-out;
- early-stopping regret: held-out loss at the epoch minimising the estimate,
  relative to the best held-out loss of the run; also for "never stop"
  (last epoch, which here is also the lowest-train-loss epoch) and for
  "stop after epoch 1" (the prequential first-epoch loss is constant, so
  minimising it stops at once).

Held-out loss comes from `validation_data`; the callback reads only
`logs["loss"]` and the optimizer's slots, never `val_*`.

Tasks: (a) sklearn digits with 30 % of labels flipped (train and held-out
labels drawn from the same noisy distribution), MLP; (b) teacher-student
regression with noisy targets; (c) modular addition (a + b) mod 23 with 40 %
of pairs for training; (d) a noisy 32x32 camera image fitted by a
Fourier-feature MLP on 60 % of its pixels, held-out = the other 40 % of
noisy pixels (`clean_mse` of the full image is reported too).

Usage:
    KERAS_BACKEND=jax python benchmarks/population_risk_validation.py \
        --seeds 3 --out results.json
    python benchmarks/population_risk_validation.py --quick
"""

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

import keras_snr  # noqa: E402
from keras_snr.callbacks import ESTIMATORS  # noqa: E402


# ---------------------------------------------------------------- tasks


def noisy_digits(seed, quick):
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    flip = rng.random(len(y)) < 0.3
    y = np.where(flip, rng.integers(0, 10, len(y)), y)
    order = rng.permutation(len(y))
    n = 400 if quick else 600
    tr, te = order[:n], order[n:]
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return model, loss, (x[tr], y[tr]), (x[te], y[te]), 40, None


def teacher_student(seed, quick):
    rng = np.random.default_rng(seed)
    d, n, n_test = 20, 500, 4000
    w1 = rng.normal(size=(d, 16)) / np.sqrt(d)
    w2 = rng.normal(size=(16, 1)) / 4.0

    def sample(k):
        x = rng.normal(size=(k, d)).astype("float32")
        f = np.tanh(x @ w1) @ w2
        return x, (f + 0.3 * rng.normal(size=f.shape)).astype("float32")

    train, test = sample(n), sample(n_test)
    model = keras.Sequential(
        [
            keras.Input((d,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    return model, "mse", train, test, 60, None


def modular_addition(seed, quick):
    rng = np.random.default_rng(seed)
    p = 23
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    x = np.concatenate([np.eye(p)[a], np.eye(p)[b]], axis=1).astype("float32")
    y = (a + b) % p
    order = rng.permutation(len(y))
    n = int(0.4 * len(y))
    tr, te = order[:n], order[n:]
    model = keras.Sequential(
        [
            keras.Input((2 * p,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(p),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return model, loss, (x[tr], y[tr]), (x[te], y[te]), 80, None


def noisy_image(seed, quick):
    from skimage import data
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    img = resize(data.camera().astype("float32") / 255.0, (32, 32), anti_aliasing=True)
    noisy = img + 0.1 * rng.normal(size=img.shape)
    yy, xx = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), indexing="ij")
    coords = np.stack([yy.ravel(), xx.ravel()], 1)
    freqs = rng.normal(size=(2, 64)) * 8.0
    feats = np.concatenate(
        [np.sin(np.pi * coords @ freqs), np.cos(np.pi * coords @ freqs)], 1
    ).astype("float32")
    target = noisy.reshape(-1, 1).astype("float32")
    order = rng.permutation(len(target))
    n = int(0.6 * len(target))
    tr, te = order[:n], order[n:]
    model = keras.Sequential(
        [
            keras.Input((128,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    extra = (feats, img.reshape(-1, 1).astype("float32"))
    return model, "mse", (feats[tr], target[tr]), (feats[te], target[te]), 60, extra


TASKS = {
    "noisy_digits": noisy_digits,
    "teacher_student": teacher_student,
    "modular_addition": modular_addition,
    "noisy_image": noisy_image,
}


# ---------------------------------------------------------------- runs


def run(task, gate, seed, quick, batch_size=32):
    keras.utils.set_random_seed(seed)
    model, loss, train, test, epochs, extra = TASKS[task](seed, quick)
    if quick:
        epochs = max(5, epochs // 5)
    n = len(train[0])
    alpha = keras_snr.finite_dataset_alpha(batch_size, n)
    if gate is None:
        opt = keras_snr.SNRAdam(learning_rate=1e-3, gate=None, weight_decay=None)
    else:
        opt = keras_snr.SNRAdam(
            learning_rate=1e-3, gate=gate, alpha=alpha, weight_decay=None
        )
    model.compile(optimizer=opt, loss=loss)
    callbacks = [
        keras_snr.PopulationRiskEstimate(
            dataset_size=n, batch_size=batch_size, diagnostics=True
        )
    ]
    clean = []
    if extra is not None:

        class CleanMSE(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                pred = self.model.predict(extra[0], batch_size=1024, verbose=0)
                clean.append(float(np.mean((pred - extra[1]) ** 2)))

        callbacks.append(CleanMSE())
    history = model.fit(
        *train,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=test,
        validation_batch_size=2048,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    ).history
    history["clean_mse"] = clean
    return history


def score(history):
    held = np.asarray(history["val_loss"])
    best = held.min()
    out = {}
    for name in ESTIMATORS:
        est = np.asarray(history[f"pop_risk_{name}"])
        if np.all(np.isfinite(est)) and np.ptp(est) > 0:
            rho = stats.spearmanr(est, held).statistic
        else:
            rho = float("nan")
        mare = float(np.mean(np.abs(est - held) / held))
        stop = int(np.nanargmin(est)) if np.any(np.isfinite(est)) else len(held) - 1
        out[name] = {
            "spearman": float(rho),
            "mare": mare,
            "regret": float(held[stop] / best - 1),
            "stop_epoch": stop + 1,
        }
    train = np.asarray(history["loss"])
    out["never_stop"] = {"regret": float(held[-1] / best - 1)}
    out["lowest_train_loss"] = {"regret": float(held[int(np.argmin(train))] / best - 1)}
    out["epoch_1"] = {"regret": float(held[0] / best - 1)}
    out["best_epoch"] = int(np.argmin(held)) + 1
    out["epochs"] = len(held)
    return out


def fmt(values):
    values = np.asarray([v for v in values], dtype=float)
    if np.all(np.isnan(values)):
        return "n/a"
    if len(values) == 1:
        return f"{np.nanmean(values):.3f}"
    return f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, few epochs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--out", help="write all histories and scores as JSON")
    args = parser.parse_args()
    seeds = [0] if args.quick else list(range(args.seeds))
    gates = {"adam (gate=None)": None, "snr gate": "snr"}
    results = []
    start = time.time()
    for task in args.tasks:
        for gate_name, gate in gates.items():
            for seed in seeds:
                t0 = time.time()
                history = run(task, gate, seed, args.quick)
                scores = score(history)
                results.append(
                    {"task": task, "optimizer": gate_name, "seed": seed,
                     "history": history, "scores": scores}
                )
                print(
                    f"# {task:17s} {gate_name:16s} seed {seed}: "
                    f"best epoch {scores['best_epoch']}/{scores['epochs']}, "
                    f"{time.time() - t0:.1f}s",
                    flush=True,
                )
    print(f"\n{len(results)} runs in {time.time() - start:.0f}s, backend "
          f"{keras.backend.backend()}, seeds {seeds}\n")
    print("| task | optimizer | estimator | Spearman | MARE | ES regret |")
    print("| --- | --- | --- | --- | --- | --- |")
    for task in args.tasks:
        for gate_name in gates:
            rows = [r["scores"] for r in results
                    if r["task"] == task and r["optimizer"] == gate_name]
            for name in ESTIMATORS:
                print(
                    f"| {task} | {gate_name} | {name} | "
                    f"{fmt([r[name]['spearman'] for r in rows])} | "
                    f"{fmt([r[name]['mare'] for r in rows])} | "
                    f"{fmt([r[name]['regret'] for r in rows])} |"
                )
            for name in ("never_stop", "lowest_train_loss", "epoch_1"):
                print(f"| {task} | {gate_name} | *{name}* | | | "
                      f"{fmt([r[name]['regret'] for r in rows])} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"backend": keras.backend.backend(), "seeds": seeds,
                       "results": results}, f)


if __name__ == "__main__":
    main()
