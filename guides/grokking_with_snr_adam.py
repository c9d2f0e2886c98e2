"""
Title: Grokking modular division with SNRAdam
Author: keras_snr contributors
Date created: 2026/11/28
Last modified: 2026/12/04
Description: Train a small transformer on a·b⁻¹ mod 97 with AdamW and SNRAdam side by side and compare the steps each needs to generalise.
"""

"""
## Introduction

*Grokking* (Power et al., 2022): a small transformer trained on a quarter of
the table of a·b⁻¹ mod 97 memorises its training pairs within a few hundred
steps, and only thousands of steps later, under weight decay, starts to get
the held-out pairs right. Litman & Guo report that their SNR-gated Adam
(`keras_snr.SNRAdam`) reaches 95 % held-out accuracy at step 5,950 against
29,450 for AdamW, 4.9× sooner.

This guide runs the two optimizers side by side on that task, from the same
initial weights and data split, plots held-out accuracy against step and
prints the steps each needs to reach 95 % and 99 %. One run of each is an
anecdote: `benchmarks/grokking.py` measures the same comparison over seeds,
against a tuned AdamW and against Grokfast, and
`benchmarks/results/grokking.md` has its table. Read that before you expect
a speed-up: **in our measurements the gate did not make grokking faster
than a well-set AdamW** (see the last section).
"""

"""
## Setup

The guide runs as a script; `--help` lists its options. The figure goes to
`--out-dir` (by default a new temporary folder, printed at the end).
"""

import argparse
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

parser = argparse.ArgumentParser(
    description="Grokking a*b^-1 mod 97 with AdamW and SNRAdam side by side. "
    "Full run: up to 10,000 steps of a 2-layer transformer per optimizer (each "
    "stops once it reaches 99 % held-out accuracy), at most about 45 minutes on "
    "a 2-core CPU (estimated, not run end to end: with the JAX backend on a "
    "shared 2-core machine, 2026/11/30, 100-step chunks took about 80 ms per "
    "step with AdamW and 175 ms with SNRAdam, times the 10,000-step cap).",
)
parser.add_argument(
    "--quick",
    action="store_true",
    help="smoke test: 40 steps of a 1-layer, width-32 transformer, batch 128, "
    "512 held-out pairs (about 25-40 s with JAX); the numbers mean nothing",
)
parser.add_argument(
    "--out-dir",
    help="folder for grokking_with_snr_adam.png (default: a new temporary folder)",
)
args, _ = parser.parse_known_args()
out_dir = args.out_dir or tempfile.mkdtemp(prefix="grokking_with_snr_adam-")
os.makedirs(out_dir, exist_ok=True)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_snr  # noqa: E402

"""
## The task

Every pair (a, b) with 0 ≤ a < 97 and 1 ≤ b < 97 is a sequence of three
tokens `[a, b, =]` labelled a·b⁻¹ mod 97; 25 % of the 9,312 pairs are for
training, the rest are held out. (Division uses Fermat's little theorem:
b⁻¹ = b^(p-2) mod p for prime p.)
"""

OPERATIONS = {
    "add": lambda a, b, p: (a + b) % p,
    "div": lambda a, b, p: (a * pow(int(b), p - 2, p)) % p,  # a * b^-1, p prime
}


def modular_data(operation, p=97, train_fraction=0.25, seed=0, equals_token=False):
    """All pairs (a, b) of the table `operation` mod `p`, split at random.

    Division uses b in 1..p-1. With `equals_token=True` every input is
    `[a, b, p]` (token `p` is "="), the format of the transformer.
    Returns `(x_train, y_train), (x_val, y_val)`, int32.
    """
    f = OPERATIONS[operation]
    bs = range(1, p) if operation == "div" else range(p)
    pairs = np.array([(a, b) for a in range(p) for b in bs], dtype="int32")
    y = np.array([f(a, b, p) for a, b in pairs], dtype="int32")
    if equals_token:
        pairs = np.concatenate([pairs, np.full((len(pairs), 1), p, "int32")], 1)
    order = np.random.default_rng(seed).permutation(len(y))
    n = int(round(train_fraction * len(y)))
    train, val = order[:n], order[n:]
    return (pairs[train], y[train]), (pairs[val], y[val])


