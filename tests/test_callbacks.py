"""PopulationRiskEstimate and ValidationFreeStopping on the current backend
(KERAS_BACKEND).

What the callbacks log is checked against independent computations: the gap
against a NumPy replica fed with `optimizer.statistics()` and against a
brute-force tiny linear model; the number, the accuracy and Label Wave
against their definitions on quantities recorded here; the stopping against
a replay of the rule on the logged signals, with the weights of the epoch it
keeps. Then faults (NaN, resume at any point, a second fit()), wrappers, EMA,
misconfigurations and bad input. How well the number tracks held-out loss is
the benchmark's job (benchmarks/population_risk_benchmark.py).
"""

import csv
import json
import math
import warnings

import keras
import numpy as np
import pytest
from conftest import BACKEND, run_python
from test_population_risk import reference_stopping, wave_definition

import keras_snr
from keras_snr import population_risk as PR

N, BATCH = 96, 16
DEFAULT_KEYS = {"pop_risk", "pop_risk_low", "pop_risk_high", "pop_risk_reliable",
                "pop_accuracy", "pop_accuracy_low", "pop_accuracy_high", "memorization"}


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


def _fit(model, callbacks, epochs=3, data=None, **kwargs):
    x, y = data or _data()
    kwargs.setdefault("batch_size", BATCH)
    return model.fit(x, y, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)


