"""SNR-Adam: Adam that moves each coordinate only as far as its gradient's
signal beats its noise.

`SNRAdam` is the optimizer, `finite_dataset_alpha` the noise coefficient for
a finite training set and `SNRStatistics` what `SNRAdam.statistics()`
returns. The update rule is `SNRAdam._update`, read top to bottom; the gate
formula is `keras_snr.gate.gate`. `_torch_fast_path.py` runs the same math
with multi-tensor kernels on PyTorch (compiled by `torch.compile` on CUDA)
and is checked against the same NumPy reference in the tests.
"""

import math
import numbers
from typing import Any
from typing import NamedTuple

import keras
from keras import ops

from keras_snr.gate import GATES
from keras_snr.gate import gate as gate_fn

REDUCTIONS = ("elementwise", "per_tensor")

# Optimizer state is saved by position. This number is saved with the state
# and checked on load; bump it whenever the slot layout changes.
SLOT_LAYOUT_VERSION = 1
"""The layout of `SNRAdam`'s saved state, stored with it and checked on load.

An `SNRAdam` keeps, after the iteration count and the learning rate, this
number and three slots per trained variable (`momentum`, `velocity`,
`noise_variance`, float32 for 16-bit variables). Loading a state whose
layout differs (another optimizer's, or another version's) raises a
`ValueError` instead of silently restarting the optimizer or permuting its
state.
"""
_SLOT_NAMES = ("momentum", "velocity", "noise_variance")


class SNRStatistics(NamedTuple):
    """What `SNRAdam` knows about a variable after its last update.

    Returned by `SNRAdam.statistics()`. All four are bias-corrected, as of
    the last update:

    ```
    momentum       = m_hat = m / (1 - beta_1**t)
    velocity       = v_hat = v / (1 - beta_2**t)
    noise_variance = s_hat = s / (1 - rho**t)
    gate           = q     = gate(m_hat**2, s_hat)    # 1 on the first step
    ```

    For one variable, each field is a tensor shaped like it (float32 for
    16-bit variables; `gate` is a scalar with `reduction="per_tensor"`);
    for all variables, each field is a list with one tensor per variable.

    Attributes:
        momentum: `m_hat`, the running mean of the gradient.
        velocity: `v_hat`, the running mean of the squared gradient.
        noise_variance: `s_hat`, the running variance of the batch gradient
            around the momentum.
        gate: `q`, the gate the last update applied.

    Example:

    ```python
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    optimizer = keras_snr.SNRAdam()
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.random.rand(256, 8), np.random.rand(256, 1), batch_size=32, verbose=0)

    stats = optimizer.statistics(model.layers[0].kernel)
    print(tuple(stats.gate.shape))  # (8, 1): one gate per weight
    snr = keras.ops.square(stats.momentum) / (stats.noise_variance + 1e-12)
    ```
    """

    momentum: Any
    velocity: Any
    noise_variance: Any
    gate: Any


