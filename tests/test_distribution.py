"""SNRAdam under data and model parallelism, on simulated CPU devices.

Device counts must be set before the backend initialises, so every check runs
in a fresh process (`run_python`) that trains a single-device reference and
the distributed model side by side and writes a JSON report; the tests
assert on the report.

- JAX: `keras.distribution.DataParallel` over 4 devices, and
  `keras.distribution.ModelParallel` over a 2x2 mesh with a sharded Dense
  kernel and bias; each matches the single-device run, and every SNRAdam slot
  is sharded like its variable (also for bfloat16 variables, whose slots are
  float32 and created by SNRAdam itself rather than by Keras).
- TensorFlow: `tf.distribute.MirroredStrategy` over 2 logical CPUs matches the
  single-device run; slots (also float32 ones for bfloat16 variables) are
  MirroredVariables whose replicas agree.
- torch: skipped (no Keras torch distribution engine in scope).
"""

import json

import numpy as np
import pytest

from conftest import BACKEND
from conftest import only_on
from conftest import run_python

TOLERANCE = 1e-5

COMMON = """
import contextlib
import json

import numpy as np


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 4)).astype("float32")
    return x, y


def build(init=None, dtype=None):
    import keras
    from keras_snr import SNRAdam

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="tanh", name="wide", dtype=dtype),
            keras.layers.Dense(4, name="out", dtype=dtype),
        ]
    )
    model.compile(SNRAdam(0.01, rho=0.9, alpha=0.5), loss="mse")
    if init is not None:
        model.set_weights(init)
    return model


def fit(model, epochs=2):
    # Global batch 16: 4 per device on 4 devices, 8 per replica on 2.
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)


def max_diff(a_list, b_list):
    return max(float(np.max(np.abs(a - b))) for a, b in zip(a_list, b_list))
"""


def _run(code, report_path, **kwargs):
    run_python(COMMON + code, **kwargs)
    with open(report_path) as f:
        return json.load(f)


# -------------------------------------------------------------------- JAX


@pytest.fixture(scope="module")
def jax_report(tmp_path_factory):
    report_path = tmp_path_factory.mktemp("jax") / "report.json"
    code = f"""
import jax
import keras

devices = jax.devices()
report = {{"devices": len(devices)}}


def slot_shardings(model):
    # (variable path, variable spec, [momentum, velocity, noise variance
    # specs], whether all four shardings are equivalent)
    opt = model.optimizer
    rows = []
    for v in model.trainable_variables:
        # Internals: the slot variables themselves must carry the sharding.
        i = opt._get_variable_index(v)
        slots = [opt._momentums[i], opt._velocities[i], opt._noise_variances[i]]
        sharding = v.value.sharding
        rows.append([
            v.path,
            list(sharding.spec),
            [list(s.value.sharding.spec) for s in slots],
            all(
                s.value.sharding.is_equivalent_to(sharding, len(v.shape))
                for s in slots
            ),
            [str(s.dtype) for s in slots],
        ])
    return rows


def run(distribution, init, dtype=None, epochs=2):
    if distribution is None:
        model = build(init, dtype)
        fit(model, epochs)
        return model, None, None
    with distribution.scope():
        model = build(init, dtype)
        model.optimizer.build(model.trainable_variables)
        before = slot_shardings(model)
        fit(model, epochs)
        return model, before, slot_shardings(model)


init = build().get_weights()
reference, _, _ = run(None, init)
reference = reference.get_weights()

dp = keras.distribution.DataParallel(devices=devices)
model, before, after = run(dp, init)
report["data_parallel"] = {{
    "mesh": dict(dp.device_mesh.backend_mesh.shape),
    "max_diff": max_diff(model.get_weights(), reference),
    "iterations": int(model.optimizer.iterations),
    "slots_before_fit": before,
    "slots_after_fit": after,
}}


def model_parallel():
    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices=devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    # fullmatch on the variable path; deliberately does not match the slot
    # paths (".../sequential_wide_kernel_momentum"): their layout must come
    # from the variable, through SNRAdam.
    layout_map[".*wide/kernel"] = (None, "model")
    layout_map[".*wide/bias"] = ("model",)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


mp = model_parallel()
model, before, after = run(mp, init)
report["model_parallel"] = {{
    "mesh": dict(mp.device_mesh.backend_mesh.shape),
    "max_diff": max_diff(model.get_weights(), reference),
    "iterations": int(model.optimizer.iterations),
    "slots_before_fit": before,
    "slots_after_fit": after,
}}

# bfloat16 variables: float32 slots made by SNRAdam._add_slot. One epoch;
# only sharding and finiteness are checked (bf16 rounding differs with the
# data split).
model, before, after = run(model_parallel(), None, dtype="bfloat16", epochs=1)
report["model_parallel_bf16"] = {{
    "finite": bool(all(np.isfinite(np.asarray(w, "float32")).all() for w in model.get_weights())),
    "iterations": int(model.optimizer.iterations),
    "slots_before_fit": before,
    "slots_after_fit": after,
}}



def estimate_history(distribution):
    # keras_snr's callbacks under keras.distribution: batch_size is global.
    import keras_snr

    scope = distribution.scope() if distribution is not None else contextlib.nullcontext()
    with scope:
        model = build(init)
        x, y = data()
        history = model.fit(
            x, y, batch_size=16, epochs=3, shuffle=False, verbose=0,
            callbacks=[keras_snr.PopulationRiskEstimate(dataset_size=32, batch_size=16,
                                                        diagnostics=True),
                       keras_snr.GateLogger()],
        ).history
    return {{k: history[k] for k in ("pop_risk", "pop_risk_stop", "gate_mean")}}


report["callbacks_single"] = estimate_history(None)
report["callbacks_data_parallel"] = estimate_history(
    keras.distribution.DataParallel(devices=devices)
)

with open({str(report_path)!r}, "w") as f:
    json.dump(report, f)
"""
    return _run(
        code,
        report_path,
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )


def _check_slot_shardings(rows, sharded):
    """Every slot sharded exactly like its variable; the variables in
    `sharded` (path suffix -> spec) really are sharded."""
    assert len(rows) == 4, rows
    seen = set()
    for path, spec, slot_specs, equivalent, _ in rows:
        assert equivalent, f"{path}: variable {spec}, slots {slot_specs}"
        assert slot_specs == [spec] * 3, f"{path}: variable {spec}, slots {slot_specs}"
        for suffix, expected in sharded.items():
            if path.endswith(suffix):
                assert spec == expected, (path, spec)
                seen.add(suffix)
    assert seen == set(sharded), f"not found: {set(sharded) - seen} in {rows}"


@only_on("jax")
def test_jax_data_parallel_matches_single_device(jax_report):
    assert jax_report["devices"] == 4
    result = jax_report["data_parallel"]
    assert result["mesh"] == {"batch": 4}
    assert result["iterations"] == 4
    assert result["max_diff"] <= TOLERANCE, result["max_diff"]
    # Replicated variables, replicated slots.
    _check_slot_shardings(result["slots_before_fit"], {})
    _check_slot_shardings(result["slots_after_fit"], {})


@only_on("jax")
def test_jax_data_parallel_callbacks_match_single_device(jax_report):
    single, parallel = jax_report["callbacks_single"], jax_report["callbacks_data_parallel"]
    for key in single:
        assert len(parallel[key]) == 3
        np.testing.assert_allclose(parallel[key], single[key], rtol=1e-4, err_msg=key)


@only_on("jax")
def test_jax_model_parallel_matches_single_device(jax_report):
    result = jax_report["model_parallel"]
    assert result["mesh"] == {"batch": 2, "model": 2}
    assert result["iterations"] == 4
    assert result["max_diff"] <= TOLERANCE, result["max_diff"]