(x_train, y_train), (x_val, y_val) = modular_data(
    "div", p=97, train_fraction=0.25, seed=0, equals_token=True
)
print(f"{len(x_train)} training pairs, {len(x_val)} held-out pairs")

batch_size = 512
total_steps = 10_000
eval_every = 100
if args.quick:  # CI: a few small steps show the mechanics, nothing more
    batch_size, total_steps, eval_every = 128, 40, 20
    x_val, y_val = x_val[:512], y_val[:512]


def training_chunk(rng):
    """`eval_every` random minibatches, laid end to end for one `fit()` call."""
    idx = np.concatenate(
        [rng.choice(len(x_train), batch_size, replace=False) for _ in range(eval_every)]
    )
    return x_train[idx], y_train[idx]


"""
## The model

A decoder-only transformer: 2 layers, width 128, 4 heads, pre-LayerNorm,
predicting the answer from the last token (in quick mode: 1 layer, width 32,
batch 128, 40 steps). Token embeddings plus a learned embedding of each of
the three positions go in; a causal mask keeps each position from seeing the
ones after it.
"""


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position."""

    def build(self, input_shape):
        self.table = self.add_weight(
            shape=input_shape[1:], initializer="random_normal", name="table"
        )

    def call(self, x):
        return x + self.table


def transformer(p=97, width=128, heads=4, layers=2, seq_len=3):
    """Decoder-only pre-LayerNorm transformer; predicts from the last token."""
    tokens = keras.Input((seq_len,), dtype="int32")
    x = PositionEmbedding()(keras.layers.Embedding(p + 1, width)(tokens))
    for _ in range(layers):
        h = keras.layers.LayerNormalization()(x)
        h = keras.layers.MultiHeadAttention(heads, width // heads)(
            h, h, use_causal_mask=True
        )
        x = x + h
        h = keras.layers.LayerNormalization()(x)
        h = keras.layers.Dense(4 * width, activation="relu")(h)
        x = x + keras.layers.Dense(width)(h)
    x = keras.layers.LayerNormalization()(x[:, -1])
    return keras.Model(tokens, keras.layers.Dense(p)(x))


def make_model():
    keras.utils.set_random_seed(0)  # the same initial weights for both runs
    if args.quick:
        return transformer(width=32, heads=4, layers=1)
    return transformer(width=128, heads=4, layers=2)


"""
## The two optimizers

Both use the grokking literature's settings: learning rate 1e-3, β₂ = 0.98,
weight decay 1 (decoupled), batch 512. `SNRAdam` scales each coordinate's
Adam step by its gate q ∈ [0, 1]; on a finite training set of n examples
with batch b the noise coefficient is `alpha = b / (n - b)`, which
`keras_snr.finite_dataset_alpha` computes.
"""

common = dict(learning_rate=1e-3, beta_1=0.9, beta_2=0.98, epsilon=1e-8, weight_decay=1.0)
optimizers = {
    "AdamW": lambda: keras.optimizers.AdamW(**common),
    "SNRAdam": lambda: keras_snr.SNRAdam(
        alpha=keras_snr.finite_dataset_alpha(batch_size, len(x_train)), **common
    ),
}

"""
## Training side by side