@keras.saving.register_keras_serializable(package="keras_snr")
class SNRAdam(keras.optimizers.Optimizer):
    """Optimizer that implements Adam with a per-coordinate SNR gate.

    SNR-Adam moves each coordinate only as far as the signal of its batch
    gradient beats the gradient's noise (Litman & Guo, 2026, where the
    optimizer is called PRM). Next to Adam's momentum `m` and velocity `v` it
    keeps one slot more per variable, the noise variance `s`: how much the
    batch gradient scatters around `m`. The gate `q` is near 1 where
    `m_hat**2` dominates `alpha * s_hat` and near 0 where the noise does;
    `gate=None` is exactly AdamW.

    Per variable, at step `t`, with `g` the batch gradient:

    ```
    s <- rho * s + (1 - rho) * (g - m)**2      # m from before this step
    m <- beta_1 * m + (1 - beta_1) * g
    v <- beta_2 * v + (1 - beta_2) * g**2
    m_hat = m / (1 - beta_1**t)
    v_hat = v / (1 - beta_2**t)
    s_hat = s / (1 - rho**t)
    q = gate(m_hat**2, s_hat)                  # q = 1 on the first step
    w <- w - learning_rate * q * m_hat / (sqrt(v_hat) + epsilon)
    ```

    with decoupled weight decay (as in `keras.optimizers.AdamW`) applied
    before the update. The default gate, `gate="snr"`, is

    ```
    q = m_hat**2 / (m_hat**2 + softness * alpha * s_hat + epsilon**2)
    ```

    `"soft"`, `"hard"` and `None` are defined in `keras_snr.gate.gate`.
    `statistics()` and `gate_summary()` read the state back. The derivation,
    what is reconstructed from the paper and how to choose `alpha` are in
    `docs/method.md` of the source repository.

    Args:
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the value to use.
            Defaults to `0.001`.
        beta_1: Float in `[0, 1)`. Decay rate of the momentum `m`.
            Defaults to `0.9`.
        beta_2: Float in `[0, 1)`. Decay rate of the velocity `v`.
            Defaults to `0.999`.
        rho: Float in `[0, 1)`. Decay rate of the noise variance `s`, which
            averages over about `1 / (1 - rho)` steps. Defaults to `0.99`.
        epsilon: Float `> 0`. Added to `sqrt(v_hat)`; its square stabilises
            the gate. Defaults to `1e-8`.
        gate: `"snr"`, `"soft"`, `"hard"` or `None` (no gate: AdamW).
            Defaults to `"snr"`.
        softness: Float `>= 0`. In `"snr"` it multiplies `alpha` (moves the
            gate's midpoint); in `"soft"` it sets how slowly `q` rises above
            the threshold. Defaults to `1.0`.
        alpha: Float `>= 0`. The noise coefficient: `1` when every batch is
            a fresh draw, `keras_snr.finite_dataset_alpha(b, n)` for a
            finite training set. `0` opens the `"hard"` gate and (up to
            `epsilon`) the `"snr"` gate. Defaults to `1.0`.
        reduction: `"elementwise"` (one gate per coordinate) or
            `"per_tensor"` (one gate per variable, from `sum(m_hat**2)` and
            `sum(s_hat)`). Defaults to `"elementwise"`.
        weight_decay: Float or `None`. Decoupled weight decay.
            Defaults to `0.01`.
        fused: Boolean. Whether to run the update with the backend's fast
            implementation: one XLA-compiled function per variable on
            TensorFlow (unless the step is already XLA-compiled); on
            PyTorch, all variables at once as multi-tensor
            `torch._foreach_*` kernels, and on CUDA compiled by
            `torch.compile` into fused kernels for the variables of 65,536
            elements or more (the first step compiles;
            `KERAS_SNR_TORCH_COMPILE=0` turns compiling off). No effect on
            JAX. `False` runs the plain `keras.ops` math; results agree to
            float rounding. Defaults to `True`.
        clipnorm: Float or `None`. If set, the gradient of each variable is
            clipped so that its norm is no higher than this value.
        clipvalue: Float or `None`. If set, each gradient is clipped to
            `[-clipvalue, clipvalue]`.
        global_clipnorm: Float or `None`. If set, all gradients are clipped
            together so that their global norm is no higher than this value.
        use_ema: Boolean. Whether to keep an exponential moving average of
            the weights. Defaults to `False`.
        ema_momentum: Float. Momentum of that moving average, used if
            `use_ema=True`. Defaults to `0.99`.
        ema_overwrite_frequency: Int or `None`. Every this many iterations
            the weights are overwritten with their moving average (`None`:
            at the end of `fit()`), used if `use_ema=True`.
        loss_scale_factor: Float or `None`. If set, the loss is multiplied
            by it and the gradients by its inverse (mixed precision).
        gradient_accumulation_steps: Int or `None`. If set, the variables
            are updated every this many steps, with the mean of the
            gradients since the last update.
        name: String. The name of the optimizer.

    Example:

    ```python
    x = np.random.rand(1000, 8)
    y = x @ np.random.rand(8, 1) + 0.1 * np.random.normal(size=(1000, 1))
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    optimizer = keras_snr.SNRAdam(
        learning_rate=1e-2,
        # 1000 training examples, batches of 32.
        alpha=keras_snr.finite_dataset_alpha(batch_size=32, dataset_size=1000),
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    print(optimizer.gate_summary())  # {"gate_mean": ..., "gate_open_fraction": ...}
    ```

    Reference:
        - [Litman & Guo, 2026](https://arxiv.org/abs/2605.01172)
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
        fused=True,
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
            raise ValueError(f"`gate` must be one of {GATES}; received gate={gate!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"`reduction` must be one of {REDUCTIONS}; received reduction={reduction!r}"
            )
        if not isinstance(fused, bool):
            raise ValueError(f"`fused` must be True or False; received fused={fused!r}")
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
        self.fused = fused
        # Variables that exist before `build()` (iterations, learning rate):
        # all that an optimizer saved before its first step holds.
        self._unbuilt_variable_count = len(self.variables)
        self._xla_update = None
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # For colocating float32 slots of 16-bit variables (as Keras
            # does for its own slots), from the strategy in scope now.
            self._slot_strategy = tf.distribute.get_strategy()

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
        # No slots for variables Keras overwrites with their gradient (as
        # Keras's own optimizers; read directly, for Keras < 3.10).
        self._momentums, self._velocities, self._noise_variances = (
            [
                None if getattr(v, "overwrite_with_gradient", False) else self._add_slot(v, name)
                for v in var_list
            ]
            for name in _SLOT_NAMES
        )
        if self.fused and keras.backend.backend() == "tensorflow":
            self._xla_update = _xla_compiled(self._update)

    def _add_slot(self, variable, name):
        """A zero slot like `variable`, but float32 for 16-bit variables."""
        if _compute_dtype(variable.dtype) == variable.dtype:
            return self.add_variable_from_reference(variable, name=name)

        layout = getattr(variable, "_layout", None)  # the variable's sharding

        def add():
            return self.add_variable(
                shape=variable.shape,
                dtype="float32",
                name=f"{variable.path.replace('/', '_')}_{name}",
                # `layout` only when there is one (Keras < 3.10 lacks it).
                **({} if layout is None else {"layout": layout}),
            )

        if keras.backend.backend() != "tensorflow":
            return add()
        with self._slot_strategy.extended.colocate_vars_with(variable.value):
            return add()

    # ----------------------------------------------------------- the update

    def update_step(self, gradient, variable, learning_rate):
        """One SNR-Adam step on one variable: read the state, `_update`, write."""
        index = self._get_variable_index(variable)
        m = self._momentums[index]
        v = self._velocities[index]
        s = self._noise_variances[index]
        dtype = _compute_dtype(variable.dtype)
        inputs = (
            ops.cast(_dense(gradient), dtype),
            ops.cast(variable, dtype),
            m,
            v,
            s,
            ops.cast(learning_rate, dtype),
            ops.cast(self.iterations + 1, "float32"),
        )
        # On TensorFlow (fused=True), the same `_update` compiled by XLA,
        # except inside a step XLA already compiles (nesting measured ~9 %
        # slower there).
        if self._xla_update is not None and not _in_xla_context():
            new_w, new_m, new_v, new_s = self._xla_update(*inputs)
        else:
            new_w, new_m, new_v, new_s = self._update(*inputs)
        self.assign(m, new_m)
        self.assign(v, new_v)
        self.assign(s, new_s)
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
        # of m, v or s is made. Multiplying the gate's terms by c1**2:
        #     m_hat**2 vs s_hat    <=>   m**2 vs (c1**2 / cs) * s
        # and lr * m_hat / (sqrt(v_hat) + epsilon)
        #     = (lr * sqrt(c2) / c1) * m / (sqrt(v) + epsilon * sqrt(c2)).
        q = self._gate_of(new_m, new_s, c1, cs)
        q = ops.where(ops.equal(t, 1.0), ops.ones((), dtype), q)  # open on step 1
        sqrt_c2 = ops.sqrt(c2)
        step_size = lr * sqrt_c2 / c1
        new_w = w - step_size * q * new_m / (ops.sqrt(new_v) + self.epsilon * sqrt_c2)
        return new_w, new_m, new_v, new_s

    def _gate_of(self, m, s, c1, cs):
        """The gate from the raw slots `m`, `s` and bias corrections `c1`, `cs`
        (scaled by `c1**2`: see `_update`), with this optimizer's settings."""
        signal, noise = ops.square(m), s
        if self.reduction == "per_tensor":
            signal, noise = ops.sum(signal), ops.sum(noise)
        return gate_fn(
            signal,
            noise,
            self.gate,
            alpha=self.alpha,
            softness=self.softness,
            stabiliser=self.epsilon**2 * c1 * c1 + _tiny(m.dtype),
            noise_scale=c1 * c1 / cs,
        )

    def _apply_weight_decay(self, variables):
        # On torch with `fused=True` the decay is left to the update that
        # Keras runs right after this (`_backend_update_step`), so that the
        # compiled update can fuse it instead of making a pass of its own.
        if self.fused and keras.backend.backend() == "torch":
            self._deferred_weight_decay = self.weight_decay is not None
            return
        super()._apply_weight_decay(variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if self.fused and keras.backend.backend() == "torch":
            from keras_snr import _torch_fast_path

            decay = self.__dict__.pop("_deferred_weight_decay", False)
            if _torch_fast_path.supports(self, grads, trainable_variables):
                return _torch_fast_path.update(
                    self, grads, trainable_variables, learning_rate, decay=decay
                )
            if decay:
                super()._apply_weight_decay(trainable_variables)
        return super()._backend_update_step(grads, trainable_variables, learning_rate)

    # -------------------------------------------------------- the statistics

    def statistics(self, variable=None):
        """Returns the bias-corrected statistics, as of the last update.

        For each variable, `SNRStatistics(momentum, velocity,
        noise_variance, gate)`: `m_hat`, `v_hat`, `s_hat` and the gate `q`
        the last update applied (`1` on the first step; a scalar per
        variable with `reduction="per_tensor"`). Before the first update
        the moments are zero and the gate is 1. The tensors are new:
        writing to them does not change the optimizer.

        Under `stateless_apply` (JAX), call it inside
        `keras.StatelessScope(state_mapping=zip(optimizer.variables,
        optimizer_values))` to read those values.

        Args:
            variable: One variable the optimizer trains. If `None`, every
                field is a list over the variables the optimizer was built
                with, in that order (`None` for a variable overwritten with
                its gradient, which has no statistics).

        Returns:
            An `SNRStatistics`.

        Example:

        ```python
        stats = optimizer.statistics(model.layers[0].kernel)
        print(tuple(stats.gate.shape))  # the kernel's shape
        all_stats = optimizer.statistics()  # lists, one entry per variable
        ```
        """
        if not self.built:
            raise ValueError(
                "SNRAdam.statistics() needs a built optimizer: call it after "
                "the first training step or `optimizer.build(variables)`."
            )
        if variable is None:
            per_variable = [
                None if m is None else self._statistics_of(i)
                for i, m in enumerate(self._momentums)
            ]
            return SNRStatistics(
                *([None if x is None else x[k] for x in per_variable] for k in range(4))
            )
        try:
            index = self._get_variable_index(variable)
        except KeyError:
            raise ValueError(
                f"Variable '{getattr(variable, 'path', variable)}' is not one "
                f"that optimizer '{self.name}' trains."
            ) from None
        if self._momentums[index] is None:
            raise ValueError(
                f"Variable '{variable.path}' is overwritten with its gradient "
                "(`overwrite_with_gradient`); SNRAdam keeps no statistics for it."
            )
        return self._statistics_of(index)

    def gate_summary(self):
        """Returns the gate over all trained coordinates, as of the last update.

        Two scalar tensors, in a dict:

        - `"gate_mean"`: the mean gate `q` (`1` is Adam: the step is `q`
          times Adam's);
        - `"gate_open_fraction"`: the fraction of coordinates whose signal
          beats the threshold, `m_hat**2 > alpha * s_hat` (summed per tensor
          with `reduction="per_tensor"`), whatever the gate: where the hard
          gate opens and the `"snr"` gate with `softness=1` exceeds 1/2
          (except on the first step, where every gate is open).

        It is a few elementwise passes over the slots.
        `keras_snr.GateLogger` logs both during `fit()`, once per epoch.

        Returns:
            A dict with the keys `"gate_mean"` and `"gate_open_fraction"`.

        Example:

        ```python
        summary = optimizer.gate_summary()
        print(float(summary["gate_mean"]), float(summary["gate_open_fraction"]))
        ```
        """
        q_sum, open_sum, count = self._gate_sums()
        return {"gate_mean": q_sum / count, "gate_open_fraction": open_sum / count}

    def _statistics_of(self, index):
        m = self._momentums[index]
        v = self._velocities[index]
        s = self._noise_variances[index]
        dtype = keras.backend.standardize_dtype(m.dtype)
        # The slots belong to step t = iterations; t >= 1 keeps the bias
        # corrections defined before the first update (the slots are 0).
        t = ops.maximum(ops.cast(self.iterations, "float32"), 1.0)
        c1 = ops.cast(bias_correction(self.beta_1, t), dtype)
        c2 = ops.cast(bias_correction(self.beta_2, t), dtype)
        cs = ops.cast(bias_correction(self.rho, t), dtype)
        q = ops.cast(self._gate_of(m, s, c1, cs), dtype)
        q = ops.where(ops.less_equal(t, 1.0), ops.ones((), dtype), q)
        if self.reduction == "elementwise":
            q = ops.broadcast_to(q, m.shape)
        return SNRStatistics(m / c1, v / c2, s / cs, q)

    def _gate_sums(self):
        """(sum of q, number of open coordinates, number of coordinates)."""
        q_sum = open_sum = 0.0
        count = 0
        for index, m in enumerate(self._momentums):
            if m is None:
                continue
            stats = self._statistics_of(index)
            signal, noise = ops.square(stats.momentum), stats.noise_variance
            size = math.prod(m.shape)
            if self.reduction == "per_tensor":  # one gate per tensor
                is_open = ops.greater(ops.sum(signal), self.alpha * ops.sum(noise))
                q_sum = q_sum + ops.cast(stats.gate, "float32") * size
                open_sum = open_sum + ops.cast(is_open, "float32") * size
            else:
                is_open = ops.greater(signal, self.alpha * noise)
                q_sum = q_sum + ops.sum(ops.cast(stats.gate, "float32"))
                open_sum = open_sum + ops.sum(ops.cast(is_open, "float32"))
            count += size
        return q_sum, open_sum, max(count, 1)

    # ------------------------------------------------- saving and restoring

    def load_own_variables(self, store):
        """Restore state, refusing a slot layout this class did not write.

        A state saved before the first update (iterations and learning rate
        only) carries no slots: it is restored as a fresh start.
        """
        saved_before_first_update = (
            len(store.keys()) == self._unbuilt_variable_count
            and int(store["0"][()]) == 0  # iterations
        )
        if self.built and saved_before_first_update:
            for i in range(self._unbuilt_variable_count):
                self.variables[i].assign(store[str(i)])
            return
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
                "fused": self.fused,
            }
        )
        return config