@only_on("jax")
def test_jax_model_parallel_slots_sharded_like_variables(jax_report):
    sharded = {
        "wide/kernel": [None, "model"],
        "wide/bias": ["model"],
    }
    result = jax_report["model_parallel"]
    _check_slot_shardings(result["slots_before_fit"], sharded)
    _check_slot_shardings(result["slots_after_fit"], sharded)


@only_on("jax")
def test_jax_model_parallel_bfloat16_slots_sharded_like_variables(jax_report):
    result = jax_report["model_parallel_bf16"]
    assert result["finite"]
    assert result["iterations"] == 2
    sharded = {
        "wide/kernel": [None, "model"],
        "wide/bias": ["model"],
    }
    _check_slot_shardings(result["slots_before_fit"], sharded)
    _check_slot_shardings(result["slots_after_fit"], sharded)
    for row in result["slots_after_fit"]:
        assert row[4] == ["float32"] * 3, row


# ------------------------------------------------------------- TensorFlow


@pytest.fixture(scope="module")
def tf_report(tmp_path_factory):
    report_path = tmp_path_factory.mktemp("tf") / "report.json"
    code = f"""
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
import keras

report = {{}}
reference = build()
init = reference.get_weights()
fit(reference)

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
report["replicas"] = strategy.num_replicas_in_sync
with strategy.scope():
    model = build(init)
fit(model)
opt = model.optimizer
report["max_diff"] = max_diff(model.get_weights(), reference.get_weights())
report["iterations"] = int(keras.ops.convert_to_numpy(opt.iterations))


def slot_report(model):
    # Per slot: its type and whether its per-replica copies agree.
    opt = model.optimizer
    rows = []
    # Internals: each slot variable's per-replica copies.
    for slots in (opt._momentums, opt._velocities, opt._noise_variances):
        for s in slots:
            value = s.value
            copies = [np.asarray(c) for c in getattr(value, "values", (value,))]
            rows.append([
                s.path,
                type(value).__name__,
                len(copies),
                all(np.array_equal(copies[0], c) for c in copies),
                bool(np.any(copies[0])),
                str(s.dtype),
            ])
    return rows


report["slots"] = slot_report(model)

# bfloat16 variables: float32 slots made by SNRAdam._add_slot (colocated
# with the variable). One epoch; mirroring and finiteness only. All layers
# bfloat16: with a float32/bfloat16 mix MirroredStrategy fails to concat
# the gradients for the all-reduce, with Keras Adam too.
with strategy.scope():
    bf16 = build(None, dtype="bfloat16")
fit(bf16, epochs=1)
report["bf16_slots"] = slot_report(bf16)
report["bf16_finite"] = bool(
    all(np.isfinite(np.asarray(w, "float32")).all() for w in bf16.get_weights())
)
with open({str(report_path)!r}, "w") as f:
    json.dump(report, f)
"""
    return _run(code, report_path)


@only_on("tensorflow")
def test_tf_mirrored_strategy_matches_single_device(tf_report):
    assert tf_report["replicas"] == 2
    # One update per global batch, not one per replica.
    assert tf_report["iterations"] == 4
    assert tf_report["max_diff"] <= TOLERANCE, tf_report["max_diff"]


@only_on("tensorflow")
@pytest.mark.parametrize("key", ["slots", "bf16_slots"])
def test_tf_mirrored_slots_are_mirrored_and_in_sync(tf_report, key):
    rows = tf_report[key]
    assert len(rows) == 3 * 4, rows
    for path, kind, copies, in_sync, nonzero, dtype in rows:
        assert kind == "MirroredVariable", (path, kind)
        assert copies == 2, (path, copies)
        assert in_sync, f"{path}: replicas disagree"
        assert nonzero, f"{path}: never updated"
        assert dtype == "float32", (path, dtype)
    if key == "bf16_slots":
        assert tf_report["bf16_finite"]


# ------------------------------------------------------------------ torch


@only_on("torch")
def test_torch_distribution_not_covered():
    pytest.skip(
        "Keras 3 has no torch distribution engine (keras.distribution is "
        "JAX-only, tf.distribute TensorFlow-only); torch data parallelism is "
        "out of this project's scope."
    )
