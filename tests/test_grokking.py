"""The grokking guide's and benchmark's shared helpers (guides/_grokking.py)."""

import os
import sys

import keras
import numpy as np
import pytest
from conftest import TESTS_DIR

import keras_snr

sys.path.insert(0, os.path.join(os.path.dirname(TESTS_DIR), "guides"))
import _grokking  # noqa: E402


def test_modular_division_table():
    (x_train, y_train), (x_val, y_val) = _grokking.modular_data(
        "div", p=7, train_fraction=0.5, seed=1, equals_token=True
    )
    x = np.concatenate([x_train, x_val])
    y = np.concatenate([y_train, y_val])
    assert len(y) == 7 * 6 and len(y_train) == 21
    assert (x[:, 2] == 7).all()
    # y * b == a (mod 7): y is a * b^-1.
    np.testing.assert_array_equal((y * x[:, 1]) % 7, x[:, 0])


def test_grokfast_matches_its_definition():
    """Two steps by hand: ema_1 = g_1, ema_2 = a * g_1 + (1 - a) * g_2, and
    the weights move as AdamW fed g + lamb * ema."""
    a, lamb = 0.9, 2.0
    g1 = np.array([0.5, -1.0], "float32")
    g2 = np.array([-1.0, 3.0], "float32")
    ema1 = g1
    ema2 = a * g1 + (1 - a) * g2
    settings = dict(learning_rate=0.1, weight_decay=0.5, beta_2=0.98)

    w = keras.Variable(np.array([1.0, -2.0], "float32"))
    grokfast = _grokking.GrokfastAdamW(grokfast_alpha=a, grokfast_lamb=lamb, **settings)
    reference_w = keras.Variable(np.array([1.0, -2.0], "float32"))
    reference = keras.optimizers.AdamW(**settings)

    grokfast.apply([keras.ops.convert_to_tensor(g1)], [w])
    reference.apply([keras.ops.convert_to_tensor(g1 + lamb * ema1)], [reference_w])
    np.testing.assert_allclose(grokfast._slow_gradients[0].numpy(), ema1, rtol=1e-6)
    grokfast.apply([keras.ops.convert_to_tensor(g2)], [w])
    reference.apply([keras.ops.convert_to_tensor(g2 + lamb * ema2)], [reference_w])
    np.testing.assert_allclose(grokfast._slow_gradients[0].numpy(), ema2, rtol=1e-6)
    np.testing.assert_allclose(w.numpy(), reference_w.numpy(), rtol=1e-6)
    # The filter changed the trajectory (the test would see a no-op wrapper).
    plain_w = keras.Variable(np.array([1.0, -2.0], "float32"))
    plain = keras.optimizers.AdamW(**settings)
    plain.apply([keras.ops.convert_to_tensor(g1)], [plain_w])
    plain.apply([keras.ops.convert_to_tensor(g2)], [plain_w])
    assert not np.allclose(plain_w.numpy(), w.numpy())


@pytest.mark.parametrize("gate", ["snr", "soft", "hard"])
def test_mean_gate_from_slots(gate):
    """Recomputes q from m, v, s by the docstring's formulas, in NumPy."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in [(3, 4), (5,)]]
    optimizer = keras_snr.SNRAdam(gate=gate, alpha=0.3, softness=2.0, rho=0.9)
    for _ in range(3):
        grads = [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32"))
                 for v in variables]
        optimizer.apply(grads, variables)
    qs = []
    for m, s in zip(optimizer._momentums, optimizer._noise_variances):
        signal = (m.numpy() / (1 - 0.9**3)) ** 2
        noise = s.numpy() / (1 - 0.9**3)
        if gate == "snr":
            q = signal / (signal + 2.0 * 0.3 * noise + 1e-16)
        elif gate == "soft":
            d = np.maximum(signal - 0.3 * noise, 0)
            q = d / (d + 2.0 * noise + 1e-16)
        else:
            q = (signal > 0.3 * noise).astype("float32")
        qs.append(q.ravel())
    expected = np.concatenate(qs).mean()
    got = float(keras.ops.convert_to_numpy(_grokking.mean_gate(optimizer, 3)))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
