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
    out, gap, first_loss, reliable, best, last_it = [], 0.0, None, True, math.inf, 0
    for e in epochs:
        loss, lr = e["loss"], e["lr"]
        updates, last_it = e["iterations"] - last_it, e["iterations"]
        first_loss = loss if first_loss is None else first_loss
        a = m2 = noise = signal = count = 0.0
        for m, v, s, q in e["rows"]:
            big_n = alpha * s
            g2 = np.maximum(m * m - c * s, 0)
            qp = q / (np.sqrt(v) + optimizer.epsilon)
            a += np.sum(qp * big_n * np.minimum(1, np.sqrt(g2 / (big_n + 1e-30))))
            m2 += np.sum(m * m)
            noise += np.sum(big_n)
            signal += np.sum(m * m > big_n)
            count += m.size
        gap = math.exp(-lr * wd * updates) * gap + lr * updates * a
        estimate = loss + gap
        reliable = reliable and loss >= threshold * first_loss
        value = estimate if reliable or not math.isfinite(best) else best - max(1e-6 * abs(best), 1e-12)
        best = min(best, value)
        out.append(dict(pop_risk=value, pop_risk_estimate=estimate, pop_risk_reliable=float(reliable),
                        pop_risk_gap=gap, signal_fraction=signal / count, gradient_snr=m2 / noise))
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
    assert max(history["pop_risk_gap"]) > 0
    assert history["pop_risk_ready"] == [1.0] * 6  # regression: no prediction changes


