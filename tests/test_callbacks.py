"""PopulationRiskEstimate on the current backend (KERAS_BACKEND)."""

import csv
import math
import os
import warnings

import keras
import numpy as np
import pytest

import keras_snr
from keras_snr.callbacks import ESTIMATORS

N, BATCH = 96, 16


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, 4)).astype("float32")
    y = (x[:, :1] + 0.5 * rng.normal(size=(N, 1))).astype("float32")
    return x, y


def _model(optimizer=None, compile=True):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    if compile:
        model.compile(optimizer=optimizer or keras_snr.SNRAdam(), loss="mse")
    return model


def _fit(model, callbacks, epochs=3, **kwargs):
    x, y = _data()
    return model.fit(
        x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs
    )


@pytest.mark.parametrize("gate", ["snr", "hard", None])
def test_logs_every_epoch(gate):
    model = _model(keras_snr.SNRAdam(gate=gate, alpha=BATCH / (N - BATCH)))
    history = _fit(model, [keras_snr.PopulationRiskEstimate(dataset_size=N)])
    for key in ("pop_risk", "signal_fraction", "gradient_snr"):
        assert len(history.history[key]) == 3, key
        assert all(math.isfinite(v) for v in history.history[key]), key
    assert all(0 <= f <= 1 for f in history.history["signal_fraction"])
    # the estimate adds a non-negative gap to the training loss
    for risk, loss in zip(history.history["pop_risk"], history.history["loss"]):
        assert risk >= loss - 1e-6


def test_diagnostics_and_estimators():
    model = _model(keras_snr.SNRAdam(gate=None))
    history = _fit(
        model,
        [keras_snr.PopulationRiskEstimate(batch_size=BATCH, diagnostics=True)],
    )
    for name in ESTIMATORS:
        assert all(math.isfinite(v) for v in history.history[f"pop_risk_{name}"])
    assert history.history["pop_risk"] == history.history["pop_risk_capped"]
    assert history.history["pop_risk_prequential"] == [history.history["loss"][0]] * 3
    # the uncapped first-order gap is never below the capped one
    for a, b in zip(history.history["pop_risk_first_order"], history.history["pop_risk"]):
        assert a >= b - 1e-9


def test_estimator_choice():
    model = _model()
    history = _fit(
        model, [keras_snr.PopulationRiskEstimate(dataset_size=N, estimator="first_order")]
    )
    assert len(history.history["pop_risk"]) == 3


def test_csv_logger_column(tmp_path):
    path = str(tmp_path / "log.csv")
    model = _model()
    _fit(
        model,
        [keras_snr.PopulationRiskEstimate(dataset_size=N), keras.callbacks.CSVLogger(path)],
    )
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert all(math.isfinite(float(r["pop_risk"])) for r in rows)


def test_early_stopping_and_checkpoint(tmp_path):
    path = str(tmp_path / "best.keras")
    model = _model()
    estimate = keras_snr.PopulationRiskEstimate(dataset_size=N, batch_size=BATCH)
    stopper = keras.callbacks.EarlyStopping(monitor="pop_risk", patience=0, mode="min")
    checkpoint = keras.callbacks.ModelCheckpoint(
        path, monitor="pop_risk", save_best_only=True, mode="min"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "metric not available" warning
        history = _fit(model, [estimate, stopper, checkpoint], epochs=4)
    assert stopper.monitor_op is not None and stopper.best is not None
    assert stopper.best == min(history.history["pop_risk"])
    assert os.path.exists(path)
    assert checkpoint.best == min(history.history["pop_risk"])


def test_early_stopping_stops_on_rising_estimate():
    """Drive pop_risk up (large lr on pure noise) and check EarlyStopping fires."""
    model = _model(keras_snr.SNRAdam(learning_rate=0.05, gate=None))
    x, _ = _data()
    y = np.random.default_rng(1).normal(size=(N, 1)).astype("float32")
    estimate = keras_snr.PopulationRiskEstimate(dataset_size=N, estimator="first_order")
    stopper = keras.callbacks.EarlyStopping(monitor="pop_risk", patience=1, mode="min")
    history = model.fit(
        x, y, batch_size=BATCH, epochs=15, verbose=0, callbacks=[estimate, stopper]
    )
    risks = history.history["pop_risk"]
    assert len(risks) < 15
    assert stopper.stopped_epoch > 0


def test_wrong_order_is_reported_by_keras():
    # Keras calls callbacks in list order; a reader listed first warns.
    model = _model()
    stopper = keras.callbacks.EarlyStopping(monitor="pop_risk", mode="min")
    with pytest.warns(UserWarning, match="pop_risk` which is not available"):
        _fit(model, [stopper, keras_snr.PopulationRiskEstimate(dataset_size=N)], epochs=1)


def test_auto_mode_on_pop_risk_is_a_clear_keras_error():
    model = _model()
    stopper = keras.callbacks.EarlyStopping(monitor="pop_risk")
    with pytest.raises(ValueError, match="mode='min'"):
        _fit(model, [keras_snr.PopulationRiskEstimate(dataset_size=N), stopper], epochs=1)


def test_multi_optimizer_with_one_snr_adam():
    snr = keras_snr.SNRAdam(gate=None)
    optimizer = keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(default_optimizer=snr)
    )
    model = _model(optimizer)
    history = _fit(model, [keras_snr.PopulationRiskEstimate(dataset_size=N)], epochs=2)
    assert all(math.isfinite(v) for v in history.history["pop_risk"])


