"""SNRAdam against the NumPy reference, and its contract (arguments, slots)."""

import contextlib
import itertools
import warnings
import zlib

import keras
import numpy as np
import pytest
from conftest import BACKEND
from reference import ReferenceSNRAdam

import keras_snr
from keras_snr import SNRAdam

SHAPES = [(), (7,), (5, 3), (2, 3, 4), (2, 2, 3, 3)]
# Variables whose names contain "nodecay" are excluded from weight decay, so
# every run checks decayed and undecayed variables side by side.
NAMES = ["scalar", "vector_nodecay", "matrix", "cube_nodecay", "tesseract"]
LR = 1e-2
STEPS = 50

GRID = (
    [
        dict(gate=g, reduction=r, alpha=a, softness=1.0)
        for g, r, a in itertools.product(
            ["snr", "soft", "hard"], ["elementwise", "per_tensor"], [0.0, 0.3, 1.0]
        )
    ]
    + [dict(gate=None, reduction=r, alpha=1.0) for r in ["elementwise", "per_tensor"]]
    + [
        dict(gate=g, reduction=r, alpha=0.3, softness=lam)
        for g, r, lam in itertools.product(
            ["snr", "soft"], ["elementwise", "per_tensor"], [0.3, 10.0]
        )
    ]
)
# On torch: the foreach fast path with host (Python float) per-step scalars,
# as it runs on CPU; the same with 0-d device-tensor scalars, as it runs on
# accelerators; the same update under torch.compile, as it runs on CUDA
# ("compiled-graph": traced by dynamo and AOTAutograd but run without
# Inductor's code generation, which costs seconds per graph on this CPU;
# "compiled": Inductor too); and Keras's generic per-variable path.
PATHS = (
    ["fast", "fast-device-scalars", "compiled-graph", "generic"]
    if BACKEND == "torch"
    else ["default"]
)
# On TensorFlow the update is XLA-compiled by default; the free-running
# trajectory also checks it uncompiled. On torch it also runs Inductor.
TRAJECTORY_PATHS = PATHS + {"tensorflow": ["uncompiled"], "torch": ["compiled"]}.get(BACKEND, [])


@pytest.fixture(autouse=True)
def _select_torch_path(request, monkeypatch):
    callspec = getattr(request.node, "callspec", None)
    path = callspec.params.get("path") if callspec is not None else None
    if path == "fast-device-scalars":
        from keras_snr import _torch_fast_path

        monkeypatch.setattr(_torch_fast_path, "HOST_SCALARS_ON_CPU", False)
    if path in ("compiled", "compiled-graph"):
        with compiled_torch_update(monkeypatch, "inductor" if path == "compiled" else "aot_eager"):
            yield
        return
    yield


@contextlib.contextmanager
def compiled_torch_update(monkeypatch, backend, min_size=4):
    """Run `fused=True` on torch compiled on this CPU with `backend`, for
    variables of at least `min_size` elements (the others eagerly, as
    always: SHAPES has one of each); fail if the update fell back to eager
    kernels, compiled nothing, or compiled anything after an optimizer's
    first step."""
    import torch

    from keras_snr import _torch_fast_path

    monkeypatch.setattr(_torch_fast_path, "COMPILE_DEVICES", ("cpu",))
    monkeypatch.setattr(_torch_fast_path, "COMPILE_BACKEND", backend)
    monkeypatch.setattr(_torch_fast_path, "COMPILE_MIN_SIZE", min_size)
    run_compiled = _torch_fast_path._run_compiled
    stepped = set()  # compiled functions past their first step

    def checked(optimizer, compiled, *args):
        before = counters["stats"]["unique_graphs"]
        result = run_compiled(optimizer, compiled, *args)
        after = counters["stats"]["unique_graphs"]
        assert id(compiled) not in stepped or after == before, "recompiled after step 1"
        stepped.add(id(compiled))
        return result

    monkeypatch.setattr(_torch_fast_path, "_run_compiled", checked)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="SNRAdam: compiling")
        yield
    compiled = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    assert compiled >= 1, "nothing was compiled"


