"""PopulationRiskEstimate on the current backend (KERAS_BACKEND).

The estimate is checked against an independent NumPy replica of its formula
(docs in keras_snr/callbacks.py) fed with `optimizer.statistics()`; its
epoch-1 anchor against a brute-force prequential loss; its reliability rule
and what EarlyStopping does with it; accumulation, wrappers, resume and bad
input. How well it tracks held-out loss is the benchmark's job
(benchmarks/population_risk_validation.py), not the tests'.
"""

import csv
import json
import math
import os
import warnings

import keras
import numpy as np
import pytest
from conftest import BACKEND, run_python

import keras_snr

N, BATCH = 96, 16


def _data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x[:, :1] + 0.5 * rng.normal(size=(n, 1))).astype("float32")
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
    kwargs.setdefault("batch_size", BATCH)
    return model.fit(x, y, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)


class StatisticsRecorder(keras.callbacks.Callback):
    """Listed after the estimate: the optimizer's statistics, iterations and
    learning rate at each epoch end, as NumPy."""

    def __init__(self, optimizer):
        super().__init__()
        self.optimizer, self.epochs = optimizer, []

    def on_epoch_end(self, epoch, logs=None):
        stats = self.optimizer.statistics()
        rows = [
            tuple(np.asarray(keras.ops.convert_to_numpy(x), "float64") for x in row)
            for row in zip(*stats)
            if row[0] is not None
        ]
        self.epochs.append(dict(
            rows=rows,
            iterations=int(keras.ops.convert_to_numpy(self.optimizer.iterations)),
            lr=float(keras.ops.convert_to_numpy(self.optimizer.learning_rate)),
            loss=float(logs["loss"]),
            logs=dict(logs),
        ))


def replica(epochs, optimizer, alpha, threshold=0.05):
    """The documented estimate, in NumPy float64, from recorded statistics."""
    c = (1 - optimizer.beta_1) / (1 + optimizer.beta_1)
    wd = optimizer.weight_decay or 0.0
    out, g1 = [], None
    gap_dec = gap_cal = pending = 0.0
    prev_loss, first_loss, reliable, best, last_it = None, None, True, math.inf, 0
    for e in epochs:
        loss, lr = e["loss"], e["lr"]
        updates, last_it = e["iterations"] - last_it, e["iterations"]
        g2s = [np.maximum(m * m - c * s, 0) for m, v, s, q in e["rows"]]
        if g1 is None:
            g1, first_loss = g2s, loss
        a = b = cc = m2 = noise = signal = count = 0.0
        for (m, v, s, q), g2, ref in zip(e["rows"], g2s, g1):
            big_n = alpha * s
            qp = q / (np.sqrt(v) + optimizer.epsilon)
            a += np.sum(qp * big_n * np.minimum(1, np.sqrt(g2 / (big_n + 1e-30))))
            b += np.sum(qp * big_n * np.where(ref > 0, np.minimum(1, np.sqrt(g2 / (ref + 1e-30))), 1))
            cc += np.sum(qp * g2)
            m2 += np.sum(m * m)
            noise += np.sum(big_n)
            signal += np.sum(m * m > big_n)
            count += m.size
        decay = math.exp(-lr * wd * updates)
        drop = 0.0 if prev_loss is None else max(prev_loss - loss, 0.0)
        gap_dec = decay * (gap_dec + pending)
        gap_cal = decay * gap_cal + drop * (b / cc if cc > 0 else 1.0)
        pending, prev_loss = lr * updates * a, loss
        estimate = loss + min(gap_dec, gap_cal)
        reliable = reliable and loss >= threshold * first_loss
        value = estimate if reliable or not math.isfinite(best) else best - max(1e-6 * abs(best), 1e-12)
        best = min(best, value)
        out.append(dict(pop_risk=value, pop_risk_estimate=estimate, pop_risk_reliable=float(reliable),
                        pop_risk_gap_decayed=gap_dec, pop_risk_gap_calibrated=gap_cal,
                        signal_fraction=signal / count, gradient_snr=m2 / noise))
    return out


