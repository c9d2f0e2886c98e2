"""Saving, restoring and serialising SNRAdam.

Fresh processes are expensive (5-15 s each, mostly imports), so the tests
that need them share four children, run once per module:

- `uninterrupted` (same backend): one `fit()` of 2 epochs (8 steps); a
  callback saves the model after epoch 1 and dumps the state it saved;

then, side by side (fixture `children`):

- `resume` (same backend): first loads without importing keras_snr (must
  fail, naming keras_snr), then with `custom_objects`, then normally, and
  trains the last 4 steps, which must equal the uninterrupted run bit for bit;
- one child per other backend: loads the same file and trains 4 steps.

Each child writes a JSON report and `.npz` dumps; the tests assert on them.
"""

import concurrent.futures
import copy
import json
import warnings

import keras
import numpy as np
import pytest

import keras_snr
from conftest import ALL_BACKENDS
from conftest import BACKEND
from conftest import run_python
from keras_snr import SNRAdam

REGISTERED_NAME = "keras_snr>SNRAdam"
STEPS_PER_EPOCH = 4  # 32 examples, batch 8

# Prepended to every child's code, and exec'd here too, so that parent and
# children build the same model from the same data. Imports no keras_snr.
COMMON = """
import json
import sys

import numpy as np
import keras


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    return x, y


def make_model(optimizer):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(7, activation="tanh", name="hidden"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    model.compile(optimizer=optimizer, loss="mse")
    return model


def snr_optimizer():
    from keras_snr import SNRAdam

    # A schedule makes the learning rate depend on the restored iteration
    # count too (as do the bias corrections).
    schedule = keras.optimizers.schedules.ExponentialDecay(
        2e-2, decay_steps=3, decay_rate=0.7
    )
    return SNRAdam(schedule, rho=0.9, softness=0.5, alpha=0.5)


def fit(model, epochs=1, **kwargs):
    x, y = data()
    return model.fit(
        x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, **kwargs
    )


def numpy_list(variables):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def dump(model, path):
    arrays = {}
    for i, a in enumerate(numpy_list(model.weights)):
        arrays[f"w{i}"] = a
    for i, a in enumerate(numpy_list(model.optimizer.variables)):
        arrays[f"o{i}"] = a
    np.savez(path, **arrays)


def same_state(model, path):
    saved = np.load(path)
    now = [("w", numpy_list(model.weights)), ("o", numpy_list(model.optimizer.variables))]
    for prefix, arrays in now:
        n = len([k for k in saved.files if k.startswith(prefix)])
        if n != len(arrays):
            return f"{prefix}: {len(arrays)} arrays, saved {n}"
        for i, a in enumerate(arrays):
            b = saved[f"{prefix}{i}"]
            # Integer counters may differ in width between backends.
            both_int = a.dtype.kind in "iu" and b.dtype.kind in "iu"
            if a.dtype != b.dtype and not both_int:
                return f"{prefix}{i}: dtype {a.dtype}, saved {b.dtype}"
            if not np.array_equal(a, b):
                return f"{prefix}{i} differs: max abs diff {np.max(np.abs(a - b))}"
    return "ok"
"""

_common = {}
exec(COMMON, _common)
make_model = _common["make_model"]
snr_optimizer = _common["snr_optimizer"]
fit = _common["fit"]
numpy_list = _common["numpy_list"]


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# --------------------------------------------------------------- config


def _schedule():
    return keras.optimizers.schedules.CosineDecay(
        3e-3, decay_steps=100, alpha=0.1, warmup_target=5e-3, warmup_steps=7
    )


CONFIGS = {
    "no_gate_per_tensor_schedule": dict(
        learning_rate=_schedule,  # called per test: a fresh instance
        beta_1=0.8,
        beta_2=0.99,
        rho=0.95,
        epsilon=1e-6,
        gate=None,
        softness=3.0,
        alpha=0.25,
        reduction="per_tensor",
        weight_decay=0.05,
        clipnorm=1.5,
        use_ema=True,
        ema_momentum=0.9,
        ema_overwrite_frequency=5,
        loss_scale_factor=64.0,
        gradient_accumulation_steps=3,
        name="custom_snr",
    ),
    "hard_gate_float_lr": dict(
        learning_rate=0.02,
        gate="hard",
        softness=0.0,
        alpha=0.0,
        weight_decay=None,
        global_clipnorm=2.0,
    ),
    "soft_gate_clipvalue": dict(gate="soft", clipvalue=0.5, rho=0.0, beta_1=0.0),
}