def _classifier_data(n=120, seed=0, flip=0.3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = ((x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0)).astype("int32")
    noisy = rng.random(n) < flip
    return x, np.where(noisy, rng.integers(0, 4, n), y).astype("int32")


def _classifier(lr=0.01, width=64, **optimizer_kwargs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(width, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(keras_snr.SNRAdam(learning_rate=lr, gate=None, **optimizer_kwargs),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class Recorder(keras.callbacks.Callback):
    """Listed after the estimate: per epoch, the optimizer's statistics,
    iterations and learning rate, and with `x` the model's predictions on
    it and its weights, as NumPy."""

    def __init__(self, optimizer, x=None):
        super().__init__()
        self.optimizer, self.x, self.epochs = optimizer, x, []

    def on_epoch_end(self, epoch, logs=None):
        stats = self.optimizer.statistics()
        rows = [tuple(np.asarray(keras.ops.convert_to_numpy(x), "float64") for x in row)
                for row in zip(*stats) if row[0] is not None]
        record = dict(rows=rows, logs=dict(logs),
                      iterations=int(keras.ops.convert_to_numpy(self.optimizer.iterations)),
                      lr=float(keras.ops.convert_to_numpy(self.optimizer.learning_rate)),
                      weights=[np.array(w) for w in self.model.get_weights()])
        if self.x is not None:
            record["pred"] = np.asarray(self.model.predict(self.x, verbose=0), "float64")
        self.epochs.append(record)


def replica_gap(epochs, optimizer, alpha):
    """The documented gap (and signal fraction, gradient SNR) in NumPy
    float64, from recorded statistics."""
    c = (1 - optimizer.beta_1) / (1 + optimizer.beta_1)
    wd = optimizer.weight_decay or 0.0
    out, gap, last_it = [], 0.0, 0
    for e in epochs:
        updates, last_it = e["iterations"] - last_it, e["iterations"]
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
        gap = math.exp(-e["lr"] * wd * updates) * gap + e["lr"] * updates * a
        out.append(dict(pop_risk_gap=gap, pop_risk_stop=e["logs"]["loss"] + gap,
                        signal_fraction=signal / count, gradient_snr=m2 / noise))
    return out


# ------------------------------------------------------------ the gap


@pytest.mark.parametrize(
    "kwargs",
    [dict(gate="snr"), dict(gate=None), dict(gate="hard", reduction="per_tensor"),
     dict(gate="snr", weight_decay=0.5)],
    ids=["snr", "adam", "hard-per_tensor", "snr-weight_decay"],
)
def test_gap_matches_numpy_replica(kwargs):
    optimizer = keras_snr.SNRAdam(learning_rate=0.02, alpha=BATCH / (N - BATCH), **kwargs)
    model = _model(optimizer)
    estimate = keras_snr.PopulationRiskEstimate(N, BATCH, diagnostics=True)
    recorder = Recorder(optimizer)
    history = _fit(model, [estimate, recorder], epochs=5).history
    want = replica_gap(recorder.epochs, optimizer, keras_snr.finite_dataset_alpha(BATCH, N))
    for key in want[0]:
        np.testing.assert_allclose(history[key], [w[key] for w in want], rtol=2e-5, atol=1e-7,
                                   err_msg=key)
    assert max(history["pop_risk_gap"]) > 0


def test_brute_force_on_a_tiny_linear_model():
    """The whole chain against an independent computation: a linear model
    trained by fit() on fixed batches; the same batches' gradients computed
    by hand in NumPy drive the NumPy reference optimizer
    (tests/reference.py), from whose state the documented gap is summed."""
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
    history = model.fit(x, y, batch_size=b, epochs=epochs, shuffle=False, verbose=0,
                        callbacks=[keras_snr.PopulationRiskEstimate(n, b, diagnostics=True)]
                        ).history
    ref = ReferenceSNRAdam(**kwargs)
    alpha, c, gap = b / (n - b), (1 - 0.9) / (1 + 0.9), 0.0
    for epoch in range(epochs):
        total = 0.0
        for start in range(0, n, b):
            xb, yb = x[start:start + b].astype("float64"), y[start:start + b].astype("float64")
            err = xb @ weights[0] + weights[1] - yb
            total += float(np.mean(err**2)) * len(xb)
            weights = ref.step(weights, [2 * xb.T @ err / len(xb), 2 * err.mean(0)])
        t, rate = ref.t, 0.0
        for m, v, s, q in zip(ref.m, ref.v, ref.s, ref.last_q):
            m_hat, v_hat, s_hat = m / (1 - 0.9**t), v / (1 - 0.999**t), s / (1 - 0.99**t)
            g2 = np.maximum(m_hat**2 - c * s_hat, 0)
            noise = alpha * s_hat
            rate += np.sum(q / (np.sqrt(v_hat) + 1e-8) * noise
                           * np.minimum(1, np.sqrt(g2 / (noise + 1e-30))))
        gap = math.exp(-0.05 * 0.1 * (n // b)) * gap + 0.05 * (n // b) * rate
        np.testing.assert_allclose(history["loss"][epoch], total / n, rtol=1e-4)
        np.testing.assert_allclose(history["pop_risk_gap"][epoch], gap, rtol=2e-4)
        np.testing.assert_allclose(history["pop_risk_stop"][epoch], total / n + gap, rtol=1e-4)


def test_gradient_accumulation_uses_the_effective_batch():
    optimizer = keras_snr.SNRAdam(learning_rate=0.02, gradient_accumulation_steps=2)
    model = _model(optimizer)
    estimate = keras_snr.PopulationRiskEstimate(N, BATCH, diagnostics=True)
    recorder = Recorder(optimizer)
    history = _fit(model, [estimate, recorder], epochs=3).history
    alpha = keras_snr.finite_dataset_alpha(BATCH, N, gradient_accumulation_steps=2)
    assert estimate._alpha == pytest.approx(alpha)
    assert [e["iterations"] for e in recorder.epochs] == [3, 6, 9]  # updates, not batches
    want = replica_gap(recorder.epochs, optimizer, alpha)
    np.testing.assert_allclose(history["pop_risk_gap"], [w["pop_risk_gap"] for w in want],
                               rtol=2e-5, atol=1e-8)


# ------------------------------------------------------------ what it logs


def _sparse_ce(y, logits):
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, y[:, None], -1).mean())


def test_number_accuracy_and_label_wave_against_their_definitions():
    """A noisy-label classifier with `x_train` and `y_train`: every logged
    key is its documented formula of the quantities recorded here (the
    model's predictions on the sample at each epoch end)."""
    x, y = _classifier_data()
    model = _classifier(lr=0.02, width=128)
    estimate = keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x, y_train=y,
                                                label_wave_window=3, diagnostics=True)
    recorder = Recorder(model.optimizer, x=x)
    history = model.fit(x, y, batch_size=BATCH, epochs=25, verbose=0,
                        callbacks=[estimate, recorder]).history
    classes = [e["pred"].argmax(-1) for e in recorder.epochs]
    end_loss = [_sparse_ce(y, e["pred"]) for e in recorder.epochs]
    accuracy = [float(np.mean(c == y)) for c in classes]
    changes = [None] + [float(np.mean(a != b)) for a, b in zip(classes[1:], classes[:-1])]
    ready, wave = wave_definition(changes, len(x), 3, 2.0, 10)
    np.testing.assert_allclose(history["train_loss_end"], end_loss, rtol=1e-4)
    np.testing.assert_allclose(history["prediction_changes"][1:], changes[1:], rtol=1e-6)
    assert history["memorization_ready"] == [float(r) for r in ready]
    assert history["memorization"] == [float(w) for w in wave]
    assert 0.0 in ready and 1.0 in ready  # the rule fired inside the run
    first = history["loss"][0]
    for e in range(25):
        loss, gap = history["loss"][e], history["pop_risk_gap"][e]
        want = PR.loss_estimate(loss, end_loss[e], first, gap)
        got = [history[k][e] for k in ("pop_risk", "pop_risk_low", "pop_risk_high")]
        np.testing.assert_allclose(got, want, rtol=1e-4)
        assert history["pop_risk_reliable"][e] == float(PR.is_reliable(end_loss[e], first, gap))
        got = [history[k][e] for k in ("pop_accuracy", "pop_accuracy_low", "pop_accuracy_high")]
        np.testing.assert_allclose(got, PR.accuracy_estimate(accuracy[e], accuracy[0]), rtol=1e-6)
    assert 0.0 in history["pop_risk_reliable"] and 1.0 in history["pop_risk_reliable"]


def test_default_keys_and_diagnostics(tmp_path):
    """At most 8 keys by default, each a finite number in History and
    CSVLogger; `diagnostics=True` adds the documented rest; Keras's own
    EarlyStopping and ModelCheckpoint can monitor `pop_risk`."""
    x, y = _classifier_data()
    path = str(tmp_path / "log.csv")
    estimate = keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x, y_train=y)
    stopper = keras.callbacks.EarlyStopping(monitor="pop_risk", mode="min", patience=20)
    saver = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="pop_risk",
                                            mode="min", save_best_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a correct set-up warns about nothing
        history = _classifier().fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[
            estimate, stopper, saver, keras.callbacks.CSVLogger(path)]).history
    assert set(history) == DEFAULT_KEYS | {"loss"}
    assert all(math.isfinite(v) for k in DEFAULT_KEYS for v in history[k])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["pop_risk"]) for r in rows] == pytest.approx(history["pop_risk"])
    history = _classifier().fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[
        keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x, y_train=y,
                                         diagnostics=True)]).history
    assert set(history) - DEFAULT_KEYS == {
        "loss", "pop_risk_gap", "pop_risk_stop", "memorization_ready", "prediction_changes",
        "prediction_changes_smoothed", "train_loss_end", "signal_fraction", "gradient_snr"}
    # without x_train: the number only
    history = _fit(_model(), [keras_snr.PopulationRiskEstimate(N, BATCH)], epochs=2).history
    assert set(history) == {"loss", "pop_risk", "pop_risk_low", "pop_risk_high",
                            "pop_risk_reliable"}