def finite_dataset_alpha(batch_size, dataset_size, gradient_accumulation_steps=None):
    """Returns the noise coefficient `alpha` for a finite training set.

    Pass the result as `SNRAdam(alpha=...)`. With `b` the number of examples
    behind one optimizer update and `n` the number of training examples:

    ```
    alpha = b / (n - b)
    ```

    The noise that limits generalisation is the error of the full-dataset
    gradient, of variance `sigma**2 / n`; a batch mean drawn from the
    dataset has variance about `sigma**2 / b * (n - b) / (n - 1)`. Their
    ratio is `b / (n - b)` up to a factor `(n - 1) / n`. Use `alpha=1` when
    every batch is a fresh draw (streaming data).

    Args:
        batch_size: Int. The global batch size `b` (summed over replicas
            under data parallelism).
        dataset_size: Int. The number of training examples `n`; larger than
            the effective batch size.
        gradient_accumulation_steps: Int or `None`. With gradient
            accumulation over `k` steps one update sees `b * k` examples;
            pass `k`.

    Returns:
        A Python float.

    Example:

    ```python
    alpha = keras_snr.finite_dataset_alpha(batch_size=128, dataset_size=60_000)
    print(round(alpha, 5))  # 0.00214, 128 / 59872
    optimizer = keras_snr.SNRAdam(alpha=alpha)
    ```
    """
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("dataset_size", dataset_size)
    if gradient_accumulation_steps is not None:
        _check_positive_int("gradient_accumulation_steps", gradient_accumulation_steps, "or None")
    b = batch_size * (gradient_accumulation_steps or 1)
    if b >= dataset_size:
        raise ValueError(
            "The effective batch size (batch_size * gradient_accumulation_steps"
            f" = {b}) must be smaller than `dataset_size`; received "
            f"batch_size={batch_size}, gradient_accumulation_steps="
            f"{gradient_accumulation_steps}, dataset_size={dataset_size}. "
            "With full-batch training there is no minibatch noise to gate."
        )
    return b / (dataset_size - b)


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