def _config_id(c):
    return "-".join(f"{k}={v}" for k, v in c.items())


def _gradients(rng, steps):
    """A gradient stream with signal on some coordinates and noise on all."""
    means = [rng.normal(scale=0.5, size=s) for s in SHAPES]
    return [
        [(mu + rng.normal(size=s)).astype("float32") for mu, s in zip(means, SHAPES)]
        for _ in range(steps)
    ]


def _make(config, weight_decay, path):
    fused = path not in ("generic", "uncompiled")
    optimizer = SNRAdam(learning_rate=LR, weight_decay=weight_decay, fused=fused, **config)
    if weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["nodecay"])
    return optimizer


def _compiled_apply(optimizer, variables):
    """`optimizer.apply` compiled the way `fit()` runs it on each backend:
    `stateless_apply` under `jax.jit` on JAX, a `tf.function` on TensorFlow,
    eager on torch. State is written back to the Keras variables each step."""
    optimizer.build(variables)
    if BACKEND == "jax":
        import jax

        step = jax.jit(optimizer.stateless_apply)

        def apply(grads):
            new_w, new_o = step(
                [v.value for v in optimizer.variables], grads, [v.value for v in variables]
            )
            for var, value in zip(variables, new_w):
                var.assign(value)
            for var, value in zip(optimizer.variables, new_o):
                var.assign(value)

        return apply
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda grads: optimizer.apply(grads, variables))
    return lambda grads: optimizer.apply(grads, variables)


def _slots(optimizer, variables):
    # The raw slots (a test of internals: the reference is re-synchronised
    # to them every step).
    index = [optimizer._get_variable_index(v) for v in variables]
    return [
        [keras.ops.convert_to_numpy(slots[i]).astype(np.float64) for i in index]
        for slots in (
            optimizer._momentums,
            optimizer._velocities,
            optimizer._noise_variances,
        )
    ]


def _reference_for(config, weight_decay):
    return ReferenceSNRAdam(learning_rate=LR, weight_decay=weight_decay, **config)


def _grid_paths(config):
    # Each compile costs about a second here: the compiled path runs every
    # gate and reduction, and the variations of alpha and softness (which
    # change constants in the graph, not its form) run on the other paths.
    if config.get("alpha") == 0.3 and config.get("softness", 1.0) == 1.0 or config["gate"] is None:
        return PATHS
    return [p for p in PATHS if p != "compiled-graph"]