@pytest.mark.parametrize(
    "kwargs",
    [dict(gate="snr"), dict(gate=None), dict(gate="hard", reduction="per_tensor"),
     dict(gate="snr", weight_decay=0.5)],
    ids=["snr", "adam", "hard-per_tensor", "snr-weight_decay"],
)
def test_matches_numpy_replica(kwargs):
    optimizer = keras_snr.SNRAdam(learning_rate=0.02, alpha=BATCH / (N - BATCH), **kwargs)
    model = _model(optimizer)
    estimate = keras_snr.PopulationRiskEstimate(dataset_size=N, batch_size=BATCH, diagnostics=True)
    recorder = StatisticsRecorder(optimizer)
    history = _fit(model, [estimate, recorder], epochs=6).history
    want = replica(recorder.epochs, optimizer, keras_snr.finite_dataset_alpha(BATCH, N))
    for key in want[0]:
        got = np.array(history[key])
        expected = np.array([w[key] for w in want])
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7, err_msg=key)
    assert history["pop_risk"][0] == history["loss"][0]  # the epoch-1 anchor
    assert max(history["pop_risk_gap_decayed"]) > 0 and max(history["pop_risk_gap_calibrated"]) > 0


def test_epoch_one_anchor_is_the_prequential_loss():
    """Brute force on a tiny model: each batch's loss computed before the
    update on it, in a custom loop over the same batches, averaged (weighted
    by batch size: the last batch is short) equals pop_risk after epoch 1."""
    x, y = _data(n=90)  # 6 batches of 16 and one of 10
    model = _model(keras_snr.SNRAdam(learning_rate=0.05))
    twin = _model(keras_snr.SNRAdam(learning_rate=0.05))
    history = model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
        callbacks=[keras_snr.PopulationRiskEstimate(dataset_size=90, batch_size=BATCH)],
    ).history
    loss_fn = keras.losses.MeanSquaredError()
    optimizer = twin.optimizer
    optimizer.build(twin.trainable_variables)
    total = 0.0
    for start in range(0, 90, BATCH):
        xb, yb = x[start:start + BATCH], y[start:start + BATCH]
        if BACKEND == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = loss_fn(yb, twin(xb, training=True))
            grads = tape.gradient(loss, twin.trainable_variables)
        elif BACKEND == "jax":
            import jax

            values = [v.value for v in twin.trainable_variables]
            loss, grads = jax.value_and_grad(
                lambda w: _jax_loss(twin, loss_fn, w, xb, yb)
            )(values)
        else:
            twin.zero_grad()
            loss = loss_fn(yb, twin(xb, training=True))
            loss.backward()
            grads = [v.value.grad for v in twin.trainable_variables]
        total += float(keras.ops.convert_to_numpy(loss)) * len(xb)
        optimizer.apply(grads, twin.trainable_variables)
    np.testing.assert_allclose(history["pop_risk"][0], total / 90, rtol=1e-5)
    np.testing.assert_allclose(history["loss"][0], total / 90, rtol=1e-5)


def _jax_loss(model, loss_fn, weights, x, y):
    y_pred, _ = model.stateless_call(weights, [v.value for v in model.non_trainable_variables], x)
    return loss_fn(y, y_pred)


