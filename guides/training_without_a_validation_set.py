"""
Title: Training without a validation set
Author: keras_snr contributors
Date created: 2026/11/28
Last modified: 2026/12/07
Description: Estimate the held-out loss and stop on memorisation without holding data out, with `PopulationRiskEstimate` and `ValidationFreeStopping`.
Accelerator: None
"""

"""
## Introduction

Holding out data for validation costs training examples; never stopping lets
a network memorise noisy labels. `keras_snr` offers two callbacks that work
from the training run alone:

- `keras_snr.PopulationRiskEstimate` writes an estimate of the loss on unseen
  data labelled like the training data (`pop_risk`), an interval for it
  (`pop_risk_low`, `pop_risk_high`), whether the logged quantities can tell
  (`pop_risk_reliable`), the same for the accuracy (`pop_accuracy`, with
  `x_train` and `y_train`), and `memorization`: 1 once a strong wave of
  prediction changes on a sample of the training set says that the network
  began to memorise (the "Label Wave" of Yuan, Feng & Liu, ICLR 2024).
- `keras_snr.ValidationFreeStopping(estimate)` reads it. It restores an
  earlier epoch only on evidence of memorisation: a wave, and a training
  loss that has since fallen far below its value at that epoch. Without the
  evidence the model keeps its latest weights, as if trained to the end.

This guide trains one network three ways on digits with noisy labels: to
the end, with a 20 % holdout split and `EarlyStopping`, and with the two
callbacks on all the data; then it shows what the callbacks saw.
"""

"""
## Setup

The guide runs as a script (`--quick` for a short run). The figure goes to
`--out-dir`, by default a new temporary folder. It needs scikit-learn for the
digits data.
"""

import argparse
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

parser = argparse.ArgumentParser(
    description="Estimate the held-out loss and stop on memorisation without a "
    "validation set (keras_snr.PopulationRiskEstimate + ValidationFreeStopping), side "
    "by side with a 20 % holdout split. Full run: four trainings of a small MLP on "
    "1,000 digits, 60 epochs each, about 20 s with JAX on a 2-core CPU.")
parser.add_argument("--quick", action="store_true", help="smoke test: 8 epochs")
parser.add_argument("--out-dir", help="folder for the figure (default: a new temporary folder)")
args, _ = parser.parse_known_args()
out_dir = args.out_dir or tempfile.mkdtemp(prefix="training_without_a_validation_set-")
os.makedirs(out_dir, exist_ok=True)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_snr  # noqa: E402

"""
## A task that overfits

Digits with 40 % of the training labels replaced by a random class: a wide
MLP first learns the digits, then memorises the wrong labels. The test set
keeps its true labels; it scores the three ways of stopping and is never
used to choose.
"""

rng = np.random.default_rng(0)
x, y_clean = load_digits(return_X_y=True)
x = (x / 16.0).astype("float32")
y_noisy = np.where(rng.random(len(y_clean)) < 0.4, rng.integers(0, 10, len(y_clean)), y_clean)
order = rng.permutation(len(x))
n, batch_size, epochs = 1000, 32, 8 if args.quick else 60
x_train, y_train = x[order[:n]], y_noisy[order[:n]]
x_test, y_test = x[order[n:]], y_clean[order[n:]]
y_test_noisy = y_noisy[order[n:]]  # labelled like the training data: what pop_risk estimates


def make_model():
    """An MLP 512-512 with SNRAdam. `alpha` from the training set's size:
    SNRAdam then trains like AdamW (`gate=None` would be AdamW exactly)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(
        optimizer=keras_snr.SNRAdam(learning_rate=1e-3,
                                    alpha=keras_snr.finite_dataset_alpha(batch_size, n)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


"""
## The callbacks, on all the data

Give `PopulationRiskEstimate` the training-set size, the batch size, and
the training inputs and labels (all, or a random subset: it uses at most
`sample_size=256` of them). List it **before** `ValidationFreeStopping` and
before anything else that reads its keys: Keras runs callbacks in order.