def test_regression_with_x_train_counts_no_classes():
    """A multi-target regression: `y_train` gives the end-of-epoch loss;
    no argmax of regression outputs is taken for Label Wave."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype("float32")
    y = np.stack([x[:, 0], x[:, 1] - x[:, 2], x[:, 3]], -1).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(keras_snr.SNRAdam(learning_rate=0.02), loss="mse")
    recorder = Recorder(model.optimizer, x=x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        history = model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[
            keras_snr.PopulationRiskEstimate(N, BATCH, x_train=x, y_train=y, diagnostics=True),
            recorder]).history
    assert "memorization" not in history and "prediction_changes" not in history
    want = [float(np.mean((e["pred"] - y) ** 2)) for e in recorder.epochs]
    np.testing.assert_allclose(history["train_loss_end"], want, rtol=1e-4)


@pytest.mark.parametrize("form", ["function", "weighted", "by_output_name"])
def test_end_loss_is_the_compiled_loss_however_given(form):
    """The end-of-epoch loss on the sample is the loss as compiled: a plain
    function, a name with `loss_weights` (which scale Keras's logged loss
    too), or a dict keyed by the output's name."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype("float32")
    y = np.stack([x[:, 0], x[:, 1] - x[:, 2], x[:, 3]], -1).astype("float32")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(inputs))

    def squared_error(a, b):
        return keras.ops.mean((a - b) ** 2, axis=-1)

    model.compile(keras_snr.SNRAdam(learning_rate=0.02), **{
        "function": dict(loss=squared_error),
        "weighted": dict(loss="mse", loss_weights=2.0),
        "by_output_name": dict(loss={"out": "mse"})}[form])
    recorder = Recorder(model.optimizer, x=x)
    history = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[
        keras_snr.PopulationRiskEstimate(N, BATCH, x_train=x, y_train=y, task="regression",
                                         diagnostics=True), recorder]).history
    scale = 2.0 if form == "weighted" else 1.0
    want = [scale * float(np.mean((e["pred"] - y) ** 2)) for e in recorder.epochs]
    np.testing.assert_allclose(history["train_loss_end"], want, rtol=1e-4)