@pytest.mark.parametrize(
    "config, path",
    [pytest.param(c, p, id=f"{_config_id(c)}-{p}") for c in GRID for p in _grid_paths(c)],
)
@pytest.mark.parametrize("weight_decay", [0.1, None], ids=["wd", "nowd"])
def test_matches_numpy_reference(config, weight_decay, path):
    """Every step, from the same state, equals the reference to 1e-6 relative.

    After each step the reference is re-synchronised to the optimizer's
    float32 state, so the comparison measures the update rule (1e-6) rather
    than float32 storage rounding accumulated over many steps; a free-running
    trajectory (eager `apply`) is checked separately below. The optimizer
    runs compiled, as `fit()` runs it (see `_compiled_apply`).
    """
    # crc32, not hash(): string hashes change from process to process.
    rng = np.random.default_rng(zlib.crc32(_config_id(config).encode()))
    initial = [rng.normal(size=s).astype("float32") for s in SHAPES]
    variables = [keras.Variable(w, name=n) for w, n in zip(initial, NAMES)]
    optimizer = _make(config, weight_decay, path)
    decayed = [bool(weight_decay) and "nodecay" not in n for n in NAMES]
    references = {
        d: _reference_for(config, weight_decay if d else None) for d in (True, False)
    }
    apply = _compiled_apply(optimizer, variables)

    for step, grads in enumerate(_gradients(rng, STEPS)):
        before = [keras.ops.convert_to_numpy(v).astype(np.float64) for v in variables]
        state = _slots(optimizer, variables) if step else None
        for ref in references.values():
            if state is not None:
                ref.m, ref.v, ref.s = [list(x) for x in state]
        expected = {d: ref.step(before, grads) for d, ref in references.items()}
        apply([keras.ops.convert_to_tensor(g) for g in grads])

        for i, variable in enumerate(variables):
            got = keras.ops.convert_to_numpy(variable).astype(np.float64)
            want = expected[decayed[i]][i]
            # Relative to the weight, floored at the step size.
            np.testing.assert_array_less(
                np.abs(got - want), 1e-6 * (np.abs(want) + LR), err_msg=NAMES[i]
            )
        # Slots elementwise to 1e-6 of the magnitude of the terms they sum
        # (the momentum can cancel to ~0; the other two are sums of squares).
        ref = references[True]
        old_m = state[0] if state is not None else [np.zeros(s) for s in SHAPES]
        m_terms = [
            optimizer.beta_1 * np.abs(m) + (1 - optimizer.beta_1) * np.abs(g)
            for m, g in zip(old_m, grads)
        ]
        got_m, got_v, got_s = _slots(optimizer, variables)
        for i in range(len(variables)):
            for name, got, want, scale in (
                ("momentum", got_m[i], ref.m[i], m_terms[i]),
                ("velocity", got_v[i], ref.v[i], np.abs(ref.v[i])),
                ("noise_variance", got_s[i], ref.s[i], np.abs(ref.s[i])),
            ):
                np.testing.assert_array_less(
                    np.abs(got - want), 1e-6 * scale + 1e-30, err_msg=f"{name} {NAMES[i]}"
                )


@pytest.mark.parametrize("path", TRAJECTORY_PATHS)
@pytest.mark.parametrize(
    "config",
    [dict(gate="snr"), dict(gate="soft", reduction="per_tensor", softness=0.3)],
    ids=_config_id,
)
def test_free_running_trajectory(config, path):
    """100 steps without re-synchronisation stay within float32 accumulation
    error of the float64 reference."""
    rng = np.random.default_rng(7)
    initial = [rng.normal(size=s).astype("float32") for s in SHAPES]
    variables = [keras.Variable(w) for w in initial]
    optimizer = _make(dict(alpha=0.3, **config), 0.1, path)
    ref = _reference_for(dict(alpha=0.3, **config), 0.1)
    weights = [w.astype(np.float64) for w in initial]
    for grads in _gradients(rng, 100):
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        weights = ref.step(weights, grads)
    for variable, want in zip(variables, weights):
        got = keras.ops.convert_to_numpy(variable)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gate_kwargs", [dict(gate="hard", alpha=0.0), dict(gate=None)])
def test_degenerate_gates_equal_keras_adamw(gate_kwargs):
    rng = np.random.default_rng(3)
    initial = [rng.normal(size=s).astype("float32") for s in SHAPES]
    ours = [keras.Variable(w) for w in initial]
    theirs = [keras.Variable(w) for w in initial]
    snr = SNRAdam(learning_rate=LR, weight_decay=0.05, epsilon=1e-8, **gate_kwargs)
    adamw = keras.optimizers.AdamW(learning_rate=LR, weight_decay=0.05, epsilon=1e-8)
    for grads in _gradients(rng, 50):
        grads = [keras.ops.convert_to_tensor(g) for g in grads]
        snr.apply(grads, ours)
        adamw.apply(grads, theirs)
    for a, b in zip(ours, theirs):
        # Keras puts epsilon outside the bias correction ("epsilon hat"),
        # SNRAdam inside (as torch.optim.AdamW); with O(1) gradients the
        # difference is ~1e-7 of a step.
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-5, atol=1e-5
        )


