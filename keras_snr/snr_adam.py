"""SNR-Adam: Adam that updates each coordinate only as far as its signal
beats its noise.

The whole update rule lives in `SNRAdam.update_step` (and, for speed on the
torch backend, in `_torch_fast_path.py`, which implements the same math and is
checked against the same NumPy reference in `tests/`).
"""

import contextlib
import math
import numbers

import keras
from keras import ops

GATES = ("snr", "soft", "hard", None)
REDUCTIONS = ("elementwise", "per_tensor")

# Optimizer state is saved by position. This number is saved with the state
# and checked on load; bump it whenever the slot layout changes.
SLOT_LAYOUT_VERSION = 1
_SLOT_NAMES = ("momentum", "velocity", "noise_variance")


def finite_dataset_alpha(batch_size, dataset_size, gradient_accumulation_steps=None):
    """Noise coefficient `alpha` for training on a finite dataset.

    Returns `alpha = b / (n - b)`, where `b` is the number of examples behind
    one optimizer update and `n` the number of training examples. Pass the
    result as `SNRAdam(alpha=...)`.

    Why: the noise that limits generalisation is the error of the
    full-dataset gradient, of variance `sigma^2 / n`; the variance of a batch
    mean drawn from that dataset is about `sigma^2 / b * (n - b) / (n - 1)`.
    Their ratio is `b / (n - b)` (up to `(n - 1) / n`). Use `alpha=1` (the
    default) when every batch is a fresh draw (single pass, streaming data).

    Args:
        batch_size: Global batch size `b`: under data parallelism, the batch
            summed over all replicas (the `batch_size` you pass to `fit()`
            under `keras.distribution` or `tf.distribute`).
        dataset_size: Number of training examples `n`.
        gradient_accumulation_steps: If the optimizer accumulates gradients
            over `k` steps, one update sees `b * k` examples; pass `k` here.

    Returns:
        A Python float.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(
            "`batch_size` must be a positive integer; "
            f"received batch_size={batch_size!r}"
        )
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, numbers.Integral) or dataset_size < 1:
        raise ValueError(
            "`dataset_size` must be a positive integer; "
            f"received dataset_size={dataset_size!r}"
        )
    steps = gradient_accumulation_steps or 1
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(
            "`gradient_accumulation_steps` must be a positive integer or None; "
            f"received gradient_accumulation_steps={gradient_accumulation_steps!r}"
        )
    b = batch_size * steps
    if b >= dataset_size:
        raise ValueError(
            "The effective batch size (batch_size * gradient_accumulation_steps"
            f" = {b}) must be smaller than `dataset_size`; received "
            f"batch_size={batch_size}, gradient_accumulation_steps="
            f"{gradient_accumulation_steps}, dataset_size={dataset_size}. "
            "With full-batch training there is no minibatch noise to gate."
        )
    return b / (dataset_size - b)


def _check_range(name, value, low, high, low_closed=True, high_closed=False):
    """ValueError naming the argument, the allowed range and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number; received {name}={value!r}")
    ok_low = value >= low if low_closed else value > low
    ok_high = value <= high if high_closed else value < high
    if not (ok_low and ok_high):
        interval = (
            ("[" if low_closed else "(")
            + f"{low}, {high}"
            + ("]" if high_closed else ")")
        )
        raise ValueError(f"`{name}` must be in {interval}; received {name}={value!r}")