def test_reliability_rule_and_early_stopping_on_it():
    """A noise-free target the model fits: once the loss falls below 5 % of
    the epoch-1 loss the estimate is unreliable for good and pop_risk falls
    strictly; EarlyStopping (patience 1) watching from then on neither stops
    nor restores an older epoch."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [0.0]])).astype("float32")

    def train(callbacks):
        model = _model(keras_snr.SNRAdam(learning_rate=0.05, gate=None))
        estimate = keras_snr.PopulationRiskEstimate(dataset_size=N, batch_size=BATCH)
        history = model.fit(x, y, batch_size=BATCH, epochs=20, shuffle=False, verbose=0,
                            callbacks=[estimate] + callbacks).history
        return model, history

    _, history = train([])
    reliable, loss = history["pop_risk_reliable"], history["loss"]
    flip = reliable.index(0.0)
    assert all(r == 1.0 for r in reliable[:flip]) and all(r == 0.0 for r in reliable[flip:])
    assert loss[flip] < 0.05 * loss[0] <= loss[flip - 1]
    risk = np.array(history["pop_risk"], "float32")  # EarlyStopping compares in float32
    assert np.all(np.diff(risk[flip - 1:]) < 0)
    assert np.all(np.array(history["pop_risk_estimate"][flip:]) != risk[flip:])

    last = {}

    class LastWeights(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            last["w"] = [np.array(w) for w in self.model.get_weights()]

    stopper = keras.callbacks.EarlyStopping(
        monitor="pop_risk", mode="min", patience=1, restore_best_weights=True,
        start_from_epoch=flip,
    )
    model, history = train([stopper, LastWeights()])
    assert len(history["loss"]) == 20 and stopper.stopped_epoch == 0
    for got, want in zip(model.get_weights(), last["w"]):
        np.testing.assert_array_equal(got, want)  # the latest epoch was restored


def test_logs_and_keras_consumers(tmp_path):
    path = str(tmp_path / "log.csv")
    checkpoint = str(tmp_path / "best.keras")
    model = _model()
    estimate = keras_snr.PopulationRiskEstimate(dataset_size=N, batch_size=BATCH)
    stopper = keras.callbacks.EarlyStopping(monitor="pop_risk", mode="min", patience=20)
    saver = keras.callbacks.ModelCheckpoint(checkpoint, monitor="pop_risk", mode="min",
                                            save_best_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "metric not available"
        history = _fit(model, [estimate, stopper, saver, keras.callbacks.CSVLogger(path)],
                       epochs=4).history
    keys = ("pop_risk", "pop_risk_estimate", "pop_risk_reliable", "signal_fraction", "gradient_snr")
    for key in keys:
        assert len(history[key]) == 4 and all(math.isfinite(v) for v in history[key]), key
    assert "pop_risk_gap_decayed" not in history  # diagnostics only
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["pop_risk"]) for r in rows] == pytest.approx(history["pop_risk"])
    assert stopper.best == min(history["pop_risk"])
    assert os.path.exists(checkpoint)


def test_wrong_order_is_reported_by_keras():
    model = _model()
    stopper = keras.callbacks.EarlyStopping(monitor="pop_risk", mode="min")
    with pytest.warns(UserWarning, match="pop_risk` which is not available"):
        _fit(model, [stopper, keras_snr.PopulationRiskEstimate(dataset_size=N)], epochs=1)


def test_auto_mode_on_pop_risk_is_a_clear_keras_error():
    model = _model()
    stopper = keras.callbacks.EarlyStopping(monitor="pop_risk")
    with pytest.raises(ValueError, match="mode='min'"):
        _fit(model, [keras_snr.PopulationRiskEstimate(dataset_size=N), stopper], epochs=1)


def test_validation_data_is_never_read():
    histories = []
    for validation in (None, _data(1)):
        model = _model(keras_snr.SNRAdam(gate=None))
        histories.append(_fit(
            model, [keras_snr.PopulationRiskEstimate(dataset_size=N, batch_size=BATCH)],
            epochs=3, shuffle=False, validation_data=validation,
        ).history)
    for key in ("pop_risk", "pop_risk_estimate", "signal_fraction"):
        np.testing.assert_allclose(histories[0][key], histories[1][key], rtol=1e-6)
    assert "val_loss" in histories[1]


def test_gradient_accumulation_uses_the_effective_batch():
    optimizer = keras_snr.SNRAdam(learning_rate=0.02, gradient_accumulation_steps=2)
    model = _model(optimizer)
    estimate = keras_snr.PopulationRiskEstimate(dataset_size=N, batch_size=BATCH, diagnostics=True)
    recorder = StatisticsRecorder(optimizer)
    history = _fit(model, [estimate, recorder], epochs=4).history
    alpha = keras_snr.finite_dataset_alpha(BATCH, N, gradient_accumulation_steps=2)
    assert estimate._alpha == pytest.approx(alpha)
    assert [e["iterations"] for e in recorder.epochs] == [3, 6, 9, 12]  # updates, not batches
    want = replica(recorder.epochs, optimizer, alpha)
    np.testing.assert_allclose(history["pop_risk_gap_decayed"],
                               [w["pop_risk_gap_decayed"] for w in want], rtol=2e-5, atol=1e-8)


def test_repeated_dataset_with_steps_per_epoch():
    x, y = _data()
    data = _tf_free_repeat(x, y)
    model = _model()
    with pytest.warns(UserWarning) as caught:
        history = model.fit(
            data, steps_per_epoch=10, epochs=2, verbose=0, shuffle=False,
            callbacks=[keras_snr.PopulationRiskEstimate(dataset_size=N, batch_size=BATCH)],
        ).history
    messages = " ".join(str(w.message) for w in caught)
    assert "fit() runs 10" in messages  # 10 steps where 96 / 16 gives 6
    assert "more than one pass" in messages  # so epoch 1 is not prequential
    assert all(math.isfinite(v) for v in history["pop_risk"])


def _tf_free_repeat(x, y):
    """An endless generator of batches of BATCH (works on every backend)."""
    def gen():
        while True:
            for start in range(0, len(x), BATCH):
                yield x[start:start + BATCH], y[start:start + BATCH]
    return gen()


def test_under_loss_scale_optimizer_and_multi_optimizer():
    for optimizer in (
        keras.optimizers.LossScaleOptimizer(keras_snr.SNRAdam(gate=None)),
        keras.optimizers.MultiOptimizer(
            keras.optimizers.OptimizerMap(default_optimizer=keras_snr.SNRAdam(gate=None))
        ),
    ):
        model = _model(optimizer)
        history = _fit(model, [keras_snr.PopulationRiskEstimate(dataset_size=N)], epochs=2)
        assert all(math.isfinite(v) for v in history.history["pop_risk"])


def test_second_fit_continues_the_same_estimate():
    model = _model()
    estimate = keras_snr.PopulationRiskEstimate(dataset_size=N, batch_size=BATCH)
    first = _fit(model, [estimate], epochs=3).history["pop_risk"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "restarts" warning
        second = _fit(model, [estimate], epochs=2).history
    assert second["pop_risk_reliable"] == [1.0, 1.0]
    assert estimate._state["first_loss"] == first[0]


def test_new_callback_on_a_trained_model_warns_and_is_unreliable():
    model = _model()
    _fit(model, [], epochs=2)
    with pytest.warns(UserWarning, match="restarts here"):
        history = _fit(model, [keras_snr.PopulationRiskEstimate(dataset_size=N)], epochs=2)
    assert history.history["pop_risk_reliable"] == [0.0, 0.0]


RESUME = """
import json, sys
import numpy as np
import keras
import keras_snr