def _kwargs(name):
    kwargs = dict(CONFIGS[name])
    if callable(kwargs.get("learning_rate")):
        kwargs["learning_rate"] = kwargs["learning_rate"]()
    return kwargs


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_round_trip(name):
    kwargs = _kwargs(name)
    optimizer = SNRAdam(**kwargs)
    config = optimizer.get_config()
    for key in ("beta_1", "beta_2", "rho", "epsilon", "gate", "softness",
                "alpha", "reduction", "fused"):
        assert key in config, key
        if key in kwargs:
            assert config[key] == kwargs[key], key

    # Keras's from_config deserializes the schedule in place: pass a copy.
    restored = SNRAdam.from_config(copy.deepcopy(config))
    assert type(restored) is SNRAdam
    assert restored.get_config() == config
    assert restored.gate == optimizer.gate
    assert restored.reduction == optimizer.reduction
    if isinstance(kwargs.get("learning_rate"), keras.optimizers.schedules.LearningRateSchedule):
        assert type(restored._learning_rate) is type(kwargs["learning_rate"])
        assert restored._learning_rate.get_config() == kwargs["learning_rate"].get_config()
    for attr in ("beta_1", "beta_2", "rho", "epsilon", "softness", "alpha",
                 "weight_decay", "clipnorm", "clipvalue", "global_clipnorm",
                 "use_ema", "ema_momentum", "ema_overwrite_frequency",
                 "loss_scale_factor", "gradient_accumulation_steps", "name", "fused"):
        assert getattr(restored, attr) == getattr(optimizer, attr), attr


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_serialize_deserialize(name):
    optimizer = SNRAdam(**_kwargs(name))
    serialized = keras.optimizers.serialize(optimizer)
    assert serialized["registered_name"] == REGISTERED_NAME
    assert serialized["class_name"] == "SNRAdam"
    # The serialized form is plain JSON.
    serialized = json.loads(json.dumps(serialized))
    restored = keras.optimizers.deserialize(serialized)
    assert type(restored) is SNRAdam
    assert restored.get_config() == optimizer.get_config()
    # Also through the generic entry points.
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(optimizer)
    )
    assert type(again) is SNRAdam
    assert again.get_config() == optimizer.get_config()


def test_registered_name():
    assert keras.saving.get_registered_name(SNRAdam) == REGISTERED_NAME
    assert keras.saving.get_registered_object(REGISTERED_NAME) is SNRAdam
    assert keras.optimizers.get(
        {"class_name": REGISTERED_NAME, "config": {"gate": "hard"}}
    ).gate == "hard"


# ---------------------------------------------------- save and resume


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Child 1: 8 uninterrupted steps; checkpoint after step 4."""
    tmp = tmp_path_factory.mktemp("saving")
    paths = {
        "ckpt": tmp / "x.keras",
        "at_save": tmp / "at_save.npz",
        "final": tmp / "final_uninterrupted.npz",
    }
    run_python(
        COMMON
        + f"""
class SaveAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.model.save({str(paths["ckpt"])!r})
            dump(self.model, {str(paths["at_save"])!r})

model = make_model(snr_optimizer())
fit(model, epochs=2, callbacks=[SaveAfterFirstEpoch()])
assert int(model.optimizer.iterations) == 2 * {STEPS_PER_EPOCH}
dump(model, {str(paths["final"])!r})
"""
    )
    return paths


def _resume_child(uninterrupted, tmp):
    """Fresh process: failing load without keras_snr, then loads, trains."""
    report_path = tmp / "report.json"
    final = tmp / "final_resumed.npz"
    ckpt = str(uninterrupted["ckpt"])
    run_python(
        COMMON
        + f"""
report = {{}}
CKPT = {ckpt!r}

def attempt(**kwargs):
    try:
        model = keras.saving.load_model(CKPT, **kwargs)
    except Exception as e:
        return {{"raised": type(e).__name__, "message": str(e)}}
    return {{"raised": None, "optimizer": type(model.optimizer).__name__,
             "iterations": int(model.optimizer.iterations)}}

# 1. keras_snr never imported.
report["without_import"] = attempt()
report["imported_by_load"] = "keras_snr" in sys.modules

# 2. Imported, but the registration removed: only custom_objects can help.
import keras_snr
from keras_snr import SNRAdam
registry = keras.saving.get_custom_objects()
entry = registry.pop("keras_snr>SNRAdam")
report["unregistered"] = attempt()
report["custom_objects_short_key"] = attempt(custom_objects={{"SNRAdam": SNRAdam}})
report["custom_objects"] = attempt(custom_objects={{"keras_snr>SNRAdam": SNRAdam}})
registry["keras_snr>SNRAdam"] = entry