@keras.saving.register_keras_serializable(package="keras_snr")
class SNRAdam(keras.optimizers.Optimizer):
    """Adam whose step on each coordinate is gated by its gradient's SNR.

    From Litman & Guo, "A Theory of Generalization in Deep Learning"
    ([arXiv:2605.01172](https://arxiv.org/abs/2605.01172)), where it is
    called PRM: per coordinate, update only as far as the batch signal beats
    its leave-one-out noise. One parameter-sized slot more than Adam (the
    noise variance), three in all.

    Per variable, elementwise, at step `t`, with `g` the batch-mean gradient
    (after Keras's clipping and loss-scale removal):

    ```
    s <- rho * s + (1 - rho) * (g - m)**2     # m from before this step
    m <- beta_1 * m + (1 - beta_1) * g
    v <- beta_2 * v + (1 - beta_2) * g**2
    m_hat = m / (1 - beta_1**t)
    v_hat = v / (1 - beta_2**t)
    s_hat = s / (1 - rho**t)
    q = gate(m_hat**2, s_hat)                 # q = 1 on the first step
    w <- w - lr * q * m_hat / (sqrt(v_hat) + epsilon)
    ```

    and, as in `AdamW`, decoupled weight decay `w <- w - lr * wd * w` on
    every coordinate not excluded with `exclude_from_weight_decay`, applied
    by Keras before the update.

    Gates, with `lam = softness` and `e = epsilon**2`:

    - `"snr"` (default; smooth, never fully closed):
      `q = m_hat**2 / (m_hat**2 + lam * alpha * s_hat + e)`;
      with `softness=1`, `q = 1/2` exactly at the threshold
      `m_hat**2 = alpha * s_hat`.
    - `"soft"` (the paper's Algorithm 1): with `d = max(m_hat**2 - alpha *
      s_hat, 0)`, `q = d / (d + lam * s_hat + e)`; zero below the threshold.
    - `"hard"`: `q = 1 if m_hat**2 > alpha * s_hat else 0`.
    - `None`: `q = 1`, i.e. exactly AdamW; the statistics are still kept,
      so `keras_snr` callbacks can watch an ordinary Adam run.

    With `reduction="per_tensor"` each variable gets one gate, computed
    from `sum(m_hat**2)` and `sum(s_hat)` over the tensor.

    `alpha` is the noise coefficient. `alpha=1` when every batch is a fresh
    draw (single pass, streaming); on a finite dataset of `n` examples with
    (global) batch `b`, use `alpha = b / (n - b)`, which
    `keras_snr.finite_dataset_alpha(b, n)` computes. With
    `gradient_accumulation_steps=k` one update sees `b * k` examples: pass
    `k` to the helper too.

    What is reconstruction: the paper's text and code are not available to
    this project; the rule above follows the authors' README and public
    transcriptions of Algorithm 1. This project's own choices are: (1) the
    gate's stabiliser is `epsilon**2` (the gate compares squared gradients,
    so its stabiliser is in squared-gradient units; the gate then closes
    where `|m_hat|` is far below `epsilon`, just as Adam's step vanishes
    there); (2) the gate is fully open (`q = 1`) on the first step, where
    `s_hat == m_hat**2` holds identically and the gate would be decided by
    `alpha` and rounding alone, carrying no information about noise; (3)
    for `float16`/`bfloat16` variables the slots are kept in `float32`
    and all of the update is computed in `float32`, then cast; (4) the bias
    corrections `1 - beta**t` are computed as `-expm1(t * log(beta))`,
    exact to float32 rounding (`1 - 0.999**t` in float32 is off by 1e-5 of
    its value at small `t`, and in bfloat16 it is 0). `epsilon` is added to
    `sqrt(v_hat)`, as in `torch.optim.AdamW`; Keras's `Adam` adds it before
    bias correction instead, a difference of order `epsilon / sqrt(v_hat)`
    in the step.

    NaN or Inf gradients propagate into the slots and the weights, as with
    Keras `Adam`. Under a `mixed_float16` policy `compile()` wraps the
    optimizer in `keras.optimizers.LossScaleOptimizer`, which skips steps
    with non-finite gradients (weights and slots unchanged).

    Args:
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the value to use.
            Defaults to `0.001`.
        beta_1: Decay of the first-moment (momentum) estimate, in `[0, 1)`.
            Defaults to `0.9`.
        beta_2: Decay of the second-moment (velocity) estimate, in `[0, 1)`.
            Defaults to `0.999`.
        rho: Decay of the noise-variance estimate `s`, in `[0, 1)`. The
            estimate averages about `1 / (1 - rho)` steps. Defaults to `0.99`.
        epsilon: Positive constant added to `sqrt(v_hat)`; its square
            stabilises the gate. Defaults to `1e-8`.
        gate: One of `"snr"`, `"soft"`, `"hard"` or `None`. Defaults to
            `"snr"`.
        softness: `lam` above, `>= 0`; larger means a softer gate. The
            authors suggest sweeping 0.3, 1, 3, 10. Defaults to `1.0`.
        alpha: Noise coefficient, `>= 0`; `0` disables gating. See above and
            `keras_snr.finite_dataset_alpha`. Defaults to `1.0`.
        reduction: `"elementwise"` (one gate per coordinate) or
            `"per_tensor"` (one gate per variable; recommended by the authors
            for large generative models). Defaults to `"elementwise"`.
        weight_decay: Decoupled weight decay, as in `AdamW`. Defaults to
            `0.01`; `None` or `0` disables it.
        {{base_optimizer_keyword_args}}
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        rho=0.99,
        epsilon=1e-8,
        gate="snr",
        softness=1.0,
        alpha=1.0,
        reduction="elementwise",
        weight_decay=0.01,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        if isinstance(learning_rate, numbers.Real):
            _check_range("learning_rate", learning_rate, 0, float("inf"))
        _check_range("beta_1", beta_1, 0, 1)
        _check_range("beta_2", beta_2, 0, 1)
        _check_range("rho", rho, 0, 1)
        _check_range("epsilon", epsilon, 0, float("inf"), low_closed=False)
        _check_range("softness", softness, 0, float("inf"))
        _check_range("alpha", alpha, 0, float("inf"))
        if weight_decay is not None:
            _check_range("weight_decay", weight_decay, 0, float("inf"))
        if gate not in GATES:
            raise ValueError(
                f"`gate` must be one of {GATES}; received gate={gate!r}"
            )
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"`reduction` must be one of {REDUCTIONS}; "
                f"received reduction={reduction!r}"
            )
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.rho = float(rho)
        self.epsilon = float(epsilon)
        self.gate = gate
        self.softness = float(softness)
        self.alpha = float(alpha)
        self.reduction = reduction
        # Set to False to force the generic per-variable path on torch, or
        # the uncompiled update on TensorFlow.
        self.use_torch_fast_path = True
        self.xla_update_on_tensorflow = True

    # ------------------------------------------------------------------ state

    def build(self, var_list):
        """Create the layout marker and three slots per variable."""
        if self.built:
            return
        super().build(var_list)
        self._slot_layout_version = self.add_variable(
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(SLOT_LAYOUT_VERSION),
            name="slot_layout_version",
        )
        self._momentums, self._velocities, self._noise_variances = (
            [self._add_slot(v, name) if not self._overwrite_variable_with_gradient(v) else None
             for v in var_list]
            for name in _SLOT_NAMES
        )

    def _add_slot(self, variable, name):
        """A zero slot like `variable`, but float32 for 16-bit variables."""
        if _compute_dtype(variable.dtype) == variable.dtype:
            return self.add_variable_from_reference(variable, name=name)
        colocate = contextlib.nullcontext()
        if keras.backend.backend() == "tensorflow":
            colocate = self._distribution_strategy.extended.colocate_vars_with(
                variable.value
            )
        with colocate:
            return self.add_variable(
                shape=variable.shape,
                dtype="float32",
                name=f"{variable.path.replace('/', '_')}_{name}",
                layout=getattr(variable, "_layout", None),
            )

    # ----------------------------------------------------------- the update

    def update_step(self, gradient, variable, learning_rate):
        """One SNR-Adam step on one variable: read state, `_update`, write."""
        dtype = _compute_dtype(variable.dtype)
        index = self._get_variable_index(variable)
        slots = (
            self._momentums[index],
            self._velocities[index],
            self._noise_variances[index],
        )
        new_w, *new_slots = self._compiled_update()(
            ops.cast(_dense(gradient), dtype),
            ops.cast(variable, dtype),
            *slots,
            ops.cast(learning_rate, dtype),
            ops.cast(self.iterations + 1, "float32"),
        )
        for slot, value in zip(slots, new_slots):
            self.assign(slot, value)
        self.assign(variable, ops.cast(new_w, variable.dtype))

    def _update(self, g, w, m, v, s, lr, t):
        """The math of the docstring, as a pure function of tensors.

        Returns the new `(w, m, v, s)`. `t` is the 1-based step, float32.
        """
        dtype = w.dtype
        c1 = ops.cast(bias_correction(self.beta_1, t), dtype)
        c2 = ops.cast(bias_correction(self.beta_2, t), dtype)
        cs = ops.cast(bias_correction(self.rho, t), dtype)

        new_m = self.beta_1 * m + (1 - self.beta_1) * g
        # g - m (m from before this step), read off the new m: then nothing
        # reads the old m after the new one is written, and XLA updates the
        # donated momentum buffer in place instead of copying it first.
        # (Dividing by a small beta_1 would amplify rounding.)
        if self.beta_1 >= 0.5:
            delta = (g - new_m) / self.beta_1
        else:
            delta = g - m
        new_s = self.rho * s + (1 - self.rho) * ops.square(delta)
        new_v = self.beta_2 * v + (1 - self.beta_2) * ops.square(g)

        # The bias corrections are folded into scalars, so no corrected copy
        # of m, v or s is computed. Multiplying the gate's terms by c1**2:
        #     m_hat**2 vs s_hat    <=>   m**2 vs (c1**2 / cs) * s
        # and lr * m_hat / (sqrt(v_hat) + epsilon)
        #     = (lr * sqrt(c2) / c1) * m / (sqrt(v) + epsilon * sqrt(c2)).
        q = self._gate(
            ops.square(new_m), new_s, noise_scale=c1 * c1 / cs, stabiliser_scale=c1 * c1
        )
        q = ops.where(ops.equal(t, 1.0), ops.ones((), dtype), q)  # open on step 1
        sqrt_c2 = ops.sqrt(c2)
        step_size = lr * sqrt_c2 / c1
        new_w = w - step_size * q * new_m / (ops.sqrt(new_v) + self.epsilon * sqrt_c2)
        return new_w, new_m, new_v, new_s

    def _compiled_update(self):
        """`_update`, XLA-compiled on TensorFlow.

        Without XLA, TensorFlow runs each of the ~30 elementwise ops above as
        its own kernel, each reading and writing a parameter-sized tensor;
        compiled, they fuse into a few loops. (Inside a `jit_compile=True`
        step the inner compilation merges into the outer one.) JAX already
        compiles the whole step; torch has `_torch_fast_path`. Inside a
        step that is already XLA-compiled the plain function is used: a
        nested compiled call measured ~9 % slower there.
        """
        if (
            keras.backend.backend() != "tensorflow"
            or not self.xla_update_on_tensorflow
            or _in_xla_context()
        ):
            return self._update
        if getattr(self, "_xla_update", None) is None:
            import tensorflow as tf

            compiled = tf.function(self._update, jit_compile=True, reduce_retracing=True)

            def xla_update(*args):  # variables in, their values to XLA
                return compiled(*(tf.convert_to_tensor(x) for x in args))

            self._xla_update = xla_update
        return self._xla_update

    def _gate(self, signal, noise, noise_scale=1.0, stabiliser_scale=1.0):
        """q in [0, 1] from signal m_hat**2 and noise s_hat (see docstring).

        `update_step` passes the uncorrected m**2 and s with
        `noise_scale = c1**2 / cs` and `stabiliser_scale = c1**2`, which
        gives the same q.
        """
        if self.gate is None:
            return ops.ones((), signal.dtype)
        if self.reduction == "per_tensor":
            signal, noise = ops.sum(signal), ops.sum(noise)
        stabiliser = self.epsilon**2 * stabiliser_scale
        if self.gate == "snr":
            scale = self.softness * self.alpha * noise_scale
            return signal / (signal + scale * noise + stabiliser)
        if self.gate == "soft":
            excess = ops.relu(signal - (self.alpha * noise_scale) * noise)
            return excess / (excess + (self.softness * noise_scale) * noise + stabiliser)
        return ops.cast(ops.greater(signal, (self.alpha * noise_scale) * noise), signal.dtype)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() == "torch" and self.use_torch_fast_path:
            from keras_snr import _torch_fast_path

            if _torch_fast_path.supports(self, grads, trainable_variables):
                return _torch_fast_path.update(
                    self, grads, trainable_variables, learning_rate
                )
        return super()._backend_update_step(grads, trainable_variables, learning_rate)

    # ------------------------------------------------- saving and restoring

    def load_own_variables(self, store):
        """Restore state, refusing a slot layout this class did not write."""
        if self.built:
            _check_saved_layout(self, store)
        super().load_own_variables(store)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "rho": self.rho,
                "epsilon": self.epsilon,
                "gate": self.gate,
                "softness": self.softness,
                "alpha": self.alpha,
                "reduction": self.reduction,
            }
        )
        return config


def bias_correction(decay, t):
    """`1 - decay**t` for a float32 step `t`, without cancellation.

    Computed as `-expm1(t * log(decay))` with `log(decay)` in float64 on the
    host: in float32, `1 - 0.999**1` loses 1e-5 of its value to rounding (and
    in bfloat16, `0.999` itself rounds to 1, so Keras's own Adam makes no
    update at all on bfloat16 variables).
    """
    if decay == 0:
        return ops.ones_like(t)
    return -ops.expm1(t * math.log(decay))


def _in_xla_context():
    """Whether TensorFlow is tracing into an XLA-compiled function (the test
    TensorFlow's own `tf.function` uses; private API, so fail safe)."""
    try:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover
        return False
    try:
        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except Exception:  # pragma: no cover - internals moved: nesting is only slower
        return False


def _compute_dtype(dtype):
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def _dense(gradient):
    """TensorFlow hands Embedding gradients over as IndexedSlices; the noise
    statistic decays every coordinate, so the update is dense anyway."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return tf.convert_to_tensor(gradient)
    return gradient


def _check_saved_layout(optimizer, store):
    expected = len(optimizer.variables)
    found = len(store.keys())
    # By identity: Keras variables overload `==` elementwise.
    marker_index = next(
        i for i, v in enumerate(optimizer.variables)
        if v is optimizer._slot_layout_version
    )
    marker = store[str(marker_index)] if str(marker_index) in store.keys() else None
    marker_ok = (
        marker is not None
        and tuple(getattr(marker, "shape", (None,))) == ()
        and keras.backend.standardize_dtype(marker.dtype).startswith("int")
        and int(marker[()]) == SLOT_LAYOUT_VERSION
    )
    if found != expected or not marker_ok:
        raise ValueError(
            f"Cannot restore the state of SNRAdam optimizer '{optimizer.name}': "
            f"the saved optimizer state does not have SNRAdam's slot layout "
            f"version {SLOT_LAYOUT_VERSION} (expected {expected} variables: "
            "iterations, learning rate, layout marker and three slots per "
            f"trained variable; found {found}"
            + ("" if marker_ok else ", without a matching layout marker")
            + "). It was probably saved by another optimizer (e.g. Adam) or "
            "by another version of keras_snr. Loading it would silently "
            "restart the optimizer from step 0 or permute its state. Load "
            "the model with `compile=False` and compile it with a fresh "
            "SNRAdam to start the optimizer from scratch."
        )


if SNRAdam.__doc__ is not None:
    SNRAdam.__doc__ = SNRAdam.__doc__.replace(
        "{{base_optimizer_keyword_args}}",
        keras.src.optimizers.optimizer.base_optimizer_keyword_args,
    )
