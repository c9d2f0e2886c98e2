"""The public view of SNRAdam's state: `statistics()`, `gate_summary()`,
`keras_snr.gate.gate` and `GateLogger`, against the NumPy reference."""

import math

import keras
import numpy as np
import pytest
from conftest import BACKEND
from reference import ReferenceSNRAdam

import keras_snr
from keras_snr import SNRAdam

SHAPES = [(3, 4), (5,), ()]
CONFIGS = [
    dict(gate="snr", alpha=0.3),
    dict(gate="soft", alpha=0.3, softness=3.0),
    dict(gate="hard", alpha=1.0),
    dict(gate="snr", alpha=0.3, reduction="per_tensor"),
    dict(gate=None),
]


def _run(config, steps, seed=0):
    rng = np.random.default_rng(seed)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in SHAPES]
    optimizer = SNRAdam(learning_rate=1e-2, **config)
    reference = ReferenceSNRAdam(learning_rate=1e-2, **config)
    weights = [keras.ops.convert_to_numpy(v).astype(np.float64) for v in variables]
    means = [rng.normal(size=s) for s in SHAPES]
    optimizer.build(variables)
    for _ in range(steps):
        grads = [(mu + rng.normal(size=s)).astype("float32") for mu, s in zip(means, SHAPES)]
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        weights = reference.step(weights, grads)
    return optimizer, variables, reference


def _np(x):
    return keras.ops.convert_to_numpy(x).astype(np.float64)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("steps", [1, 7])