`TestCurve` reads the test set after every epoch, for the figure only.
"""


class TestCurve(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.clean_accuracy, self.noisy_loss, self.noisy_accuracy = [], [], []

    def on_epoch_end(self, epoch, logs=None):
        self.clean_accuracy.append(self.model.evaluate(x_test, y_test, verbose=0)[1])
        loss, accuracy = self.model.evaluate(x_test, y_test_noisy, verbose=0)
        self.noisy_loss.append(loss)
        self.noisy_accuracy.append(accuracy)


model = make_model()
estimate = keras_snr.PopulationRiskEstimate(n, batch_size, x_train=x_train, y_train=y_train)
stopping = keras_snr.ValidationFreeStopping(estimate)
curve = TestCurve()
h = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0,
              callbacks=[estimate, stopping, curve]).history
callbacks_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]

print("epoch  train loss  pop_risk [low, high] reliable (test loss, noisy)  "
      "pop_accuracy (test, noisy)  memorization")
for e in range(len(h["loss"])):
    print(f"{e + 1:5d}  {h['loss'][e]:10.3f}  {h['pop_risk'][e]:8.3f} "
          f"[{h['pop_risk_low'][e]:.3f}, {h['pop_risk_high'][e]:.3f}] "
          f"{h['pop_risk_reliable'][e]:3.0f}  ({curve.noisy_loss[e]:.3f})  "
          f"{h['pop_accuracy'][e]:12.3f} ({curve.noisy_accuracy[e]:.3f})  "
          f"{h['memorization'][e]:3.0f}")
print(f"trained {len(h['loss'])} epochs; the model holds epoch {stopping.best_epoch + 1}'s "
      f"weights (restored: {stopping.restored}); clean test accuracy {callbacks_accuracy:.3f}")

"""
## The alternatives: train to the end, or hold out 20 %
"""

model = make_model()
model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0)
end_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]

model = make_model()
model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0,
          validation_split=0.2, callbacks=[keras.callbacks.EarlyStopping(
              monitor="val_accuracy", mode="max", patience=10, restore_best_weights=True)])
holdout_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]

print("clean test accuracy")
print(f"  trained to the end                         {end_accuracy:.3f}")
print(f"  20 % held out, EarlyStopping(val_accuracy) {holdout_accuracy:.3f}")
print(f"  PopulationRiskEstimate + ValidationFreeStopping, all data  {callbacks_accuracy:.3f}")

"""
One task and one seed say little either way: the benchmark over many tasks
is summarised below.

## What the callbacks saw

Left: `pop_risk` and its interval against the test loss with labels as noisy
as the training labels (what it estimates; never seen by the callbacks),
the epochs marked reliable shaded darker. Right: `pop_accuracy` against the
noisy and the clean test accuracy, with the epoch `memorization` turned on
and the epoch whose weights the model kept.
"""

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

axis = np.arange(1, len(h["loss"]) + 1)
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
left.fill_between(axis, h["pop_risk_low"], h["pop_risk_high"], alpha=0.15,
                  label="pop_risk_low to _high")
reliable = np.array(h["pop_risk_reliable"]) > 0.5
left.fill_between(axis, h["pop_risk_low"], h["pop_risk_high"], where=reliable, alpha=0.25,
                  label="pop_risk_reliable = 1")
left.plot(axis, h["pop_risk"], label="pop_risk")
left.plot(axis, curve.noisy_loss, "--", label="test loss, noisy labels (never seen)")
left.set(xlabel="epoch", title="loss")
left.legend(fontsize=7)
right.fill_between(axis, h["pop_accuracy_low"], h["pop_accuracy_high"], alpha=0.2,
                   label="pop_accuracy_low to _high")
right.plot(axis, h["pop_accuracy"], label="pop_accuracy")
right.plot(axis, curve.noisy_accuracy, "--", label="test accuracy, noisy labels")
right.plot(axis, curve.clean_accuracy, label="clean test accuracy")
memorizing = [e for e in axis if h["memorization"][e - 1] == 1]
if memorizing:
    right.axvline(memorizing[0], color="k", lw=0.8, ls=":", label="memorization = 1")
right.axvline(stopping.best_epoch + 1, color="k", lw=0.8, label="weights kept")
right.set(xlabel="epoch", title="accuracy")
right.legend(fontsize=7)
fig.tight_layout()
figure_path = os.path.join(out_dir, "training_without_a_validation_set.png")
fig.savefig(figure_path, dpi=100)
print(f"wrote {figure_path}")

"""
## Conclusion

- `pop_risk` estimates the held-out loss; trust it where
  `pop_risk_reliable` is 1, and read the interval elsewhere. It estimates
  the loss with labels as noisy as the training labels, on fresh draws from
  the training distribution, not under a distribution shift.
- `ValidationFreeStopping` never rolls back without evidence of
  memorisation, so it rarely makes a model worse than training to the end,
  and then by little; where a 20 % holdout is affordable, the holdout did
  better on noisy labels on average, at the risk of a worse model on some
  tasks. Without a wave of prediction changes it keeps the last weights,
  even while the network memorises.
- Both need `SNRAdam` (use `SNRAdam(gate=None)` to watch an AdamW run),
  `x_train` and `y_train` for classifiers, and `backup_dir=` to resume with
  `keras.callbacks.BackupAndRestore`.

How the estimate and the rule were chosen, and how they did on a
pre-registered set of tasks they were not chosen on:
[docs/population_risk.md](../docs/population_risk.md).
"""