# 3. The normal way; continue training from the checkpoint.
model = keras.saving.load_model(CKPT)
report["optimizer"] = type(model.optimizer).__name__
report["config"] = model.optimizer.get_config()
report["iterations_loaded"] = int(model.optimizer.iterations)
report["state_loaded"] = same_state(model, {str(uninterrupted["at_save"])!r})
fit(model)
report["iterations_final"] = int(model.optimizer.iterations)
dump(model, {str(final)!r})
with open({str(report_path)!r}, "w") as f:
    json.dump(report, f, default=str)
"""
    )
    report = json.loads(report_path.read_text())
    report["at_save"] = str(uninterrupted["at_save"])
    return report, _load(final), _load(uninterrupted["final"])


def test_resume_restores_state_bit_for_bit(resume):
    report, _, _ = resume
    assert report["optimizer"] == "SNRAdam"
    assert report["iterations_loaded"] == STEPS_PER_EPOCH
    assert report["state_loaded"] == "ok"
    # A fresh optimizer's config; only the schedule is an object.
    expected = json.loads(json.dumps(snr_optimizer().get_config(), default=str))
    expected.pop("name")
    assert report["config"].pop("name").startswith("snr_adam")
    assert report["config"] == expected


def test_resumed_training_equals_uninterrupted_bit_for_bit(resume):
    report, resumed, uninterrupted = resume
    assert report["iterations_final"] == 2 * STEPS_PER_EPOCH
    assert resumed.keys() == uninterrupted.keys()
    differ = [
        (k, float(np.max(np.abs(resumed[k] - uninterrupted[k]))))
        for k in sorted(resumed)
        if not np.array_equal(resumed[k], uninterrupted[k])
    ]
    assert not differ, f"resumed != uninterrupted (w: weights, o: optimizer): {differ}"
    # Sanity: the last 4 steps did move the weights.
    at_save = report["at_save"]
    assert not np.array_equal(_load(at_save)["w0"], resumed["w0"])


def test_load_without_import_names_keras_snr(resume):
    report, _, _ = resume
    failed = report["without_import"]
    assert failed["raised"] is not None, (
        "load_model succeeded without importing keras_snr: " + repr(failed)
    )
    assert failed["raised"] == "TypeError"
    assert "keras_snr" in failed["message"]
    assert REGISTERED_NAME in failed["message"]
    # Loading must not import the package behind the user's back either.
    assert report["imported_by_load"] is False


def test_load_with_custom_objects(resume):
    report, _, _ = resume
    # With the registration removed, loading fails as without the import ...
    assert report["unregistered"]["raised"] == "TypeError"
    assert REGISTERED_NAME in report["unregistered"]["message"]
    # ... the bare class name is not the key ...
    assert report["custom_objects_short_key"]["raised"] == "TypeError"
    # ... and the registered name is.
    ok = report["custom_objects"]
    assert ok["raised"] is None, ok
    assert ok["optimizer"] == "SNRAdam"
    assert ok["iterations"] == STEPS_PER_EPOCH


# -------------------------------------------------------- cross-backend


def _cross_child(other, uninterrupted, tmp):
    """Fresh process on another backend: load, check, train 4 steps."""
    report_path = tmp / f"{other}.json"
    final = tmp / f"{other}.npz"
    run_python(
        COMMON
        + f"""
import keras_snr
assert keras.backend.backend() == {other!r}, keras.backend.backend()
model = keras.saving.load_model({str(uninterrupted["ckpt"])!r})
# The file stores the saving backend's resolved `jit_compile`. True from
# JAX would make torch trace the step with dynamo (minutes on CPU), False
# from torch would make JAX run op by op: use this backend's default.
if keras.backend.backend() != "tensorflow":
    model.jit_compile = keras.backend.backend() == "jax"
report = {{
    "optimizer": type(model.optimizer).__name__,
    "iterations_loaded": int(model.optimizer.iterations),
    "state_loaded": same_state(model, {str(uninterrupted["at_save"])!r}),
}}
history = fit(model)
report["loss"] = [float(l) for l in history.history["loss"]]
report["iterations_final"] = int(model.optimizer.iterations)
dump(model, {str(final)!r})
with open({str(report_path)!r}, "w") as f:
    json.dump(report, f)