def test_noise_slot_estimates_gradient_variance():
    """Fed gradients of known mean and variance, the bias-corrected noise slot
    converges to the variance within 5 %.

    The deviation is taken from the momentum, whose own spread inflates the
    estimate by the closed-form factor 1 + (1 - beta_1) / (1 + beta_1); with
    beta_1 = 0.99 that is 1.005, which the tighter second check accounts for.
    """
    rng = np.random.default_rng(0)
    n, mean, std, steps = 5000, 0.7, 2.0, 600
    variable = keras.Variable(np.zeros((n,), "float32"))
    optimizer = SNRAdam(learning_rate=0.0, beta_1=0.99, rho=0.99, gate=None, weight_decay=None)
    for _ in range(steps):
        g = (mean + std * rng.normal(size=n)).astype("float32")
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
    stats = optimizer.statistics(variable)
    s_hat = keras.ops.convert_to_numpy(stats.noise_variance)
    assert abs(np.mean(s_hat) / std**2 - 1) < 0.05
    assert abs(np.mean(s_hat) / (std**2 * (1 + 0.01 / 1.99)) - 1) < 0.02
    m_hat = keras.ops.convert_to_numpy(stats.momentum)
    assert abs(np.mean(m_hat) / mean - 1) < 0.02


@pytest.mark.parametrize("reduction", ["elementwise", "per_tensor"])
def test_snr_gate_is_one_half_at_threshold(reduction):
    """With softness 1, q = 1/2 exactly where m_hat**2 = alpha * s_hat."""
    signal = keras.ops.convert_to_tensor(np.array([0.5, 2.0, 8.0], "float32"))
    noise = keras.ops.convert_to_tensor(np.array([1.0, 4.0, 16.0], "float32"))
    if reduction == "per_tensor":
        signal, noise = keras.ops.sum(signal), keras.ops.sum(noise)
    q = keras.ops.convert_to_numpy(
        keras_snr.gate.gate(signal, noise, "snr", alpha=0.5, softness=1.0, stabiliser=1e-16)
    )
    np.testing.assert_allclose(q, 0.5, rtol=1e-6)
    ref = ReferenceSNRAdam(gate="snr", alpha=0.5)
    np.testing.assert_allclose(ref.gate_value(np.array([0.5]), np.array([1.0])), 0.5)


def test_gate_closes_on_pure_noise_and_opens_on_signal():
    """End to end, against Adam on the same gradients: a coordinate fed pure
    noise moves far less than under Adam; one fed a strong signal (mean 3,
    std 1: q ~ 0.9) moves almost as far."""
    travel = {}
    for optimizer in (
        SNRAdam(learning_rate=1e-3, alpha=1.0, weight_decay=None),
        keras.optimizers.Adam(learning_rate=1e-3),
    ):
        rng = np.random.default_rng(1)
        variable = keras.Variable(np.zeros((2, 500), "float32"))
        for _ in range(300):
            g = rng.normal(size=(2, 500)).astype("float32")
            g[1] += 3.0  # signal row
            optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
        w = keras.ops.convert_to_numpy(variable)
        travel[type(optimizer).__name__] = np.abs(w).mean(axis=1)
    (snr_noise, snr_signal), (adam_noise, adam_signal) = travel["SNRAdam"], travel["Adam"]
    assert snr_signal > 0.8 * adam_signal
    assert snr_noise < 0.3 * adam_noise


def test_exactly_one_slot_more_than_adam():
    shapes = [(3, 4), (4,), (4, 2)]
    variables = [keras.Variable(np.ones(s, "float32")) for s in shapes]
    n_params = sum(int(np.prod(s)) for s in shapes)

    def parameter_sized(optimizer):
        optimizer.build(variables)
        return sum(int(np.prod(v.shape)) for v in optimizer.variables if len(v.shape))

    assert parameter_sized(keras.optimizers.Adam()) == 2 * n_params
    assert parameter_sized(SNRAdam()) == 3 * n_params
    names = [v.name for v in SNRAdam().variables]
    assert names == ["iteration", "learning_rate"]