def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    return x, (x[:, :1] + 0.5 * rng.normal(size=(96, 1))).astype("float32")

class Interrupt(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at = at
    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at:
            raise RuntimeError("interrupted")

def run(backup, state_dir, interrupt_at, out):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(keras_snr.SNRAdam(learning_rate=0.02), loss="mse")
    callbacks = [keras_snr.PopulationRiskEstimate(96, 16, backup_dir=state_dir)]
    if backup:
        callbacks.append(keras.callbacks.BackupAndRestore(backup))
    if interrupt_at:
        callbacks.append(Interrupt(interrupt_at))
    try:
        history = model.fit(*data(), batch_size=16, epochs=6, shuffle=False, verbose=0,
                            callbacks=callbacks).history
    except RuntimeError:
        return
    with open(out, "w") as f:
        json.dump(history, f)

run(*json.loads(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def uninterrupted_history(tmp_path_factory):
    namespace = {}
    exec(RESUME.replace("run(*json.loads(sys.argv[1]))", ""), namespace)
    out = tmp_path_factory.mktemp("uninterrupted") / "history.json"
    namespace["run"](None, None, 0, str(out))
    return json.loads(out.read_text()), namespace["run"]


@pytest.mark.parametrize("with_state", [True, False], ids=["backup_dir", "no_backup_dir"])
def test_resume_with_backup_and_restore_in_a_fresh_process(
    tmp_path, with_state, uninterrupted_history
):
    """Interrupted after epoch 3 (here), resumed in a new process: with
    `backup_dir` the estimate continues exactly; without, it says it
    restarted and is marked unreliable."""
    whole, run = uninterrupted_history
    state = str(tmp_path / "state") if with_state else None
    backup = str(tmp_path / "backup")
    run(backup, state, 3, None)  # dies after epoch 3, backups saved
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    args = json.dumps([backup, state, 0, str(tmp_path / "resumed.json")])
    result = run_python(
        f"import sys, runpy; sys.argv = ['resume.py', {args!r}];"
        f" runpy.run_path({str(script)!r}, run_name='__main__')",
        cwd=str(tmp_path),
    )
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert len(resumed["loss"]) == 3  # epochs 4-6
    np.testing.assert_allclose(resumed["loss"], whole["loss"][3:], rtol=1e-5)
    if with_state:
        np.testing.assert_allclose(resumed["pop_risk"], whole["pop_risk"][3:], rtol=1e-5)
        assert resumed["pop_risk_reliable"] == whole["pop_risk_reliable"][3:]
    else:
        assert "restarts here" in result.stderr
        assert resumed["pop_risk_reliable"] == [0.0, 0.0, 0.0]


def test_non_snr_optimizer_raises():
    model = _model(keras.optimizers.Adam())
    with pytest.raises(TypeError, match=r"contains no SNRAdam.*SNRAdam\(gate=None"):
        _fit(model, [keras_snr.PopulationRiskEstimate(dataset_size=N)], epochs=1)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(), "needs the training set size"),
        (dict(dataset_size=0), "`dataset_size` must be a positive integer"),
        (dict(batch_size=-1), "`batch_size` must be a positive integer"),
        (dict(dataset_size=10, batch_size=10), "must be smaller"),
        (dict(dataset_size=10, reliability_threshold=0.0), r"`reliability_threshold` must be in \(0, 1\)"),
        (dict(dataset_size=10, reliability_threshold=1.5), "reliability_threshold=1.5"),
        (dict(dataset_size=10, backup_dir=3), "`backup_dir` must be a path"),
        (dict(dataset_size=10, monitor_loss=None), "`monitor_loss` must be a string"),
        (dict(dataset_size=10, estimator="capped"), "unexpected keyword argument 'estimator'"),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises((ValueError, TypeError), match=error):
        keras_snr.PopulationRiskEstimate(**kwargs)


def test_bad_setups_at_fit_time():
    model = _model()
    with pytest.raises(ValueError, match="smaller"):
        model.fit(*_data(), batch_size=N, epochs=1, verbose=0,
                  callbacks=[keras_snr.PopulationRiskEstimate(dataset_size=N)])
    with pytest.warns(UserWarning, match="steps per epoch"):
        _fit(_model(), [keras_snr.PopulationRiskEstimate(dataset_size=10 * N, batch_size=BATCH)],
             epochs=1)
    with pytest.raises(KeyError, match="monitor_loss"):
        _fit(_model(), [keras_snr.PopulationRiskEstimate(dataset_size=N, monitor_loss="nll")],
             epochs=1)
    callback = keras_snr.PopulationRiskEstimate(dataset_size=N)
    callback.set_model(_model(compile=False))
    with pytest.raises(ValueError, match="compile"):
        callback.on_train_begin()


def test_nan_loss_reports_nan():
    model = _model(keras_snr.SNRAdam(gate=None))
    x, y = _data()
    y = y.copy()
    y[3] = np.nan
    with pytest.warns(UserWarning, match="non-finite"):
        history = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0,
                            callbacks=[keras_snr.PopulationRiskEstimate(dataset_size=N)])
    assert all(math.isnan(v) for v in history.history["pop_risk"])


def test_evaluate_warns_instead_of_doing_nothing_silently():
    model = _model()
    callback = keras_snr.PopulationRiskEstimate(dataset_size=N)
    _fit(model, [callback], epochs=1, validation_data=_data(1))  # no warning in fit
    with pytest.warns(UserWarning, match=r"does nothing in evaluate\(\)"):
        model.evaluate(*_data(1), verbose=0, callbacks=[callback])


def test_epoch_end_reduction_is_compiled_once():
    """One compiled function, traced once, however many epochs (JAX, TF)."""
    if BACKEND == "torch":
        pytest.skip("torch runs the reduction eagerly (documented)")
    model = _model()
    estimate = keras_snr.PopulationRiskEstimate(dataset_size=N, batch_size=BATCH)
    _fit(model, [estimate], epochs=5)
    if BACKEND == "tensorflow":
        assert estimate._reduce.experimental_get_tracing_count() == 1
    else:
        assert estimate._reduce.compiled._cache_size() == 1
