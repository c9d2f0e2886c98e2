"""The grokking benchmark's data and Grokfast baseline
(`benchmarks/tasks/grokking.py`), and the benchmarks' reading of SNRAdam's
mean gate from stateless state (`benchmarks/tasks/optimizer_state.py`)."""

import keras
import numpy as np
import pytest
from conftest import BACKEND
from tasks import grokking  # benchmarks/ is on pytest's pythonpath
from tasks.optimizer_state import mean_gate

import keras_snr


def test_modular_division_table():
    (x_train, y_train), (x_val, y_val) = grokking.modular_data(
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
    grokfast = grokking.GrokfastAdamW(grokfast_alpha=a, grokfast_lamb=lamb, **settings)
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
def test_mean_gate_reads_stateless_values(gate):
    """`mean_gate(optimizer, values)` on the values `stateless_apply` returns
    equals `gate_summary()` once those values are written back (the formula
    itself is checked against NumPy in test_statistics.py); under `jax.jit`
    too. Other optimizers have no gate."""
    if BACKEND == "tensorflow":
        pytest.skip("stateless_apply is not supported on TensorFlow")
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in [(3, 4), (5,)]]
    optimizer = keras_snr.SNRAdam(gate=gate, alpha=0.3, softness=2.0, rho=0.9)
    optimizer.build(variables)
    train_values = [v.value for v in variables]
    opt_values = [v.value for v in optimizer.variables]
    for _ in range(3):
        grads = [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32"))
                 for v in variables]
        train_values, opt_values = optimizer.stateless_apply(opt_values, grads, train_values)
    assert float(keras.ops.convert_to_numpy(mean_gate(optimizer))) == 1.0  # untouched: step 0
    got = float(keras.ops.convert_to_numpy(mean_gate(optimizer, opt_values)))
    if BACKEND == "jax":
        import jax

        jitted = float(jax.jit(lambda values: mean_gate(optimizer, values))(opt_values))
        assert jitted == pytest.approx(got, rel=1e-6)
    for variable, value in zip(optimizer.variables, opt_values):
        variable.assign(value)
    want = float(keras.ops.convert_to_numpy(optimizer.gate_summary()["gate_mean"]))
    assert got == pytest.approx(want, rel=1e-6)
    assert 0 <= got < 1
    assert mean_gate(keras.optimizers.AdamW()) is None