def test_slots_of_16_bit_variables_are_float32():
    variable = keras.Variable(np.ones((3,), "float32"), dtype="bfloat16")
    optimizer = SNRAdam()
    optimizer.build([variable])
    for slots in (optimizer._momentums, optimizer._velocities, optimizer._noise_variances):
        assert keras.backend.standardize_dtype(slots[0].dtype) == "float32"


# ----------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(learning_rate=-1e-3), "`learning_rate` must be in [0, inf); received learning_rate=-0.001"),
        (dict(beta_1=1.0), "`beta_1` must be in [0, 1); received beta_1=1.0"),
        (dict(beta_1=-0.1), "`beta_1` must be in [0, 1)"),
        (dict(beta_2=1.5), "`beta_2` must be in [0, 1); received beta_2=1.5"),
        (dict(rho=1.5), "`rho` must be in [0, 1); received rho=1.5"),
        (dict(rho=-0.5), "`rho` must be in [0, 1)"),
        (dict(epsilon=0.0), "`epsilon` must be in (0, inf); received epsilon=0.0"),
        (dict(softness=-1.0), "`softness` must be in [0, inf); received softness=-1.0"),
        (dict(alpha=-0.1), "`alpha` must be in [0, inf); received alpha=-0.1"),
        (dict(weight_decay=-0.1), "`weight_decay` must be in [0, inf)"),
        (dict(gate="sigmoid"), "`gate` must be one of ('snr', 'soft', 'hard', None); received gate='sigmoid'"),
        (dict(reduction="global"), "`reduction` must be one of ('elementwise', 'per_tensor'); received reduction='global'"),
        (dict(alpha="1"), "`alpha` must be a number; received alpha='1'"),
    ],
)
def test_invalid_hyperparameters_raise(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        SNRAdam(**kwargs)
    assert fragment in str(info.value)


def test_finite_dataset_alpha():
    assert keras_snr.finite_dataset_alpha(512, 2352) == pytest.approx(512 / 1840)
    assert keras_snr.finite_dataset_alpha(64, 1000, gradient_accumulation_steps=4) == pytest.approx(
        256 / 744
    )
    with pytest.raises(ValueError, match=r"must be smaller than `dataset_size`.*batch_size=100"):
        keras_snr.finite_dataset_alpha(100, 100)
    with pytest.raises(ValueError, match="effective batch size"):
        keras_snr.finite_dataset_alpha(64, 200, gradient_accumulation_steps=4)
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer; received batch_size=0"):
        keras_snr.finite_dataset_alpha(0, 100)
    with pytest.raises(ValueError, match="`dataset_size` must be a positive integer"):
        keras_snr.finite_dataset_alpha(10, 12.5)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("gate", ["snr", "soft", "hard"])
@pytest.mark.parametrize("epsilon", [1e-20, 1e-30])
def test_tiny_epsilon_with_zero_gradients_stays_finite(gate, epsilon, path):
    # Failed before keras_snr took the gate's stabiliser as at least the
    # smallest normal float: epsilon**2 underflowed, the gate computed 0/0 on
    # exactly-zero gradients and the weights became NaN (snr and soft gates).
    # Keras Adam with the same epsilon trains; the reference says q = 0 there.
    variable = keras.Variable(np.ones(4, "float32"))
    optimizer = _make(dict(gate=gate, epsilon=epsilon), weight_decay=0.01, path=path)
    optimizer.learning_rate = 0.1
    grad = keras.ops.convert_to_tensor(np.array([1.0, 0.5, 0.0, 0.0], "float32"))
    for _ in range(3):
        optimizer.apply([grad], [variable])
    w = keras.ops.convert_to_numpy(variable)
    assert np.all(np.isfinite(w)), w
    np.testing.assert_allclose(w[2:], (1 - 0.1 * 0.01) ** 3, rtol=1e-6)  # weight decay only


# ------------------------------------------- guarded private Keras/TF API
# keras_snr reads three private APIs, each because a measurement showed it
# pays (see the modules); each has a fallback, tested here by removing it.


def test_docstring_without_keras_private_argument_text(monkeypatch):
    from keras_snr import snr_adam

    monkeypatch.delattr(keras.src.optimizers.optimizer, "base_optimizer_keyword_args")
    text = snr_adam._base_optimizer_args_doc()
    assert text == snr_adam._BASE_ARGS_FALLBACK
    assert "{{" not in SNRAdam.__doc__ and "gradient_accumulation_steps" in SNRAdam.__doc__


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's XLA-context check")
def test_without_tf_xla_context_check_the_update_is_nested_and_still_right(monkeypatch):
    import sys

    import tensorflow as tf

    from keras_snr import snr_adam

    monkeypatch.setitem(sys.modules, "tensorflow.python.ops.control_flow_util", None)
    assert snr_adam._in_xla_context() is False  # the import fails: fall back
    rng = np.random.default_rng(0)
    initial = [rng.normal(size=s).astype("float32") for s in SHAPES]
    results = []
    for fused in (True, False):
        variables = [keras.Variable(w) for w in initial]
        optimizer = SNRAdam(learning_rate=LR, fused=fused)
        step = tf.function(lambda g: optimizer.apply(g, variables), jit_compile=True)
        for grads in _gradients(np.random.default_rng(1), 5):
            step([tf.constant(g) for g in grads])
        results.append([keras.ops.convert_to_numpy(v) for v in variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(BACKEND != "torch", reason="torch fast path")
def test_torch_fast_path_without_keras_stateless_scope_check(monkeypatch):
    from keras_snr import _torch_fast_path

    monkeypatch.setattr(_torch_fast_path, "in_stateless_scope", None)
    calls = []
    monkeypatch.setattr(_torch_fast_path, "update", lambda *a: calls.append(a))
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in SHAPES]
    grads = [keras.ops.convert_to_tensor(g) for g in _gradients(rng, 1)[0]]
    SNRAdam(learning_rate=LR).apply(grads, variables)
    assert calls == []  # the generic path ran instead


@pytest.mark.skipif(BACKEND != "torch", reason="torch fast path")
def test_torch_fast_path_reads_value_when_private_attribute_is_gone():
    import torch

    from keras_snr import _torch_fast_path

    class Public:  # a variable-like object with only the public property
        value = torch.ones(3)

    assert _torch_fast_path._tensor(Public()) is Public.value
    variable = keras.Variable(np.ones(3, "float32"))
    assert _torch_fast_path._tensor(variable) is variable.value


# ------------------------------------------- the compiled torch update


def _run_steps(optimizer, steps=4, seed=0):
    rng = np.random.default_rng(seed)
    variables = [
        keras.Variable(rng.normal(size=s).astype("float32"), name=n) for s, n in zip(SHAPES, NAMES)
    ]
    for grads in _gradients(rng, steps):
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    return [keras.ops.convert_to_numpy(v) for v in variables]


def _decaying(**kwargs):
    optimizer = SNRAdam(**{"learning_rate": LR, "weight_decay": 0.1, **kwargs})
    optimizer.exclude_from_weight_decay(var_names=["nodecay"])
    return optimizer


@pytest.mark.skipif(BACKEND != "torch", reason="torch fast path")
def test_torch_compiled_update_not_recompiled_by_lr_schedule(monkeypatch):
    """A learning-rate schedule changes the rate every step without a
    recompile; the result equals the eager kernels'."""
    schedule = keras.optimizers.schedules.ExponentialDecay(LR, decay_steps=1, decay_rate=0.5)
    with compiled_torch_update(monkeypatch, "aot_eager"):
        compiled = _run_steps(_decaying(learning_rate=schedule), steps=6)
    eager = _run_steps(_decaying(learning_rate=schedule), steps=6)
    for a, b in zip(compiled, eager):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(BACKEND != "torch", reason="torch fast path")
@pytest.mark.parametrize("where", ["torch.compile", "first call"])
def test_torch_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch, where):
    import torch

    from keras_snr import _torch_fast_path

    monkeypatch.setattr(_torch_fast_path, "COMPILE_DEVICES", ("cpu",))
    monkeypatch.setattr(_torch_fast_path, "COMPILE_MIN_SIZE", 1)

    def broken(*args, **kwargs):
        if where == "torch.compile":
            raise RuntimeError("no compiler here")

        def fails(*a, **k):
            raise RuntimeError("no compiler here")

        return fails

    monkeypatch.setattr(torch, "compile", broken)
    optimizer = _decaying()
    with pytest.warns(RuntimeWarning, match=r"compiling the fused torch update failed \(RuntimeError: no compiler here\)") as record:
        got = _run_steps(optimizer)
    assert len([w for w in record if "compiling" in str(w.message)]) == 1
    assert _torch_fast_path.compile_status(optimizer).startswith("eager (compiling failed")
    monkeypatch.setattr(_torch_fast_path, "COMPILE_DEVICES", ())
    want = _run_steps(_decaying())
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(BACKEND != "torch", reason="torch fast path")
def test_torch_compile_turned_off_by_environment(monkeypatch):
    import torch

    from keras_snr import _torch_fast_path

    monkeypatch.setattr(_torch_fast_path, "COMPILE_DEVICES", ("cpu",))
    monkeypatch.setenv("KERAS_SNR_TORCH_COMPILE", "0")
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled"))
    optimizer = _decaying()
    _run_steps(optimizer, steps=2)
    assert _torch_fast_path.compile_status(optimizer) == "eager"


@pytest.mark.skipif(BACKEND != "torch", reason="torch fast path")
def test_torch_weight_decay_when_fast_path_does_not_apply():
    """`fused=True` leaves the weight decay to the fast path; where that path
    does not run (variables of two dtypes), Keras's own decay still runs."""
    rng = np.random.default_rng(0)
    initial = [rng.normal(size=(4, 3)), rng.normal(size=(3,))]
    results = []
    for fused in (True, False):
        variables = [
            keras.Variable(initial[0].astype("float32")),
            keras.Variable(initial[1].astype("float64"), dtype="float64"),
        ]
        optimizer = SNRAdam(learning_rate=0.1, weight_decay=0.5, fused=fused)
        grads = [np.zeros((4, 3), "float32"), np.zeros((3,), "float64")]
        for _ in range(3):
            optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        results.append([keras.ops.convert_to_numpy(v) for v in variables])
    for a, b, w in zip(*results, initial):
        np.testing.assert_allclose(a, b, rtol=1e-6)
        np.testing.assert_allclose(a, w * (1 - 0.05) ** 3, rtol=1e-6)  # decay only


@pytest.mark.skipif(BACKEND != "torch", reason="torch fast path")
def test_torch_compiled_update_per_optimizer_beyond_dynamo_recompile_limit(monkeypatch):
    """More optimizers in one process than dynamo compiles one function for
    (8): each still compiles its own update once and none falls back."""
    import torch

    from keras_snr import _torch_fast_path

    limit = torch._dynamo.config.recompile_limit
    with compiled_torch_update(monkeypatch, "eager", min_size=1):
        optimizers = []
        for i in range(limit + 2):
            variable = keras.Variable(np.ones((i + 1, 2), "float32"))
            optimizer = SNRAdam(alpha=0.1 * (i + 1))
            for _ in range(2):
                optimizer.apply([keras.ops.ones((i + 1, 2))], [variable])
            optimizers.append(optimizer)
        assert [_torch_fast_path.compile_status(o) for o in optimizers] == ["compiled"] * (limit + 2)