def test_sample_of_x_train_and_sequence_outputs():
    """`sample_size` picks a seeded subset; per-position classes (sequence
    outputs) are compared entry by entry; one-hot or integer targets."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=(200, 6)).astype("int32")
    y = np.roll(x, 1, axis=1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(5, 8),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(5)])
    model.compile(keras_snr.SNRAdam(learning_rate=0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    estimate = keras_snr.PopulationRiskEstimate(200, 20, x_train=x, y_train=y, sample_size=50,
                                                seed=7, diagnostics=True)
    keep = np.sort(np.random.default_rng(7).permutation(200)[:50])
    np.testing.assert_array_equal(estimate.x_train, x[keep])
    recorder = Recorder(model.optimizer, x=x[keep])
    history = model.fit(x, y, batch_size=20, epochs=3, verbose=0,
                        callbacks=[estimate, recorder]).history
    classes = [e["pred"].argmax(-1) for e in recorder.epochs]
    want = [float(np.mean(a != b)) for a, b in zip(classes[1:], classes[:-1])]
    np.testing.assert_allclose(history["prediction_changes"][1:], want, rtol=1e-6)
    np.testing.assert_allclose(history["pop_accuracy_high"],
                               [float(np.mean(c == y[keep])) for c in classes], rtol=1e-6)


# ------------------------------------------------------------ stopping


def _signals(history):
    """What ValidationFreeStopping read, rebuilt from the diagnostic logs."""
    first = history["loss"][0]
    ranked = np.logical_and.accumulate(np.array(history["loss"]) >= 0.05 * first)
    return [{"finite": math.isfinite(history["loss"][e]), "ready": history["memorization_ready"][e] > .5,
             "wave": history["memorization"][e] > .5, "ranked": bool(ranked[e]),
             "score": history["pop_risk_stop"][e], "end_loss": history["train_loss_end"][e]}
            for e in range(len(history["loss"]))]


@pytest.mark.parametrize("ratio", [0.15, 0.99])
def test_validation_free_stopping_is_the_rule_on_the_logged_signals(ratio):
    """Live stopping == the rule replayed on what the estimate logged; the
    model ends with the weights of the kept epoch; `best_epoch`,
    `stopped_epoch` and `restored` say what happened."""
    x, y = _classifier_data(n=160, flip=0.4)
    model = _classifier(lr=0.02, width=128)
    estimate = keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x, y_train=y,
                                                label_wave_window=2, wave_rise=0.0,
                                                diagnostics=True)
    stopping = keras_snr.ValidationFreeStopping(estimate, patience=3, memorization_ratio=ratio)
    recorder = Recorder(model.optimizer)
    history = model.fit(x, y, batch_size=BATCH, epochs=60, verbose=0,
                        callbacks=[estimate, stopping, recorder]).history
    signals = _signals(history)
    kept, last = reference_stopping(signals, patience=3, ratio=ratio)
    assert len(history["loss"]) == last + 1
    assert stopping.best_epoch == kept
    assert stopping.stopped_epoch == (last if last < 59 else 0)
    assert stopping.restored == (kept != last)
    for got, want in zip(model.get_weights(), recorder.epochs[kept]["weights"]):
        np.testing.assert_array_equal(got, want)
    if ratio == 0.99:  # memorisation is easy to show: it restores here
        assert stopping.restored and stopping.stopped_epoch > 0


def test_validation_free_stopping_keeps_the_latest_without_evidence():
    """Noise-free regression, and a classifier without labels: nothing to
    restore (a warning says so); the model keeps its latest weights."""
    x, y = _data()
    estimate = keras_snr.PopulationRiskEstimate(N, BATCH, x_train=x, y_train=y)
    stopping = keras_snr.ValidationFreeStopping(estimate, patience=1)
    model = _model(keras_snr.SNRAdam(learning_rate=0.05))
    recorder = Recorder(model.optimizer)
    with pytest.warns(UserWarning, match="restores earlier weights only for a classifier"):
        _fit(model, [estimate, stopping, recorder], epochs=6)
    assert stopping.best_epoch == 5 and not stopping.restored
    for got, want in zip(model.get_weights(), recorder.epochs[-1]["weights"]):
        np.testing.assert_array_equal(got, want)


def test_validation_free_stopping_needs_its_estimate_first():
    with pytest.raises(TypeError, match="ValidationFreeStopping\\(estimate\\)"):
        keras_snr.ValidationFreeStopping()
    with pytest.raises(TypeError, match="received EarlyStopping"):
        keras_snr.ValidationFreeStopping(keras.callbacks.EarlyStopping())
    estimate = keras_snr.PopulationRiskEstimate(N, BATCH)
    for bad, error in ((dict(patience=0), "`patience` must be a positive integer"),
                       (dict(memorization_ratio=1.0), r"`memorization_ratio` must be in \(0, 1\)")):
        with pytest.raises(ValueError, match=error):
            keras_snr.ValidationFreeStopping(estimate, **bad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="list the estimate before it"):
            _fit(_model(), [keras_snr.ValidationFreeStopping(estimate), estimate], epochs=1)


class NaNAfter(keras.callbacks.Callback):
    """Makes the model's weights NaN at the end of batch `batch` of epoch
    `epoch`, so that the following updates, loss and predictions are NaN."""

    def __init__(self, epoch, batch=0):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            self.model.layers[-1].kernel.assign(
                np.full(self.model.layers[-1].kernel.shape, np.nan, "float32"))


@pytest.mark.parametrize("terminate", [False, True], ids=["alone", "with_TerminateOnNaN"])
def test_nan_mid_training_never_leaves_nan_weights_restored(terminate):
    """A loss that turns NaN: reliability ends for good, NaN predictions are
    not a wave, training stops, and the best finite epoch is restored."""
    x, y = _classifier_data(n=160, flip=0.4)
    model = _classifier(lr=0.02, width=128)
    estimate = keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x, y_train=y,
                                                label_wave_window=1, diagnostics=True)
    stopping = keras_snr.ValidationFreeStopping(estimate, patience=100)
    callbacks = [NaNAfter(epoch=12), estimate, stopping]
    if terminate:
        callbacks.insert(0, keras.callbacks.TerminateOnNaN())
    with pytest.warns(UserWarning, match="non-finite"):
        history = model.fit(x, y, batch_size=BATCH, epochs=30, verbose=0,
                            callbacks=callbacks).history
    assert len(history["loss"]) == 13  # epoch 13 (index 12) is NaN: stopped there
    assert history["pop_risk_reliable"][12] == 0.0 and math.isnan(history["pop_risk"][12])
    assert history["memorization"][12] == history["memorization"][11]
    assert stopping.restored and stopping.best_epoch < 12
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    # the estimate went back with the weights (the optimizer's state, as with
    # Keras's EarlyStopping, is not restored)
    assert estimate._state["finite"] and len(estimate._state["wave"]["changes"]) == (
        stopping.best_epoch + 1)


def test_second_fit_after_a_restore_continues_from_the_kept_epoch():
    """The estimate rolls back with the weights: the next fit() continues
    from the kept epoch's gap and Label Wave state, not the last epoch's."""
    x, y = _classifier_data(n=160, flip=0.4)
    model = _classifier(lr=0.02, width=128)
    estimate = keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x, y_train=y,
                                                label_wave_window=2, wave_rise=0.0,
                                                diagnostics=True)
    stopping = keras_snr.ValidationFreeStopping(estimate, patience=3, memorization_ratio=0.99)
    first = model.fit(x, y, batch_size=BATCH, epochs=60, verbose=0,
                      callbacks=[estimate, stopping]).history
    assert stopping.restored
    kept = stopping.best_epoch
    assert estimate._state["gap"] == pytest.approx(first["pop_risk_gap"][kept])
    assert len(estimate._state["wave"]["changes"]) == kept + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "restarts" warning
        second = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
                           callbacks=[estimate]).history
    updates = math.ceil(len(x) / BATCH)
    assert second["pop_risk_gap"][0] < first["pop_risk_gap"][-1]
    assert estimate._state["iterations"] == (len(first["loss"]) + 1) * updates


def test_use_ema_restores_the_moving_average_of_the_kept_epoch():
    x, y = _classifier_data(n=160, flip=0.4)
    model = _classifier(lr=0.02, width=128, use_ema=True, ema_momentum=0.9)
    estimate = keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x, y_train=y,
                                                label_wave_window=2, wave_rise=0.0)
    stopping = keras_snr.ValidationFreeStopping(estimate, patience=3, memorization_ratio=0.99)

    class Averages(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_end(self, epoch, logs=None):
            opt = self.model.optimizer
            self.epochs.append([np.array(opt._model_variables_moving_average[
                opt._get_variable_index(v)]) for v in self.model.trainable_weights])

    averages = Averages()
    model.fit(x, y, batch_size=BATCH, epochs=60, verbose=0,
              callbacks=[estimate, stopping, averages])
    assert stopping.restored
    for got, want in zip(model.get_weights(), averages.epochs[stopping.best_epoch]):
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------ resume


RESUME = """
import json, sys
import numpy as np
import keras
import keras_snr

