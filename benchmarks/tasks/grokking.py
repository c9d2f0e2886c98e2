"""The grokking benchmark's data, models and Grokfast baseline
(`benchmarks/grokking.py`, tested in `tests/benchmarks/test_grokking.py`).

- `modular_data`: the tables a+b, a*b^-1 (mod p), split into train/held-out.
- `transformer` / `mlp`: the two small Keras models used.
- `GrokfastAdamW`: AdamW on Grokfast-EMA filtered gradients (Lee et al. 2024).
- `steps_to`: the first evaluated step reaching a held-out accuracy.

`guides/grokking_with_snr_adam.py` has its own copy of the data and the
transformer (a guide runs on its own).
"""

import keras
import numpy as np
from keras import ops

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


def mlp(p=97, embedding=64, hidden=256):
    """Embed a and b (shared table), concatenate, one hidden ReLU layer."""
    tokens = keras.Input((2,), dtype="int32")
    x = keras.layers.Flatten()(keras.layers.Embedding(p, embedding)(tokens))
    x = keras.layers.Dense(hidden, activation="relu")(x)
    return keras.Model(tokens, keras.layers.Dense(p)(x))


class GrokfastAdamW(keras.optimizers.AdamW):
    """AdamW fed Grokfast-EMA gradients: `g' = g + lamb * ema`, with
    `ema <- alpha * ema + (1 - alpha) * g` (the first step sets `ema = g`, as
    in the authors' `gradfilter_ema`). Weight decay stays decoupled."""

    def __init__(self, *args, grokfast_alpha=0.98, grokfast_lamb=2.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.grokfast_alpha = grokfast_alpha
        self.grokfast_lamb = grokfast_lamb

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._slow_gradients = [
            self.add_variable_from_reference(v, name="slow_gradient") for v in var_list
        ]

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        a, lamb = self.grokfast_alpha, self.grokfast_lamb
        first = ops.cast(ops.equal(self.iterations, 0), "float32")
        filtered = []
        for g, var in zip(grads, trainable_variables):
            ema = self._slow_gradients[self._get_variable_index(var)]
            w = ops.cast(first, g.dtype)
            new = w * g + (1 - w) * (a * ema + (1 - a) * g)
            self.assign(ema, new)
            filtered.append(g + lamb * new)
        super()._backend_update_step(filtered, trainable_variables, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(grokfast_alpha=self.grokfast_alpha, grokfast_lamb=self.grokfast_lamb)
        return config


def steps_to(history, threshold):
    """First evaluated step at which held-out accuracy >= threshold, or None."""
    for step, accuracy in history:
        if accuracy >= threshold:
            return step
    return None