# ------------------------------------------------------------------ helpers


def _check_range(name, value, low, high, low_closed=True, high_closed=False):
    """ValueError naming the argument, the allowed range and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number; received {name}={value!r}")
    ok_low = value >= low if low_closed else value > low
    ok_high = value <= high if high_closed else value < high
    if not (ok_low and ok_high):
        interval = ("[" if low_closed else "(") + f"{low}, {high}" + ("]" if high_closed else ")")
        raise ValueError(f"`{name}` must be in {interval}; received {name}={value!r}")


def _check_positive_int(name, value, alternative=""):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        suffix = f" {alternative}" if alternative else ""
        raise ValueError(
            f"`{name}` must be a positive integer{suffix}; received {name}={value!r}"
        )


def _tiny(dtype):
    """Smallest normal number of `dtype`: the gate's stabiliser never drops
    below it, so a tiny `epsilon` (whose square underflows) with a zero
    gradient gives q = 0 / tiny = 0 instead of 0 / 0."""
    return 2.0**-1022 if keras.backend.standardize_dtype(dtype) == "float64" else 2.0**-126


def _compute_dtype(dtype):
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def _dense(gradient):
    """Sparse gradients (TensorFlow's `IndexedSlices` for embeddings and
    `SparseTensor`, JAX's `BCOO`) as dense tensors: the noise statistic
    decays every coordinate, so the update is dense anyway."""
    if not _is_sparse(gradient):
        return gradient
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):  # keras.ops keeps these sparse
            return tf.convert_to_tensor(gradient)
    return ops.convert_to_tensor(gradient, sparse=False)


def _is_sparse(x):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return isinstance(x, (tf.IndexedSlices, tf.SparseTensor))
    if backend == "jax":
        from jax.experimental import sparse as jax_sparse

        return isinstance(x, jax_sparse.JAXSparse)
    return False


def _xla_compiled(update):
    """`update` as one XLA-compiled TensorFlow function.

    Without XLA, TensorFlow runs each of the ~30 elementwise ops of the
    update as its own kernel, each reading and writing a parameter-sized
    tensor; compiled, they fuse into a few loops.
    """
    import tensorflow as tf

    compiled = tf.function(update, jit_compile=True, reduce_retracing=True)

    def call(*args):  # Keras variables in; XLA takes their values
        return compiled(*(tf.convert_to_tensor(x) for x in args))

    return call


def _in_xla_context():
    """Whether TensorFlow is tracing into an XLA-compiled function.

    The check TensorFlow's own `tf.function` uses. It is private API: if it
    has moved, this returns False and the compiled update is nested inside
    the compiled step, which is only slower (tested).
    """
    try:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util

        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except Exception:
        return False


def _check_saved_layout(optimizer, store):
    expected = len(optimizer.variables)
    found = len(store.keys())
    # By identity: Keras variables overload `==` elementwise.
    marker_index = next(
        i for i, v in enumerate(optimizer.variables) if v is optimizer._slot_layout_version
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


# The arguments every Keras optimizer takes, as `SNRAdam`'s docstring states
# them (verbatim: the docstring holds this text); replaced at import by Keras's
# own, fuller text where Keras has it.
_BASE_ARGS_FALLBACK = """clipnorm: Float or `None`. If set, the gradient of each variable is
            clipped so that its norm is no higher than this value.
        clipvalue: Float or `None`. If set, each gradient is clipped to
            `[-clipvalue, clipvalue]`.
        global_clipnorm: Float or `None`. If set, all gradients are clipped
            together so that their global norm is no higher than this value.
        use_ema: Boolean. Whether to keep an exponential moving average of
            the weights. Defaults to `False`.
        ema_momentum: Float. Momentum of that moving average, used if
            `use_ema=True`. Defaults to `0.99`.
        ema_overwrite_frequency: Int or `None`. Every this many iterations
            the weights are overwritten with their moving average (`None`:
            at the end of `fit()`), used if `use_ema=True`.
        loss_scale_factor: Float or `None`. If set, the loss is multiplied
            by it and the gradients by its inverse (mixed precision).
        gradient_accumulation_steps: Int or `None`. If set, the variables
            are updated every this many steps, with the mean of the
            gradients since the last update.
        name: String. The name of the optimizer."""


def _base_optimizer_args_doc():
    """Keras's shared description of the base-optimizer arguments (a private
    attribute, read for the docstring only; a short fallback if it moved)."""
    try:
        text = keras.src.optimizers.optimizer.base_optimizer_keyword_args
    except AttributeError:
        return _BASE_ARGS_FALLBACK
    return text if isinstance(text, str) else _BASE_ARGS_FALLBACK


if SNRAdam.__doc__ is not None:
    SNRAdam.__doc__ = SNRAdam.__doc__.replace(_BASE_ARGS_FALLBACK, _base_optimizer_args_doc())