Each `fit()` call below trains `eval_every` steps on freshly drawn
minibatches; then the whole held-out set is evaluated. The minibatch
sequence is the same for both optimizers. A run stops once it reaches 99 %
held-out accuracy. For `SNRAdam` we also print the mean gate q over all
coordinates, which `SNRAdam.gate_summary()` reads from the optimizer's state
after the last update (`keras_snr.GateLogger` logs the same number every
epoch inside `fit()`).
"""


def gate_note(model):
    """The mean gate q of an SNRAdam model, as text to print ("" for AdamW)."""
    if not isinstance(model.optimizer, keras_snr.SNRAdam):
        return ""
    gate_mean = model.optimizer.gate_summary()["gate_mean"]
    return f", mean gate q {float(keras.ops.convert_to_numpy(gate_mean)):.2f}"


curves = {}
for name, make_optimizer in optimizers.items():
    model = make_model()
    model.compile(
        optimizer=make_optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(0)
    curve = []
    for step in range(eval_every, total_steps + 1, eval_every):
        x, y = training_chunk(rng)
        fit = model.fit(x, y, batch_size=batch_size, shuffle=False, verbose=0)
        _, val_accuracy = model.evaluate(x_val, y_val, batch_size=2048, verbose=0)
        curve.append((step, val_accuracy))
        if step % 1000 == 0:
            print(
                f"  {name} step {step}: held-out accuracy {val_accuracy:.3f}"
                f"{gate_note(model)}"
            )
        if val_accuracy >= 0.99:
            break
    curves[name] = curve
    print(
        f"{name}: after {step} steps train accuracy (last chunk) "
        f"{fit.history['accuracy'][-1]:.3f}, held-out accuracy {val_accuracy:.3f}"
        f"{gate_note(model)}"
    )

"""
## Steps to 95 % and 99 % held-out accuracy
"""


def steps_to(history, threshold):
    """First evaluated step at which held-out accuracy >= threshold, or None."""
    for step, accuracy in history:
        if accuracy >= threshold:
            return step
    return None


for name, curve in curves.items():
    s95, s99 = (steps_to(curve, a) for a in (0.95, 0.99))
    print(
        f"{name}: 95 % at step {s95 or f'> {total_steps}'}, "
        f"99 % at step {s99 or f'> {total_steps}'}"
    )

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.figure(figsize=(6, 4))
for name, curve in curves.items():
    plt.plot(*zip(*curve), label=name)
plt.xlabel("optimizer step")
plt.ylabel("held-out accuracy")
plt.xscale("log")
plt.legend()
plt.title("a·b⁻¹ mod 97, 25 % of pairs for training")
figure_path = os.path.join(out_dir, "grokking_with_snr_adam.png")
plt.savefig(figure_path, dpi=100)
print(f"wrote {figure_path}")

"""
## What to expect, and when not to use the gate for this

The single run above is one seed. `benchmarks/grokking.py` repeats the
comparison over 5 seeds (same split, initial weights and minibatches for
every optimizer), on CPU-sized MLP versions of the task and, on one NVIDIA
H200, on this guide's task and transformer itself (`--task div_transformer
--cap 30000`). `benchmarks/results/grokking.md` has the tables.

The paper's task (lr 1e-3, weight decay 1, batch 512, 5 seeds), median steps
to 95 % held-out accuracy: AdamW 14,900; `SNRAdam(alpha=1)` 12,500 (1.19x
sooner; the seeds overlap, 8,500-15,900 against 14,300-16,000); the
finite-dataset alpha 18,200 (0.82x); Grokfast-EMA 11,200 (1.33x); AdamW at
lr 3e-3 2,200 (one seed, 6.8x). No 5x. But here the gate is not just a
smaller step: with `alpha=1` its mean stayed near 0.05 all run, and AdamW at
a tenth of the learning rate (3 seeds) had not grokked at all by 30,000
steps. It is the one task measured where the gate did something a smaller
learning rate does not; whether that carries over to other tasks is what
`benchmarks/gate_study.py` asks (README, "The gate against a smaller
step").

On the CPU-sized MLP tasks:

- At the paper-style setting (lr 1e-3, weight decay 1) `SNRAdam` groks
  *later* than AdamW, not 5× sooner: on (a+b) mod 97 with an MLP, median
  4,900 steps to 95 % against 3,800 for AdamW.
- The gate's mean openness q stays near 0.3-0.35 through training. It acts
  mostly as a ~3× smaller step size. Raising AdamW's learning rate
  (3e-3, 1e-2) speeds grokking up far more than the gate does. At every
  learning rate we tried, AdamW at the same setting was at least as fast as
  `SNRAdam`.
- Grokfast-EMA (α 0.98, λ 2) was faster than AdamW at lr 1e-3 and level
  with it or slower at higher learning rates. `SNRAdam` did not beat it.
- α = 1 on this finite training set, and the paper's `"soft"` gate, shut
  the gate so far that the runs did not grok within 8,000 steps.
  `SNRAdam()`'s defaults (α = 1) at lr 1e-2, over 5 seeds on both MLP tasks:
  no grokking by the cap, and the training set never fitted (train accuracy
  5-44 %), where AdamW at a tenth of that rate, the smaller-step control,
  fitted it on every seed and grokked (a+b) mod 97 in 3,800 steps. Here the
  closed gate did worse than a smaller step (the weight decay is not gated).

So use `SNRAdam` here for what it does to noisy-label memorisation (see the
README), not to grok faster. If a paper-style baseline groks 5× slower for
you, first tune AdamW's learning rate and weight decay.
"""