def test_brute_force_on_a_tiny_linear_model():
    """The whole chain against an independent computation: a linear model
    trained by fit() on fixed batches; the same batches' gradients computed
    by hand in NumPy drive the NumPy reference optimizer
    (tests/reference.py), from whose state the documented gap is summed,
    and the epoch loss is the batch-size weighted mean of each batch's loss
    before its update."""
    from reference import ReferenceSNRAdam

    n, b, epochs = 40, 8, 4
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = (x @ np.array([[0.5], [-1.0], [0.2]]) + 0.7 * rng.normal(size=(n, 1))).astype("float32")
    kwargs = dict(learning_rate=0.05, alpha=0.3, weight_decay=0.1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras_snr.SNRAdam(**kwargs), loss="mse")
    weights = [np.asarray(w, "float64") for w in model.get_weights()]
    history = model.fit(
        x, y, batch_size=b, epochs=epochs, shuffle=False, verbose=0,
        callbacks=[keras_snr.PopulationRiskEstimate(dataset_size=n, batch_size=b,
                                                    diagnostics=True)],
    ).history
    ref = ReferenceSNRAdam(**kwargs)
    alpha = b / (n - b)
    c = (1 - 0.9) / (1 + 0.9)
    gap = 0.0
    for epoch in range(epochs):
        total = 0.0
        for start in range(0, n, b):
            xb, yb = x[start:start + b].astype("float64"), y[start:start + b].astype("float64")
            err = xb @ weights[0] + weights[1] - yb
            total += float(np.mean(err**2)) * len(xb)
            grads = [2 * xb.T @ err / len(xb), 2 * err.mean(0)]
            weights = ref.step(weights, grads)
        t = ref.t
        rate = 0.0
        for m, v, s, q in zip(ref.m, ref.v, ref.s, ref.last_q):
            m_hat, v_hat, s_hat = m / (1 - 0.9**t), v / (1 - 0.999**t), s / (1 - 0.99**t)
            g2 = np.maximum(m_hat**2 - c * s_hat, 0)
            noise = alpha * s_hat
            rate += np.sum(q / (np.sqrt(v_hat) + 1e-8) * noise
                           * np.minimum(1, np.sqrt(g2 / (noise + 1e-30))))
        updates = n // b
        gap = math.exp(-0.05 * 0.1 * updates) * gap + 0.05 * updates * rate
        np.testing.assert_allclose(history["loss"][epoch], total / n, rtol=1e-4)
        np.testing.assert_allclose(history["pop_risk_gap"][epoch], gap, rtol=2e-4)
        np.testing.assert_allclose(history["pop_risk_estimate"][epoch], total / n + gap, rtol=1e-4)
    for got, want in zip(model.get_weights(), weights):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _classifier_data(n=120, seed=0, flip=0.3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = ((x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0)).astype("int32")
    noisy = rng.random(n) < flip
    return x, np.where(noisy, rng.integers(0, 4, n), y).astype("int32")


def _classifier(lr=0.01):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(keras_snr.SNRAdam(learning_rate=lr, gate=None),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class PredictionRecorder(keras.callbacks.Callback):
    """Listed after the estimate: the predicted classes on `x` per epoch."""

    def __init__(self, x):
        super().__init__()
        self.x, self.classes = x, []

    def on_epoch_end(self, epoch, logs=None):
        self.classes.append(np.asarray(self.model.predict(self.x, verbose=0)).argmax(-1))


def label_wave_ready(classes, window):
    """Definition: changes[e] = fraction of examples whose predicted class
    differs from epoch e - 1's; smoothed by a trailing mean of `window`
    changes; ready from the first epoch whose smoothed value exceeds the
    previous epoch's (i.e. the epoch after the first local minimum)."""
    changes = [np.nan] + [float(np.mean(a != b)) for a, b in zip(classes[1:], classes[:-1])]
    smooth = [np.mean(changes[e - window + 1:e + 1]) if e >= window else np.nan
              for e in range(len(changes))]
    ready, on = [], False
    for e in range(len(changes)):
        on = on or (e > window and smooth[e] > smooth[e - 1])
        ready.append(float(on))
    return changes, ready


@pytest.mark.parametrize("window", [1, 3])
def test_prediction_changes_and_label_wave_against_the_definition(window):
    x, y = _classifier_data()
    model = _classifier()
    estimate = keras_snr.PopulationRiskEstimate(dataset_size=len(x), batch_size=BATCH, x_train=x,
                                                label_wave_window=window, diagnostics=True)
    recorder = PredictionRecorder(x)
    history = model.fit(x, y, batch_size=BATCH, epochs=25, verbose=0,
                        callbacks=[estimate, recorder]).history
    changes, ready = label_wave_ready(recorder.classes, window)
    np.testing.assert_allclose(history["prediction_changes"], changes, rtol=1e-6)
    assert history["pop_risk_ready"] == ready
    assert 0.0 in ready and 1.0 in ready  # the rule fired inside the run


def test_sample_of_x_train_and_sequence_outputs():
    """`sample_size` picks a seeded subset; per-position classes (sequence
    outputs) are compared entry by entry."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=(200, 6)).astype("int32")
    y = np.roll(x, 1, axis=1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(5, 8),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(5)])
    model.compile(keras_snr.SNRAdam(learning_rate=0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    estimate = keras_snr.PopulationRiskEstimate(dataset_size=200, batch_size=20, x_train=x,
                                                sample_size=50, seed=7)
    keep = np.sort(np.random.default_rng(7).permutation(200)[:50])
    np.testing.assert_array_equal(estimate.x_train, x[keep])
    recorder = PredictionRecorder(x[keep])
    history = model.fit(x, y, batch_size=20, epochs=4, verbose=0,
                        callbacks=[estimate, recorder]).history
    want = [float(np.mean(a != b)) for a, b in zip(recorder.classes[1:], recorder.classes[:-1])]
    np.testing.assert_allclose(history["prediction_changes"][1:], want, rtol=1e-6)
    assert recorder.classes[0].shape == (50, 6)


@pytest.mark.filterwarnings("ignore:PopulationRiskEstimate. at epoch")  # may run long enough
def test_validation_free_stopping_is_early_stopping_counted_from_ready():
    """Replay of Keras's EarlyStopping on the logged pop_risk, counting
    only epochs with pop_risk_ready = 1; the restored weights are those of
    the kept epoch."""
    x, y = _classifier_data(seed=2)
    snapshots = []

    class Weights(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append([np.array(w) for w in self.model.get_weights()])

    model = _classifier(lr=0.02)
    stopper = keras_snr.ValidationFreeStopping(patience=3)
    history = model.fit(
        x, y, batch_size=BATCH, epochs=60, verbose=0,
        callbacks=[keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x,
                                                    label_wave_window=1, wave_rise=0.0),
                   stopper, Weights()],
    ).history
    assert history["pop_risk_wave"] == history["pop_risk_ready"]  # any rise confirms
    values = [v if r == 1.0 else None for v, r in zip(history["pop_risk"], history["pop_risk_ready"])]
    counted = [i for i, v in enumerate(values) if v is not None]
    assert counted, "pop_risk_ready never turned 1"
    best = min(counted, key=lambda i: (values[i], i))
    assert stopper.best_epoch == best
    assert len(history["loss"]) == 60 or len(history["loss"]) - 1 - max(
        i for i in counted if values[i] == values[best]) >= 3
    for got, want in zip(model.get_weights(), snapshots[best]):
        np.testing.assert_array_equal(got, want)


def wave_definition(classes, window, rise, horizon):
    """Definition of `pop_risk_wave` per epoch: after the first local
    minimum of the smoothed changes (counts on the sample), a smoothed count
    at least `rise * sqrt((count at the minimum + 1) / window)` above it
    within `horizon` epochs."""
    counts = [np.nan] + [float(np.sum(a != b)) for a, b in zip(classes[1:], classes[:-1])]
    smooth = [np.mean(counts[e - window + 1:e + 1]) if e >= window else np.nan
              for e in range(len(counts))]
    wave, low, on = [], None, False
    for e in range(len(counts)):
        if low is None and e > window and smooth[e] > smooth[e - 1]:
            low = e - 1
        if low is not None and not on and e - low <= horizon:
            on = smooth[e] - smooth[low] >= rise * np.sqrt((smooth[low] + 1) / window)
        wave.append(float(on))
    return wave


@pytest.mark.parametrize("rise", [0.5, 3.0, 1e6])
def test_wave_against_the_definition(rise):
    x, y = _classifier_data(n=200, flip=0.4)
    model = _classifier(lr=0.02)
    estimate = keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x, label_wave_window=2,
                                                wave_rise=rise, wave_horizon=4)
    recorder = PredictionRecorder(x)
    history = model.fit(x, y, batch_size=BATCH, epochs=25, verbose=0,
                        callbacks=[estimate, recorder]).history
    want = wave_definition(recorder.classes, 2, rise, 4)
    assert history["pop_risk_wave"] == want
    assert 1.0 in history["pop_risk_ready"]
    if rise == 0.5:
        assert 1.0 in want  # it fired inside the run ...
    if rise == 1e6:
        assert 1.0 not in want  # ... and a rise it cannot reach never confirms


def test_validation_free_stopping_waits_for_the_wave():
    """EarlyStopping counted from `pop_risk_ready`, whose patience applies
    only once `pop_risk_wave` is 1: replayed on the logs."""
    x, y = _classifier_data(n=200, flip=0.4, seed=3)
    stoppers = {}
    for rise in (0.0, 1.0, 1e6):
        model = _classifier(lr=0.02)
        stopper = keras_snr.ValidationFreeStopping(patience=2)
        history = model.fit(x, y, batch_size=BATCH, epochs=40, verbose=0, callbacks=[
            keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x, label_wave_window=2,
                                             wave_rise=rise, wave_horizon=4),
            stopper]).history
        best, best_epoch, wait, stop = None, None, 0, None
        for e, (v, ready, wave) in enumerate(zip(history["pop_risk"], history["pop_risk_ready"],
                                                  history["pop_risk_wave"])):
            if not ready:
                continue
            wait += 1
            if best is None or v < best:
                best, best_epoch, wait = v, e, 0
            elif wave and wait >= 2:
                stop = e
                break
        assert stopper.best_epoch == best_epoch, rise
        assert len(history["loss"]) == (40 if stop is None else stop + 1), rise
        stoppers[rise] = (stop, history)
    assert stoppers[0.0][0] is not None  # any rise confirms: stopped early
    assert stoppers[1e6][0] is None  # no wave: trained to the end
    assert 1.0 in stoppers[1e6][1]["pop_risk_ready"]


def test_heldout_loss_and_accuracy_estimates_are_the_documented_formulas():
    x, y = _classifier_data(n=200, flip=0.3)
    model = _classifier()
    recorder = PredictionRecorder(x[:64])
    estimate = keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x[:64], y_train=y[:64])
    history = model.fit(x, y, batch_size=BATCH, epochs=6, verbose=0,
                        callbacks=[estimate, recorder]).history
    loss, est = np.array(history["loss"]), np.array(history["pop_risk_estimate"])
    first = loss[0]
    np.testing.assert_allclose(history["heldout_loss_low"], loss, rtol=1e-6)
    np.testing.assert_allclose(history["heldout_loss_high"], np.maximum(first, est), rtol=1e-6)
    np.testing.assert_allclose(history["heldout_loss_estimate"],
                               0.5 * (loss + np.minimum(first, est)), rtol=1e-6)
    acc = np.array([np.mean(c == y[:64]) for c in recorder.classes])
    low = np.minimum(acc[0], acc)
    np.testing.assert_allclose(history["heldout_accuracy_high"], acc, rtol=1e-6)
    np.testing.assert_allclose(history["heldout_accuracy_low"], low, rtol=1e-6)
    np.testing.assert_allclose(history["heldout_accuracy_estimate"], 0.5 * (low + acc), rtol=1e-6)
    # without labels there is no accuracy to estimate; a regressor gets the loss keys
    history = _fit(_model(), [keras_snr.PopulationRiskEstimate(N, BATCH)], epochs=2).history
    assert "heldout_accuracy_estimate" not in history
    assert history["pop_risk_wave"] == [1.0, 1.0]
    assert history["heldout_loss_low"] == history["loss"]


def test_y_train_of_another_shape_than_the_predictions():
    x, y = _classifier_data()
    callback = keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x,
                                                y_train=np.zeros((len(x), 2), "int32"))
    with pytest.raises(ValueError, match=r"labels of shape \(2,\) per example"):
        _classifier().fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])


def test_validation_free_stopping_never_ready_keeps_the_latest_epoch():
    x, y = _classifier_data()
    model = _classifier()
    stopper = keras_snr.ValidationFreeStopping(patience=1)
    history = model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[
        keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x), stopper]).history
    assert history["pop_risk_ready"] == [0.0, 0.0, 0.0]  # window 5 needs more epochs
    assert stopper.best_epoch == 2 and stopper.stopped_epoch == 0


def test_validation_free_stopping_needs_the_estimate():
    model = _model()
    with pytest.raises(ValueError, match="list a\\s+PopulationRiskEstimate before it"):
        _fit(model, [keras_snr.ValidationFreeStopping()], epochs=1)
    with pytest.raises(ValueError, match="`patience` must be a positive integer"):
        keras_snr.ValidationFreeStopping(patience=0)


def test_first_epoch_is_the_training_loss_plus_one_epoch_of_gap():
    model = _model(keras_snr.SNRAdam(learning_rate=0.05))
    history = _fit(model, [keras_snr.PopulationRiskEstimate(dataset_size=N, batch_size=BATCH,
                                                            diagnostics=True)],
                   epochs=1).history
    assert history["pop_risk"][0] == pytest.approx(history["loss"][0] + history["pop_risk_gap"][0])
    assert history["pop_risk_gap"][0] > 0


def test_reliability_rule_warns_once_and_early_stopping_keeps_the_latest():
    """A noise-free target the model fits: once the loss falls below 5 % of
    the epoch-1 loss the estimate is unreliable for good (one warning) and
    pop_risk falls strictly; ValidationFreeStopping (patience 1) neither
    stops nor restores an older epoch from then on."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [0.0]])).astype("float32")

    def train(callbacks):
        model = _model(keras_snr.SNRAdam(learning_rate=0.05, gate=None))
        estimate = keras_snr.PopulationRiskEstimate(dataset_size=N, batch_size=BATCH)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = model.fit(x, y, batch_size=BATCH, epochs=20, shuffle=False, verbose=0,
                                callbacks=[estimate] + callbacks).history
        return model, history, [w for w in caught if "no longer trusted" in str(w.message)]

    _, history, caught = train([])
    assert len(caught) == 1 and "validation_split" in str(caught[0].message)
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

    stopper = keras_snr.ValidationFreeStopping(patience=1)
    stopper.start_from_epoch = flip
    model, history, _ = train([stopper, LastWeights()])
    assert len(history["loss"]) == 20 and stopper.stopped_epoch == 0
    for got, want in zip(model.get_weights(), last["w"]):
        np.testing.assert_array_equal(got, want)  # the latest epoch was restored


def test_classifier_without_x_train_says_what_it_cannot_do():
    x, y = _classifier_data()
    with pytest.warns(UserWarning, match="no `x_train` was given"):
        history = _classifier().fit(
            x, y, batch_size=BATCH, epochs=2, verbose=0,
            callbacks=[keras_snr.PopulationRiskEstimate(len(x), BATCH)]).history
    assert history["pop_risk_ready"] == [1.0, 1.0] and "prediction_changes" not in history
    with pytest.warns(UserWarning, match="one output unit"):
        history = _fit(_model(), [keras_snr.PopulationRiskEstimate(N, BATCH, x_train=_data()[0])],
                       epochs=2).history
    assert history["pop_risk_ready"] == [1.0, 1.0] and "prediction_changes" not in history


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
    keys = ("pop_risk", "pop_risk_estimate", "pop_risk_reliable", "pop_risk_ready",
            "signal_fraction", "gradient_snr")
    for key in keys:
        assert len(history[key]) == 4 and all(math.isfinite(v) for v in history[key]), key
    assert "pop_risk_gap" not in history  # diagnostics only
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
    np.testing.assert_allclose(history["pop_risk_gap"],
                               [w["pop_risk_gap"] for w in want], rtol=2e-5, atol=1e-8)


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
    first = _fit(model, [estimate], epochs=3).history["loss"]
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
    y = (x[:, 0] > 0).astype("int32") + 2 * (x[:, 1] > 0)
    return x, np.where(rng.random(96) < 0.3, rng.integers(0, 4, 96), y).astype("int32")

class Interrupt(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at = at
    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at:
            raise RuntimeError("interrupted")

def run(backup, state_dir, interrupt_at, out):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(keras_snr.SNRAdam(learning_rate=0.02),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callbacks = [keras_snr.PopulationRiskEstimate(96, 16, x_train=data()[0], label_wave_window=1,
                                                  backup_dir=state_dir)]
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
        # the prediction changes continue from the saved classes
        np.testing.assert_allclose(resumed["prediction_changes"],
                                   whole["prediction_changes"][3:], rtol=1e-6)
        assert resumed["pop_risk_ready"] == whole["pop_risk_ready"][3:]
        assert resumed["pop_risk_wave"] == whole["pop_risk_wave"][3:]
        np.testing.assert_allclose(resumed["heldout_loss_high"],
                                   whole["heldout_loss_high"][3:], rtol=1e-5)
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
        (dict(dataset_size=10, sample_size=0), "`sample_size` must be a positive integer"),
        (dict(dataset_size=10, label_wave_window=2.5), "`label_wave_window` must be a positive"),
        (dict(dataset_size=10, prediction_batch_size=None), "`prediction_batch_size` must be"),
        (dict(dataset_size=10, x_train=(np.zeros((4, 2)), np.zeros((5, 2)))),
         r"all of the same length; received lengths \[4, 5\]"),
        (dict(dataset_size=10, x_train=3.0), "examples along the first axis"),
        (dict(dataset_size=10, y_train=np.zeros(4, "int32")), "`y_train` is used with `x_train`"),
        (dict(dataset_size=10, x_train=np.zeros((4, 2)), y_train=np.zeros(5, "int32")),
         r"4 of them along the first axis; received an array of shape \(5,\)"),
        (dict(dataset_size=10, x_train=np.zeros((4, 2)), y_train=np.zeros(4)),
         "integer class labels"),
        (dict(dataset_size=10, wave_rise=-1.0), "`wave_rise` must be a number >= 0"),
        (dict(dataset_size=10, wave_rise="3"), "wave_rise='3'"),
        (dict(dataset_size=10, wave_horizon=0), "`wave_horizon` must be a positive integer"),
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
    with pytest.warns(UserWarning) as record:
        history = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0,
                            callbacks=[keras_snr.PopulationRiskEstimate(dataset_size=N)])
    messages = [str(w.message) for w in record]
    assert any("non-finite" in m for m in messages), messages
    assert any("first epoch's training loss is nan" in m for m in messages), messages
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