""",
        backend=other,
    )
    return json.loads(report_path.read_text()), _load(final)


@pytest.fixture(scope="module")
def children(uninterrupted, tmp_path_factory):
    """Runs the three children that read the checkpoint side by side (they
    are independent; most of their time is importing). Each result is the
    child's return value or the exception that failed it."""
    tmp = tmp_path_factory.mktemp("children")
    jobs = {"resume": (_resume_child, uninterrupted, tmp)}
    for other in ALL_BACKENDS:
        if other != BACKEND:
            jobs[other] = (_cross_child, other, uninterrupted, tmp)
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(*job) for name, job in jobs.items()}
    results = {}
    for name, future in futures.items():
        error = future.exception()
        results[name] = error if error is not None else future.result()
    return results


def _result(value):
    if isinstance(value, BaseException):
        raise value
    return value


@pytest.fixture(scope="module")
def resume(children):
    return _result(children["resume"])


@pytest.fixture(scope="module")
def cross_backend(children, uninterrupted):
    results = {
        other: _result(children[other]) for other in ALL_BACKENDS if other != BACKEND
    }
    return results, _load(uninterrupted["final"])


def test_cross_backend_load_and_train(cross_backend):
    results, reference = cross_backend
    assert sorted(results) == sorted(b for b in ALL_BACKENDS if b != BACKEND)
    for other, (report, final) in results.items():
        assert report["optimizer"] == "SNRAdam", other
        assert report["iterations_loaded"] == STEPS_PER_EPOCH, other
        assert report["state_loaded"] == "ok", other
        assert report["iterations_final"] == 2 * STEPS_PER_EPOCH, other
        assert np.isfinite(report["loss"]).all(), other
        # Same state, same data, same math: the other backend continues the
        # run as this one does, up to float rounding.
        for key in sorted(reference):
            np.testing.assert_allclose(
                final[key], reference[key], rtol=1e-4, atol=1e-5,
                err_msg=f"{BACKEND} -> {other}: {key}",
            )


# ------------------------------------------------ slot-layout mismatch


def _built_snr_model():
    model = make_model(SNRAdam(learning_rate=0.01))
    model.optimizer.build(model.trainable_variables)
    return model


def _assert_layout_error(load, model=None):
    """`load()` raises a ValueError naming the slot layout, even with all
    warnings ignored (so the failure is not a warning), and leaves the
    optimizer state untouched."""
    before = numpy_list(model.optimizer.variables) if model is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError) as info:
            load()
    message = str(info.value)
    assert "slot layout" in message, message
    assert "SNRAdam" in message, message
    if model is not None:
        after = numpy_list(model.optimizer.variables)
        assert all(np.array_equal(a, b) for a, b in zip(before, after))
        assert int(model.optimizer.iterations) == 0
    return message


@pytest.fixture(scope="module")
def adam_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adam")
    model = make_model(keras.optimizers.Adam(0.01))
    fit(model)
    model.save(tmp / "adam.keras")
    model.save_weights(tmp / "adam.weights.h5")
    return tmp


@pytest.mark.parametrize("filename", ["adam.keras", "adam.weights.h5"])
def test_adam_state_into_snr_adam_raises(adam_files, filename):
    model = _built_snr_model()
    message = _assert_layout_error(
        lambda: model.load_weights(adam_files / filename), model
    )
    # Adam saved iterations, learning rate and two slots per variable.
    assert f"found {2 + 2 * len(model.trainable_variables)}" in message


def test_adam_state_with_skip_mismatch_is_not_applied(adam_files):
    """skip_mismatch=True is the user asking Keras to turn load errors into
    warnings; the layout message must still reach them, and no foreign
    state may be applied."""
    model = _built_snr_model()
    with pytest.warns(UserWarning, match="slot layout"):
        model.load_weights(adam_files / "adam.weights.h5", skip_mismatch=True)
    assert int(model.optimizer.iterations) == 0
    for slot in model.optimizer.variables[3:]:
        assert not np.any(keras.ops.convert_to_numpy(slot))


@pytest.fixture(scope="module")
def future_layout_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("future")
    model = make_model(SNRAdam(learning_rate=0.01))
    fit(model)
    model.save(tmp / "current.keras")
    model.save_weights(tmp / "current.weights.h5")
    model.optimizer._slot_layout_version.assign(2)
    model.save(tmp / "future.keras")
    model.save_weights(tmp / "future.weights.h5")
    return tmp


