"""The population-risk benchmark's parts that decide its numbers.

- The Keras EarlyStopping replay (`pop_risk/rules.py`) against Keras's own
  `EarlyStopping` fed the same values (which epoch it keeps, when it stops).
- Label Wave and the EB rule against their definitions on hand-made series.
- The offline replica of the library's recipe against a real run with
  `ValidationFreeStopping`.
- The task generator: deterministic, inside its documented ranges, held-out
  seeds disjoint from design seeds, tasks with the promised arrays.
"""

import json

import keras
import numpy as np
import pytest
from conftest import only_on
from pop_risk import rules
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


def test_replica_reproduces_the_recipe_of_a_real_run():
    """A classifier trained with the recipe; the replica's stopping epoch
    from a record of the same run equals ValidationFreeStopping's."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 6)).astype("float32")
    y = np.where(rng.random(160) < 0.3, rng.integers(0, 3, 160),
                 (x[:, 0] > 0) + (x[:, 1] > 0)).astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(3)])
    model.compile(keras_snr.SNRAdam(learning_rate=0.02, gate=None),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    stopper = keras_snr.ValidationFreeStopping(patience=4)
    history = model.fit(x, y, batch_size=16, epochs=40, verbose=0, callbacks=[
        keras_snr.PopulationRiskEstimate(160, 16, x_train=x, label_wave_window=2), stopper,
    ]).history
    ready = np.array(history["pop_risk_ready"]) > 0.5
    kept = score.recipe_epoch(np.array(history["pop_risk"]), ready, patience=4)
    assert kept == stopper.best_epoch
    assert ready.any()


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