def test_evaluate_warns_instead_of_doing_nothing_silently():
    model = _model()
    callback = keras_snr.PopulationRiskEstimate(dataset_size=N)
    _fit(model, [callback], epochs=1, validation_data=_data(1))  # no warning in fit
    with pytest.warns(UserWarning, match=r"does nothing in evaluate\(\)"):
        model.evaluate(*_data(1), verbose=0, callbacks=[callback])


def test_non_snr_optimizer_raises():
    model = _model(keras.optimizers.Adam())
    with pytest.raises(TypeError, match=r"contains no SNRAdam.*SNRAdam\(gate=None"):
        _fit(model, [keras_snr.PopulationRiskEstimate(dataset_size=N)], epochs=1)


def test_missing_or_bad_sizes():
    with pytest.raises(ValueError, match="dataset_size"):
        keras_snr.PopulationRiskEstimate()
    with pytest.raises(ValueError, match="dataset_size"):
        keras_snr.PopulationRiskEstimate(dataset_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        keras_snr.PopulationRiskEstimate(batch_size=-1)
    with pytest.raises(ValueError, match="smaller"):
        keras_snr.PopulationRiskEstimate(dataset_size=10, batch_size=10)
    with pytest.raises(ValueError, match="estimator"):
        keras_snr.PopulationRiskEstimate(dataset_size=10, estimator="oracle")
    # batch size >= dataset size, inferred from fit()
    model = _model()
    with pytest.raises(ValueError, match="smaller"):
        model.fit(
            *_data(), batch_size=N, epochs=1, verbose=0,
            callbacks=[keras_snr.PopulationRiskEstimate(dataset_size=N)],
        )


def test_inconsistent_sizes_warn():
    model = _model()
    with pytest.warns(UserWarning, match="steps per epoch"):
        _fit(model, [keras_snr.PopulationRiskEstimate(dataset_size=10 * N, batch_size=BATCH)],
             epochs=1)


def test_use_before_compile_raises():
    model = _model(compile=False)
    callback = keras_snr.PopulationRiskEstimate(dataset_size=N)
    callback.set_model(model)
    with pytest.raises(ValueError, match="compile"):
        callback.on_train_begin()


def test_nan_loss_reports_nan():
    model = _model(keras_snr.SNRAdam(gate=None))
    x, y = _data()
    y = y.copy()
    y[3] = np.nan
    with pytest.warns(UserWarning, match="non-finite"):
        history = model.fit(
            x, y, batch_size=BATCH, epochs=2, verbose=0,
            callbacks=[keras_snr.PopulationRiskEstimate(dataset_size=N)],
        )
    assert all(math.isnan(v) for v in history.history["pop_risk"])


def test_under_loss_scale_optimizer():
    optimizer = keras.optimizers.LossScaleOptimizer(keras_snr.SNRAdam(gate=None))
    model = _model(optimizer)
    history = _fit(model, [keras_snr.PopulationRiskEstimate(dataset_size=N)], epochs=2)
    assert all(math.isfinite(v) for v in history.history["pop_risk"])