@pytest.mark.parametrize("filename", ["future.keras", "future.weights.h5"])
def test_future_layout_marker_raises_on_load_weights(future_layout_files, filename):
    model = _built_snr_model()
    message = _assert_layout_error(
        lambda: model.load_weights(future_layout_files / filename), model
    )
    assert "layout marker" in message


def test_future_layout_marker_raises_on_load_model(future_layout_files):
    _assert_layout_error(
        lambda: keras.saving.load_model(future_layout_files / "future.keras")
    )


@pytest.mark.parametrize("filename", ["current.keras", "current.weights.h5"])
def test_current_layout_loads(future_layout_files, filename):
    """Control for the two tests above: same files, marker left at 1."""
    model = _built_snr_model()
    model.load_weights(future_layout_files / filename)
    assert int(model.optimizer.iterations) == STEPS_PER_EPOCH
    assert int(model.optimizer._slot_layout_version) == keras_snr.SLOT_LAYOUT_VERSION
    loaded = keras.saving.load_model(future_layout_files / "current.keras")
    assert int(loaded.optimizer.iterations) == STEPS_PER_EPOCH


# ------------------- loading must find the layout marker by identity

# Keras variables overload `==` elementwise, so the marker must be found by
# identity: an earlier variable equal to 1 must not pass for it, and earlier
# non-scalar variables (EMA copies, gradient accumulators) must not make the
# lookup ambiguous.


@pytest.mark.parametrize(
    "destination",
    ["after_one_step", "learning_rate_one"],
)
def test_load_into_optimizer_with_a_variable_equal_to_one(
    future_layout_files, destination
):
    """A valid state must load whatever values the destination holds."""
    if destination == "after_one_step":
        model = _built_snr_model()
        model.optimizer.iterations.assign(1)
    else:
        model = make_model(SNRAdam(learning_rate=1.0))
        model.optimizer.build(model.trainable_variables)
    model.load_weights(future_layout_files / "current.weights.h5")
    assert int(model.optimizer.iterations) == STEPS_PER_EPOCH


def _distinct_state(optimizer):
    """Give every optimizer variable but the marker a distinct value."""
    for i, variable in enumerate(optimizer.variables):
        if variable is optimizer._slot_layout_version:
            continue
        value = np.full(variable.shape, i + 2, keras.backend.standardize_dtype(variable.dtype))
        variable.assign(value)
    return numpy_list(optimizer.variables)


@pytest.mark.parametrize(
    "kwargs",
    [dict(use_ema=True), dict(gradient_accumulation_steps=2)],
    ids=["use_ema", "gradient_accumulation"],
)
def test_state_with_base_optimizer_variables_round_trips(tmp_path, kwargs):
    """EMA copies and gradient accumulators come before the marker."""
    model = make_model(SNRAdam(learning_rate=0.01, **kwargs))
    model.optimizer.build(model.trainable_variables)
    saved = _distinct_state(model.optimizer)
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")

    target = make_model(SNRAdam(learning_rate=0.01, **kwargs))
    target.optimizer.build(target.trainable_variables)
    target.load_weights(tmp_path / "m.weights.h5")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    for optimizer in (target.optimizer, loaded.optimizer):
        now = numpy_list(optimizer.variables)
        assert len(now) == len(saved)
        for a, b in zip(now, saved):
            np.testing.assert_array_equal(a, b)


# ----------------------------- a model saved before its first training step


@pytest.mark.parametrize("with_schedule", [False, True], ids=["float_lr", "schedule"])
def test_compiled_but_untrained_model_reloads(tmp_path, with_schedule):
    # Failed before keras_snr accepted a state saved before the first update:
    # the file holds the unbuilt optimizer's variables (iterations and the
    # learning rate), and the layout check refused them with the
    # "slot layout" ValueError on all three backends. Keras AdamW loads the
    # same file.
    lr = (keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.9)
          if with_schedule else 0.01)
    model = make_model(SNRAdam(learning_rate=lr))
    model.save(tmp_path / "untrained.keras")
    loaded = keras.saving.load_model(tmp_path / "untrained.keras")
    assert type(loaded.optimizer) is SNRAdam
    assert int(loaded.optimizer.iterations) == 0
    fit(loaded)  # trains from a fresh optimizer state
    assert int(loaded.optimizer.iterations) == STEPS_PER_EPOCH
    # Only a state at step 0 passes: iterations > 0 without slots is refused.
    optimizer = _built_snr_model().optimizer
    store = {"0": np.array(5, "int64"), "1": np.array(0.01, "float32")}
    with pytest.raises(ValueError, match="slot layout"):
        optimizer.load_own_variables(store)