def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 6)).astype("float32")
    y = ((x[:, 0] > 0).astype("int32") + 2 * (x[:, 1] > 0)).astype("int32")
    return x, np.where(rng.random(160) < 0.4, rng.integers(0, 4, 160), y).astype("int32")

class Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None
    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise RuntimeError("interrupted")
    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch and self.batch is None:
            raise RuntimeError("interrupted")

def run(backup, state, interrupt, save_freq, out):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(keras_snr.SNRAdam(learning_rate=0.02, gate=None),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data()
    estimate = keras_snr.PopulationRiskEstimate(160, 16, x_train=x, y_train=y,
                                                label_wave_window=2, wave_rise=0.0,
                                                backup_dir=state, diagnostics=True)
    stopping = keras_snr.ValidationFreeStopping(estimate, patience=3, memorization_ratio=0.99)
    callbacks = [estimate, stopping]
    # an interrupt at an epoch end falls between the callbacks' save and BackupAndRestore's
    if interrupt:
        callbacks.append(Interrupt(*interrupt))
    if backup:
        callbacks.append(keras.callbacks.BackupAndRestore(backup, save_freq=save_freq))
    try:
        history = model.fit(x, y, batch_size=16, epochs=40, shuffle=False, verbose=0,
                            callbacks=callbacks).history
    except RuntimeError:
        return
    result = dict(history=history, best=stopping.best_epoch, restored=stopping.restored,
                  stopped=stopping.stopped_epoch,
                  weights=[w.tolist() for w in model.get_weights()])
    with open(out, "w") as f:
        json.dump(result, f)

run(*json.loads(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    namespace = {}
    exec(RESUME.replace("run(*json.loads(sys.argv[1]))", ""), namespace)
    out = tmp_path_factory.mktemp("uninterrupted") / "result.json"
    namespace["run"](None, None, None, "epoch", str(out))
    return json.loads(out.read_text()), namespace["run"]


def _resume_in_a_fresh_process(tmp_path, run, backup, state, save_freq):
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    out = tmp_path / "resumed.json"
    args = json.dumps([backup, state, None, save_freq, str(out)])
    result = run_python(f"import sys, runpy; sys.argv = ['resume.py', {args!r}];"
                        f" runpy.run_path({str(script)!r}, run_name='__main__')",
                        cwd=str(tmp_path))
    return json.loads(out.read_text()), result.stderr


@pytest.mark.parametrize("interrupt", [(5, None), (6, 3)], ids=["between_saves", "mid_epoch"])
def test_resume_at_any_point_ends_like_an_uninterrupted_run(tmp_path, interrupt, uninterrupted):
    """Interrupted between the callbacks' epoch-end save and
    BackupAndRestore's, or in the middle of an epoch, then resumed in a
    fresh process: the same logs, stopping decision and final weights."""
    whole, run = uninterrupted
    assert whole["restored"]  # the run restores: the stopper's state matters
    backup, state = str(tmp_path / "backup"), str(tmp_path / "state")
    run(backup, state, interrupt, "epoch", None)
    resumed, stderr = _resume_in_a_fresh_process(tmp_path, run, backup, state, "epoch")
    assert "restarts" not in stderr
    done = len(whole["history"]["loss"]) - len(resumed["history"]["loss"])
    assert done == interrupt[0]  # the epochs before the interrupted one are not run again
    for key, values in resumed["history"].items():
        np.testing.assert_allclose(values, whole["history"][key][done:], rtol=1e-5, atol=1e-7,
                                   err_msg=key)
    assert (resumed["best"], resumed["restored"], resumed["stopped"]) == (
        whole["best"], whole["restored"], whole["stopped"])
    for got, want in zip(resumed["weights"], whole["weights"]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_resume_from_a_mid_epoch_checkpoint_keeps_the_estimate(tmp_path, uninterrupted):
    """`BackupAndRestore(save_freq=4)`: Keras runs the interrupted epoch again
    from a mid-epoch checkpoint (so no run equals an uninterrupted one); the
    callbacks resume from the state of the epoch before, without a restart."""
    whole, run = uninterrupted
    backup, state = str(tmp_path / "backup"), str(tmp_path / "state")
    run(backup, state, (6, 5), 4, None)
    resumed, stderr = _resume_in_a_fresh_process(tmp_path, run, backup, state, 4)
    assert "restarts" not in stderr
    history = resumed["history"]
    assert len(history["loss"]) + 6 == len(whole["history"]["loss"]) or resumed["stopped"]
    assert history["pop_risk_reliable"][0] == whole["history"]["pop_risk_reliable"][6]
    assert math.isfinite(history["prediction_changes"][0])  # the classes were restored
    assert history["pop_risk_high"][0] >= whole["history"]["loss"][0]  # so was the first loss


def test_resume_without_state_restarts_unreliable(tmp_path, uninterrupted):
    _, run = uninterrupted
    backup = str(tmp_path / "backup")
    run(backup, None, (5, None), "epoch", None)
    resumed, stderr = _resume_in_a_fresh_process(tmp_path, run, backup, None, "epoch")
    assert "restarts" in stderr and "backup_dir" in stderr
    assert set(resumed["history"]["pop_risk_reliable"]) == {0.0}


# ------------------------------------------------------------ set-ups


def test_under_loss_scale_optimizer_and_multi_optimizer():
    for optimizer in (
        keras.optimizers.LossScaleOptimizer(keras_snr.SNRAdam(gate=None)),
        keras.optimizers.MultiOptimizer(
            keras.optimizers.OptimizerMap(default_optimizer=keras_snr.SNRAdam(gate=None))
        ),
    ):
        history = _fit(_model(optimizer), [keras_snr.PopulationRiskEstimate(N, BATCH)], epochs=2)
        assert all(math.isfinite(v) for v in history.history["pop_risk"])


def test_repeated_dataset_with_steps_per_epoch_warns_about_nothing():
    """Epochs of any number of steps are legitimate once `dataset_size` and
    `batch_size` are given."""
    x, y = _data()

    def batches():
        while True:
            for start in range(0, len(x), BATCH):
                yield x[start:start + BATCH], y[start:start + BATCH]

    for steps in (3, 10):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            history = _model().fit(batches(), steps_per_epoch=steps, epochs=2, verbose=0,
                                   shuffle=False, callbacks=[keras_snr.PopulationRiskEstimate(N, BATCH)]).history
        assert all(math.isfinite(v) for v in history["pop_risk"])


def test_second_fit_continues_the_same_estimate():
    model = _model()
    estimate = keras_snr.PopulationRiskEstimate(N, BATCH)
    first = _fit(model, [estimate], epochs=3).history["loss"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "restarts" warning
        second = _fit(model, [estimate], epochs=2).history
    assert second["pop_risk_reliable"] == [1.0, 1.0]
    assert estimate._state["first_loss"] == first[0]


def test_new_callback_on_a_trained_model_warns_and_is_unreliable():
    model = _model()
    _fit(model, [], epochs=2)
    with pytest.warns(UserWarning, match="restarts without its first epoch"):
        history = _fit(model, [keras_snr.PopulationRiskEstimate(N, BATCH)], epochs=2)
    assert history.history["pop_risk_reliable"] == [0.0, 0.0]


def test_validation_data_is_never_read():
    histories = []
    for validation in (None, _data(1)):
        histories.append(_fit(_model(keras_snr.SNRAdam(gate=None)),
                              [keras_snr.PopulationRiskEstimate(N, BATCH)], epochs=3,
                              shuffle=False, validation_data=validation).history)
    np.testing.assert_allclose(histories[0]["pop_risk"], histories[1]["pop_risk"], rtol=1e-6)
    assert "val_loss" in histories[1]


def test_non_snr_optimizer_raises():
    with pytest.raises(TypeError, match=r"contains no SNRAdam.*SNRAdam\(gate=None"):
        _fit(_model(keras.optimizers.Adam()), [keras_snr.PopulationRiskEstimate(N, BATCH)],
             epochs=1)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(), "missing 2 required positional arguments"),
        (dict(dataset_size=10), "missing 1 required positional argument: 'batch_size'"),
        (dict(dataset_size=0, batch_size=2), "`dataset_size` must be a positive integer"),
        (dict(dataset_size=10, batch_size=-1), "`batch_size` must be a positive integer"),
        (dict(dataset_size=10, batch_size=10), "must be smaller"),
        (dict(dataset_size=10, batch_size=2, backup_dir=3), "`backup_dir` must be a path"),
        (dict(dataset_size=10, batch_size=2, monitor_loss=None), "`monitor_loss` must be a str"),
        (dict(dataset_size=10, batch_size=2, task="ranking"), "`task` must be"),
        (dict(dataset_size=10, batch_size=2, sample_size=0), "`sample_size` must be a positive"),
        (dict(dataset_size=10, batch_size=2, label_wave_window=2.5), "`label_wave_window`"),
        (dict(dataset_size=10, batch_size=2, prediction_batch_size=None),
         "`prediction_batch_size` must be"),
        (dict(dataset_size=10, batch_size=2, x_train=(np.zeros((4, 2)), np.zeros((5, 2)))),
         r"all of the same length; received lengths \[4, 5\]"),
        (dict(dataset_size=10, batch_size=2, x_train=3.0), "examples along the first axis"),
        (dict(dataset_size=10, batch_size=2, y_train=np.zeros(4, "int32")),
         "pass `x_train=` too"),
        (dict(dataset_size=10, batch_size=2, x_train=np.zeros((4, 2)),
              y_train=np.zeros(5, "int32")), r"the 4 examples of `x_train`.*\(5,\)"),
        (dict(dataset_size=3, batch_size=2, x_train=np.zeros((4, 2))),
         r"`x_train` has 4 examples, more than `dataset_size` \(3\)"),
        (dict(dataset_size=10, batch_size=2, wave_rise=-1.0), "`wave_rise` must be a number"),
        (dict(dataset_size=10, batch_size=2, wave_rise="3"), "wave_rise='3'"),
        (dict(dataset_size=10, batch_size=2, wave_horizon=0), "`wave_horizon` must be a pos"),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises((ValueError, TypeError), match=error):
        keras_snr.PopulationRiskEstimate(**kwargs)


def test_bad_setups_at_fit_time():
    x, y = _classifier_data()
    with pytest.raises(KeyError, match="monitor_loss"):
        _fit(_model(), [keras_snr.PopulationRiskEstimate(N, BATCH, monitor_loss="nll")],
             epochs=1)
    callback = keras_snr.PopulationRiskEstimate(N, BATCH)
    callback.set_model(_model(compile=False))
    with pytest.raises(ValueError, match="compile"):
        callback.on_train_begin()
    def my_loss(y_true, y_pred):
        return keras.ops.mean(y_pred**2) + 0.0 * keras.ops.mean(keras.ops.cast(y_true, "float32"))

    model = _classifier()
    model.compile(keras_snr.SNRAdam(), loss=my_loss)
    with pytest.raises(ValueError, match="pass `task='classification'`"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
                  callbacks=[keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x)])
    # targets shaped unlike the predictions
    with pytest.raises(ValueError, match=r"holds targets of shape \(2,\)"):
        _classifier().fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[
            keras_snr.PopulationRiskEstimate(len(x), BATCH, x_train=x,
                                             y_train=np.zeros((len(x), 2), "int32"))])
    # a classifier without a class axis (and not a binary cross-entropy)
    with pytest.raises(ValueError, match="no class axis"):
        _fit(_model(), [keras_snr.PopulationRiskEstimate(N, BATCH, x_train=_data()[0],
                                                         task="classification")], epochs=1)


@pytest.mark.parametrize("from_logits", [True, False])
def test_binary_classifier_thresholds_its_one_output(from_logits):
    """One sigmoid output under a binary cross-entropy: a label is predicted
    1 above 0 (logits) or 0.5 (probabilities); accuracy and changes per
    output, against their definitions."""
    x, y = _data()
    y = (y > 0).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1, activation=None if from_logits else "sigmoid")])
    model.compile(keras_snr.SNRAdam(learning_rate=0.02),
                  loss=keras.losses.BinaryCrossentropy(from_logits=from_logits))
    recorder = Recorder(model.optimizer, x=x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        history = _fit(model, [keras_snr.PopulationRiskEstimate(N, BATCH, x_train=x, y_train=y,
                                                                diagnostics=True), recorder],
                       epochs=3, data=(x, y)).history
    classes = [(e["pred"] > (0.0 if from_logits else 0.5)).astype(int) for e in recorder.epochs]
    np.testing.assert_allclose(history["pop_accuracy_high"],
                               [float(np.mean(c[:, 0] == y[:, 0])) for c in classes], rtol=1e-6)
    np.testing.assert_allclose(history["prediction_changes"][1:],
                               [float(np.mean(a != b)) for a, b in zip(classes[1:], classes[:-1])],
                               rtol=1e-6)


def test_negative_or_nan_first_loss_is_unreliable():
    """The estimate assumes a positive loss: a negative one (here a loss
    shifted below zero) and a NaN one are said and never marked reliable."""
    model = _model()
    model.compile(keras_snr.SNRAdam(), loss=lambda a, b: keras.ops.mean((a - b) ** 2) - 10.0)
    with pytest.warns(UserWarning, match="assumes a positive loss"):
        history = _fit(model, [keras_snr.PopulationRiskEstimate(N, BATCH)], epochs=2).history
    assert history["pop_risk_reliable"] == [0.0, 0.0]
    x, y = _data()
    y = y.copy()
    y[3] = np.nan
    with pytest.warns(UserWarning, match="non-finite"):
        history = _fit(_model(), [keras_snr.PopulationRiskEstimate(N, BATCH)], epochs=2,
                       data=(x, y)).history
    assert history["pop_risk_reliable"] == [0.0, 0.0]
    assert all(math.isnan(v) for v in history["pop_risk"])


def test_evaluate_warns_instead_of_doing_nothing_silently():
    model = _model()
    callback = keras_snr.PopulationRiskEstimate(N, BATCH)
    _fit(model, [callback], epochs=1, validation_data=_data(1))  # no warning in fit
    with pytest.warns(UserWarning, match=r"does nothing in evaluate\(\)"):
        model.evaluate(*_data(1), verbose=0, callbacks=[callback])


def test_epoch_end_reduction_is_compiled_once():
    """One compiled function, traced once, however many epochs (JAX, TF)."""
    if BACKEND == "torch":
        pytest.skip("torch runs the reduction eagerly (documented)")
    estimate = keras_snr.PopulationRiskEstimate(N, BATCH)
    _fit(_model(), [estimate], epochs=4)
    if BACKEND == "tensorflow":
        assert estimate._reduce.experimental_get_tracing_count() == 1
    else:
        assert estimate._reduce.compiled._cache_size() == 1