def test_statistics_match_reference(config, steps):
    optimizer, variables, ref = _run(config, steps)
    t = ref.t
    for i, variable in enumerate(variables):
        stats = optimizer.statistics(variable)
        assert isinstance(stats, keras_snr.SNRStatistics)
        m_hat = ref.m[i] / (1 - ref.b1**t)
        v_hat = ref.v[i] / (1 - ref.b2**t)
        s_hat = ref.s[i] / (1 - ref.rho**t)
        np.testing.assert_allclose(_np(stats.momentum), m_hat, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(_np(stats.velocity), v_hat, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(_np(stats.noise_variance), s_hat, rtol=1e-5, atol=1e-7)
        want_q = ref.last_q[i]
        got_q = _np(stats.gate)
        if config.get("reduction") == "per_tensor":
            assert got_q.shape == ()
            want_q = want_q.reshape(-1)[0]
        else:
            assert got_q.shape == SHAPES[i]
        np.testing.assert_allclose(got_q, want_q, rtol=1e-4, atol=1e-6)


def test_statistics_of_all_variables_and_summary():
    config = dict(gate="snr", alpha=0.3)
    optimizer, variables, ref = _run(config, 5)
    stats = optimizer.statistics()
    assert all(len(field) == len(variables) for field in stats)
    for i, variable in enumerate(variables):
        np.testing.assert_array_equal(_np(stats.gate[i]), _np(optimizer.statistics(variable).gate))
    q = np.concatenate([np.ravel(x) for x in ref.last_q])
    t = ref.t
    signal = np.concatenate([np.ravel((m / (1 - ref.b1**t)) ** 2) for m in ref.m])
    noise = np.concatenate([np.ravel(s / (1 - ref.rho**t)) for s in ref.s])
    summary = optimizer.gate_summary()
    assert set(summary) == {"gate_mean", "gate_open_fraction"}
    assert float(summary["gate_mean"]) == pytest.approx(q.mean(), rel=1e-5)
    assert float(summary["gate_open_fraction"]) == pytest.approx(np.mean(signal > 0.3 * noise))


def test_statistics_are_read_only_copies():
    optimizer, variables, _ = _run(dict(gate="snr"), 3)
    before = _np(optimizer.statistics(variables[0]).momentum)
    stats = optimizer.statistics(variables[0])
    _ = stats.momentum * 0  # new tensors; nothing to write back
    np.testing.assert_array_equal(_np(optimizer.statistics(variables[0]).momentum), before)


def test_statistics_before_first_update_and_errors():
    variables = [keras.Variable(np.ones((2,), "float32"))]
    optimizer = SNRAdam()
    with pytest.raises(ValueError, match="needs a built optimizer"):
        optimizer.statistics()
    optimizer.build(variables)
    stats = optimizer.statistics(variables[0])
    np.testing.assert_array_equal(_np(stats.momentum), 0.0)
    np.testing.assert_array_equal(_np(stats.gate), 1.0)
    assert float(optimizer.gate_summary()["gate_mean"]) == 1.0
    with pytest.raises(ValueError, match="is not one that optimizer"):
        optimizer.statistics(keras.Variable(np.ones((2,), "float32")))


@pytest.mark.parametrize("kind", ["snr", "soft", "hard", None])
def test_gate_function_matches_reference(kind):
    rng = np.random.default_rng(0)
    signal = (rng.random(50) ** 4).astype("float32")
    noise = rng.random(50).astype("float32")
    ref = ReferenceSNRAdam(gate=kind, alpha=0.7, softness=2.0, epsilon=1e-3)
    want = ref.gate_value(signal, noise)
    got = keras_snr.gate.gate(
        keras.ops.convert_to_tensor(signal), keras.ops.convert_to_tensor(noise),
        kind, alpha=0.7, softness=2.0, stabiliser=1e-6,
    )
    np.testing.assert_allclose(_np(got) * np.ones(50), want, rtol=1e-6)
    with pytest.raises(ValueError, match="`gate` must be one of"):
        keras_snr.gate.gate(signal, noise, "sigmoid")


def test_statistics_under_stateless_scope():
    """Under stateless_apply the optimizer's variables are stale; reading
    inside a StatelessScope mapping them to the new values gives the new
    statistics."""
    if BACKEND == "tensorflow":
        pytest.skip("stateless_apply is not supported on TensorFlow")
    rng = np.random.default_rng(0)
    variable = keras.Variable(rng.normal(size=(4,)).astype("float32"))
    optimizer = SNRAdam(learning_rate=0.1)
    optimizer.build([variable])
    opt_values = [v.value for v in optimizer.variables]
    train_values = [variable.value]
    for _ in range(3):
        g = [keras.ops.convert_to_tensor(rng.normal(size=(4,)).astype("float32"))]
        train_values, opt_values = optimizer.stateless_apply(opt_values, g, train_values)
    assert int(_np(optimizer.iterations)) == 0  # the variables were not touched
    with keras.StatelessScope(state_mapping=list(zip(optimizer.variables, opt_values))):
        mean = float(_np(optimizer.gate_summary()["gate_mean"]))
    assert 0 < mean < 1


def test_gate_logger_in_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, :1] + rng.normal(size=(64, 1))).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    model.compile(optimizer=SNRAdam(alpha=0.2), loss="mse")
    logger = keras_snr.GateLogger()
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[logger])
    means = history.history["gate_mean"]
    fractions = history.history["gate_open_fraction"]
    assert len(means) == len(fractions) == 3
    assert all(0 < v <= 1 and math.isfinite(v) for v in means)
    assert all(0 <= v <= 1 for v in fractions)
    # the last epoch's value is the optimizer's summary after training
    assert means[-1] == pytest.approx(float(model.optimizer.gate_summary()["gate_mean"]), rel=1e-5)


def test_gate_logger_through_wrappers_and_bad_input():
    with pytest.raises(ValueError, match="`prefix` must be a string"):
        keras_snr.GateLogger(prefix=3)
    x = np.ones((32, 4), "float32")
    y = np.ones((32, 1), "float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    with pytest.raises(TypeError, match="contains no SNRAdam"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[keras_snr.GateLogger()])
    model.compile(
        optimizer=keras.optimizers.LossScaleOptimizer(SNRAdam()), loss="mse"
    )
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[keras_snr.GateLogger("q_")])
    assert len(history.history["q_mean"]) == 2


def test_compile_with_the_plain_name():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="SNRAdam", loss="mse")
    assert isinstance(model.optimizer, SNRAdam)
    assert isinstance(keras.optimizers.get("SNRAdam"), SNRAdam)
