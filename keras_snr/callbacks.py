"""Callbacks that read SNRAdam's statistics during `fit()`.

`GateLogger` logs the gate; `PopulationRiskEstimate` adds an estimate of the
population (held-out) loss, computed from the training run alone, to the
epoch logs under `pop_risk`, with a flag saying when to trust it.
"""

import json
import math
import numbers
import os
import warnings

import keras
from keras import ops

from keras_snr.snr_adam import finite_dataset_alpha
from keras_snr.statistics import compile_reader
from keras_snr.statistics import snr_optimizers


def _require_snr_optimizers(callback):
    """The SNRAdams behind `callback.model`'s optimizer, or a clear error."""
    model = callback.model
    optimizer = getattr(model, "optimizer", None) if model is not None else None
    if optimizer is None or not getattr(model, "compiled", True):
        raise ValueError(
            f"{type(callback).__name__} needs a compiled model: call "
            "`model.compile(optimizer=keras_snr.SNRAdam(...), ...)` before `fit()`."
        )
    found = snr_optimizers(optimizer)
    if not found:
        raise TypeError(
            f"{type(callback).__name__} reads the gradient statistics that "
            "keras_snr.SNRAdam keeps; the model's optimizer is "
            f"{type(optimizer).__name__} and contains no SNRAdam. To watch a "
            "plain Adam/AdamW run, compile with `keras_snr.SNRAdam(gate=None, "
            "...)`, which is exactly AdamW and keeps the statistics."
        )
    return found


class GateLogger(keras.callbacks.Callback):
    """Log `SNRAdam`'s gate at the end of every epoch.

    Writes `gate_mean` (the mean gate `q` over all trained coordinates: the
    step is `q` times Adam's) and `gate_open_fraction` (the fraction whose
    signal beats the threshold `m_hat**2 > alpha * s_hat`) into the epoch
    logs, where History, the progress bar, CSVLogger and TensorBoard see
    them (list it before callbacks that should). Both come from
    `SNRAdam.gate_summary()`, as of the epoch's last update, in one compiled
    call per epoch; the training step is untouched. Works through
    `LossScaleOptimizer` and `MultiOptimizer` (all SNRAdams together).

    Args:
        prefix: Prefix of the two log keys. Defaults to `"gate_"`.
    """

    def __init__(self, prefix="gate_"):
        super().__init__()
        if not isinstance(prefix, str):
            raise ValueError(f"`prefix` must be a string; received prefix={prefix!r}")
        self.prefix = prefix
        self._reader = None

    def on_train_begin(self, logs=None):
        self._optimizers = _require_snr_optimizers(self)
        self._reader = None  # built at the first epoch end, once the optimizer is

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self._reader is None:
            optimizers = self._optimizers

            def summary():
                sums = [opt._gate_sums() for opt in optimizers]
                count = sum(c for _, _, c in sums)
                q_sum = sum(q for q, _, _ in sums)
                open_sum = sum(o for _, o, _ in sums)
                return q_sum / count, open_sum / count

            self._reader = compile_reader(summary, optimizers)
        mean, open_fraction = self._reader()
        logs[f"{self.prefix}mean"] = float(ops.convert_to_numpy(mean))
        logs[f"{self.prefix}open_fraction"] = float(ops.convert_to_numpy(open_fraction))


def _host(x):
    """A Python float from a scalar tensor or keras Variable."""
    if isinstance(x, keras.Variable):
        x = x.value
    return float(ops.convert_to_numpy(x))


def _positive_int(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer or None; received {name}={value!r}"
        )
    return int(value)


def _resolve_sizes(dataset_size, batch_size, steps):
    """`(n, b)` from the arguments and the steps per epoch `fit()` runs."""
    n, b = dataset_size, batch_size
    if b is None:
        if not steps:
            raise ValueError(
                "PopulationRiskEstimate could not infer the batch size: "
                "the number of steps per epoch is unknown. Pass `batch_size=`."
            )
        b = math.ceil(n / steps)
    if n is None:
        if not steps:
            raise ValueError(
                "PopulationRiskEstimate could not infer the dataset size: "
                "the number of steps per epoch is unknown. Pass `dataset_size=`."
            )
        n = b * steps
    if b >= n:
        raise ValueError(
            f"The batch size ({b}) must be smaller than the dataset size "
            f"({n}); with full-batch training there is no sampling noise "
            "to estimate the gap from."
        )
    if steps and math.ceil(n / b) != steps:
        warnings.warn(
            f"PopulationRiskEstimate: dataset_size={n} and batch_size={b} "
            f"give {math.ceil(n / b)} steps per epoch, but fit() runs "
            f"{steps}. Check `dataset_size` and `batch_size` (with "
            "`steps_per_epoch` or a repeated dataset, pass the size of "
            "the underlying training set).",
            stacklevel=4,  # the caller of on_train_begin
        )
    return n, b


_TINY = 1e-30
_STATE_FILE = "pop_risk_state.json"
_FIRST_GRADIENT_FILE = "pop_risk_first_gradient.npz"


class PopulationRiskEstimate(keras.callbacks.Callback):
    """Estimate the population (held-out) loss each epoch from training alone.

    At every epoch end this writes to the logs (History, progress bar,
    CSVLogger, `EarlyStopping`, `ModelCheckpoint`; list it before them):

    - `pop_risk`: what to monitor. While the estimate is reliable it is
      `pop_risk_estimate`; once it is not, it is a value just below (by
      1e-6 relative) every `pop_risk` logged before, so that
      `EarlyStopping(monitor="pop_risk", mode="min", patience=20,
      restore_best_weights=True)` never stops on a guess and keeps the
      latest weights (it then behaves as if not stopping; keep
      `min_delta=0`).
    - `pop_risk_estimate`: the estimate itself, `loss + gap`.
    - `pop_risk_reliable`: 1.0 while the estimate is trusted, else 0.0.
    - `signal_fraction`: fraction of coordinates with `m_hat**2 > alpha *
      s_hat`; `gradient_snr`: `sum(m_hat**2) / sum(alpha * s_hat)`.

    Here `alpha = keras_snr.finite_dataset_alpha(b, n)` (`b` the examples
    behind one update, `n` the training-set size), so `alpha * s_hat`
    estimates the variance of the full-dataset gradient's sampling error.

    The estimate was chosen by measurement in
    `benchmarks/population_risk_validation.py` (where it is called
    `min_dec_cal+rel`); it is this project's heuristic, not the paper's
    formula, which is not public. After epoch 1 it is the epoch-1 mean
    training loss `L_1`: Keras computes each batch's loss before the update
    on it and every batch is new, so `L_1` is an unbiased estimate of the
    population risk averaged over the epoch. Later, `gap = min(G_dec,
    G_cal)`, two accounts of the optimism the training loss has gained,
    both shrunk each epoch by the decoupled weight decay, `D =
    exp(-lr * weight_decay * updates)`:

    - `G_dec <- D * (G_dec + lr * updates * A)` (with `A` of the previous
      epoch), `A = sum q P alpha s_hat min(1, |g| / sqrt(alpha s_hat))`;
    - `G_cal <- D * G_cal + max(L_prev - L, 0) * B / C`, with `B = sum q P
      alpha s_hat min(1, |g| / |g_1|)` and `C = sum q P g**2`: the epoch's
      drop of the training loss, times the share of it that is noise
      (`B / C`, taken as 1 where no full-batch gradient is left, `C = 0`);

    with `P = 1 / (sqrt(v_hat) + epsilon)`, `q` the gate, `g**2 =
    max(m_hat**2 - c s_hat, 0)` (`c = (1 - beta_1) / (1 + beta_1)`) the
    squared full-batch gradient and `g_1` its value after epoch 1 (kept by
    the callback: one float32 tensor per variable).

    Reliability: the estimate is trusted until the first epoch whose
    training loss falls below `reliability_threshold * L_1` (then for the
    rest of the run): near-zero training loss with nothing measurable left
    to estimate the gap from is where it was measured to go wrong. What the
    benchmark measured, per task, is in README.md: early stopping with
    `patience=20` ended within 2 % of not stopping on every task and seed
    there, and the estimate tracked the held-out loss (Spearman >= 0.9) in 3
    of 14 task/dynamics cells (a noisy-label MLP, a small language model and
    grokking, all under Adam dynamics). It cannot see a gap that comes from which
    inputs were sampled rather than from noisy labels (e.g. noise-free
    modular arithmetic): there it never stops early.

    Reading the optimizer is one compiled reduction per epoch (JAX, TF; on
    torch per-variable eager ops); the train step is untouched. To watch a
    plain Adam run, train with `keras_snr.SNRAdam(gate=None)`.

    Args:
        dataset_size: Number of training examples `n`. If omitted, inferred
            as `batch_size * steps_per_epoch` (exact only if the last batch
            is full). Required with `steps_per_epoch` on a repeated dataset.
        batch_size: Global batch size given to `fit()` (summed over
            replicas). If omitted, inferred as `ceil(dataset_size /
            steps_per_epoch)`. One of the two is required.
        reliability_threshold: In `(0, 1)`. Defaults to `0.05`.
        backup_dir: Directory to save the callback's state in at every epoch
            end and restore it from when training resumes with
            `keras.callbacks.BackupAndRestore` in a new process (use the
            same directory). Without it, a resumed run restarts the
            estimate, warns, and marks it unreliable.
        diagnostics: Also log `pop_risk_gap_decayed` and
            `pop_risk_gap_calibrated`.
        monitor_loss: Key of the training loss in `logs`. Defaults to
            `"loss"`. The loss must be non-negative.
    """

    def __init__(
        self,
        dataset_size=None,
        batch_size=None,
        reliability_threshold=0.05,
        backup_dir=None,
        diagnostics=False,
        monitor_loss="loss",
    ):
        super().__init__()
        self.dataset_size = _positive_int("dataset_size", dataset_size)
        self.batch_size = _positive_int("batch_size", batch_size)
        if self.dataset_size is None and self.batch_size is None:
            raise ValueError(
                "PopulationRiskEstimate needs the training set size: pass "
                "`dataset_size=` (number of training examples) and, "
                "ideally, `batch_size=` (the batch size given to `fit()`)."
            )
        if (
            self.dataset_size is not None
            and self.batch_size is not None
            and self.batch_size >= self.dataset_size
        ):
            raise ValueError(
                f"`batch_size` ({self.batch_size}) must be smaller than "
                f"`dataset_size` ({self.dataset_size}): with full-batch "
                "training there is no sampling noise to estimate the gap from."
            )
        if (
            isinstance(reliability_threshold, bool)
            or not isinstance(reliability_threshold, numbers.Real)
            or not 0 < reliability_threshold < 1
        ):
            raise ValueError(
                "`reliability_threshold` must be in (0, 1); received "
                f"reliability_threshold={reliability_threshold!r}"
            )
        if backup_dir is not None and not isinstance(backup_dir, (str, os.PathLike)):
            raise ValueError(
                f"`backup_dir` must be a path or None; received backup_dir={backup_dir!r}"
            )
        if not isinstance(monitor_loss, str):
            raise ValueError(
                f"`monitor_loss` must be a string; received monitor_loss={monitor_loss!r}"
            )
        self.reliability_threshold = float(reliability_threshold)
        self.backup_dir = None if backup_dir is None else os.fspath(backup_dir)
        self.diagnostics = bool(diagnostics)
        self.monitor_loss = monitor_loss
        self._state = None  # the estimate's state, kept across fit() calls
        self._training = False

    # ------------------------------------------------------------ set-up

    def on_train_begin(self, logs=None):
        optimizers = _require_snr_optimizers(self)
        if len(optimizers) > 1:
            raise ValueError(
                "PopulationRiskEstimate supports one SNRAdam per model; the "
                f"model's optimizer holds {len(optimizers)}."
            )
        self._opt = optimizers[0]
        self._n, self._b = _resolve_sizes(
            self.dataset_size, self.batch_size, (self.params or {}).get("steps")
        )
        k = self._opt.gradient_accumulation_steps or 1
        self._b_eff = self._b * k
        self._alpha = finite_dataset_alpha(self._b, self._n, k)
        self._training = True
        self._started = False
        self._reduce = self._first_gradient_fn = None

    def on_train_end(self, logs=None):
        self._training = False

    def on_test_begin(self, logs=None):
        self._warn_outside_fit("evaluate()")

    def on_predict_begin(self, logs=None):
        self._warn_outside_fit("predict()")

    def _warn_outside_fit(self, where):
        if not self._training:
            warnings.warn(
                f"PopulationRiskEstimate does nothing in {where}: it estimates "
                "the population risk from a training run. Pass it to `fit()`.",
                stacklevel=3,
            )

    def on_epoch_begin(self, epoch, logs=None):
        # After every callback's on_train_begin, so that BackupAndRestore
        # has restored the optimizer's iterations.
        if not self._started:
            self._started = True
            self._start_or_resume()

    def _start_or_resume(self):
        iterations = int(_host(self._opt.iterations))
        if self._state is not None and self._state["iterations"] == iterations:
            return  # a further fit() call on the same run
        restored = self._load_backup(iterations)
        if restored is not None:
            self._state = restored
            return
        self._state = _fresh_state(iterations)
        if iterations > 0:
            self._state["reliable"] = False
            self._state["restarted"] = True
            warnings.warn(
                f"PopulationRiskEstimate: the optimizer has already made "
                f"{iterations} updates and no saved estimate matches them "
                "(pass `backup_dir=` to resume one with BackupAndRestore). "
                "The estimate restarts here without its epoch-1 anchor; "
                "`pop_risk_reliable` is 0 for the rest of the run.",
                stacklevel=3,
            )

    # ------------------------------------------------------------ per epoch

    def _build_readers(self):
        opt, alpha = self._opt, self._alpha
        c = (1.0 - opt.beta_1) / (1.0 + opt.beta_1)
        eps = opt.epsilon

        def trained():
            stats = opt.statistics()
            return [
                tuple(ops.cast(x, "float32") for x in row)
                for row in zip(stats.momentum, stats.velocity, stats.noise_variance, stats.gate)
                if row[0] is not None
            ]

        def first_gradient():
            # g**2 = max(m_hat**2 - c s_hat, 0): the squared full-batch gradient
            return [ops.relu(ops.square(m) - c * s) for m, _, s, _ in trained()]

        def reduce(g1_squared):
            sums = [0.0] * 7
            for (m, v, s, q), g1 in zip(trained(), g1_squared):
                noise = alpha * s
                m2 = ops.square(m)
                g2 = ops.relu(m2 - c * s)
                q_p = q / (ops.sqrt(v) + eps)
                q_p_noise = q_p * noise
                capped = ops.minimum(1.0, ops.sqrt(g2 / (noise + _TINY)))
                decayed = ops.where(g1 > 0, ops.minimum(1.0, ops.sqrt(g2 / (g1 + _TINY))), 1.0)
                terms = (
                    q_p_noise * capped,  # A
                    q_p_noise * decayed,  # B
                    q_p * g2,  # C
                    m2,
                    noise,
                    ops.cast(ops.greater(m2, noise), "float32"),
                    ops.ones_like(m),
                )
                sums = [total + ops.sum(term) for total, term in zip(sums, terms)]
            return ops.stack([ops.cast(x, "float32") for x in sums])

        self._first_gradient_fn = compile_reader(first_gradient, [opt])
        self._reduce = compile_reader(reduce, [opt])

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        loss = logs.get(self.monitor_loss)
        if loss is None:
            raise KeyError(
                f"PopulationRiskEstimate: the epoch logs have no "
                f"`{self.monitor_loss}`; available keys: {sorted(logs)}. Pass "
                "`monitor_loss=` naming the training loss."
            )
        if not self._started:  # fit() without on_epoch_begin (not expected)
            self._started = True
            self._start_or_resume()
        if self._reduce is None:
            self._build_readers()
        st = self._state
        opt = self._opt
        loss = float(loss)
        iterations = int(_host(opt.iterations))
        updates = iterations - st["iterations"]
        st["iterations"] = iterations
        lr = _host(opt.learning_rate)
        weight_decay = float(opt.weight_decay or 0.0)

        if st["first_loss"] is None:
            self._start_anchor(loss, updates)
        sums = ops.convert_to_numpy(self._reduce(self._first_gradient)).astype("float64")
        rate_a, noise_b, signal_c, m2, noise, signal, count = (float(x) for x in sums)

        decay = math.exp(-lr * weight_decay * updates)
        drop = 0.0 if st["prev_loss"] is None else max(st["prev_loss"] - loss, 0.0)
        st["gap_decayed"] = decay * (st["gap_decayed"] + st["pending"])
        # B / C: the share of the drop that is noise; with no full-batch
        # gradient left (C = 0) all of it is.
        share = noise_b / signal_c if signal_c > 0 else 1.0
        st["gap_calibrated"] = decay * st["gap_calibrated"] + drop * share
        st["pending"] = lr * updates * rate_a
        st["prev_loss"] = loss
        estimate = loss + min(st["gap_decayed"], st["gap_calibrated"])
        st["reliable"] = bool(
            st["reliable"] and loss >= self.reliability_threshold * st["first_loss"]
        )
        if not (math.isfinite(estimate) and all(map(math.isfinite, (rate_a, noise_b, signal_c)))):
            if not st["warned_nan"]:
                warnings.warn(
                    f"PopulationRiskEstimate: non-finite training loss ({loss}) "
                    f"or optimizer statistics at epoch {epoch + 1}; `pop_risk` "
                    "is NaN from now on.",
                    stacklevel=2,
                )
                st["warned_nan"] = True
            st["gap_decayed"] = st["gap_calibrated"] = float("nan")
            value = estimate = float("nan")
        elif st["reliable"] or not math.isfinite(st["best"]):
            value = estimate
        else:  # strictly below every value logged so far (also in float32)
            best = st["best"]
            value = best - max(1e-6 * abs(best), 1e-12)
        if math.isfinite(value):
            st["best"] = min(st["best"], value)

        logs["pop_risk"] = float(value)
        logs["pop_risk_estimate"] = float(estimate)
        logs["pop_risk_reliable"] = float(st["reliable"])
        logs["signal_fraction"] = signal / max(count, 1.0)
        logs["gradient_snr"] = m2 / (noise + _TINY)
        if self.diagnostics:
            logs["pop_risk_gap_decayed"] = float(st["gap_decayed"])
            logs["pop_risk_gap_calibrated"] = float(st["gap_calibrated"])
        self._save_backup()

    def _start_anchor(self, loss, updates):
        """Epoch 1 of the run: its mean training loss is the anchor, and the
        full-batch gradient now is `g_1`."""
        st = self._state
        st["first_loss"] = loss
        if not loss > 0:
            st["reliable"] = False
            warnings.warn(
                f"PopulationRiskEstimate: the first epoch's training loss is "
                f"{loss}; the estimate assumes a positive loss and is marked "
                "unreliable.",
                stacklevel=3,
            )
        if updates > math.ceil(self._n / self._b_eff):
            warnings.warn(
                f"PopulationRiskEstimate: the first epoch made {updates} "
                f"updates of {self._b_eff} examples, more than one pass over "
                f"the {self._n} training examples, so its mean loss is not a "
                "first-pass (prequential) estimate: the anchor is biased low.",
                stacklevel=3,
            )
        self._first_gradient = self._first_gradient_fn()
        self._first_gradient_unsaved = True

    # ------------------------------------------------------------ backup

    def _save_backup(self):
        """The scalars every epoch; `g_1` once, when it is computed."""
        if self.backup_dir is None:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        if self._first_gradient_unsaved:
            import numpy as np

            path = os.path.join(self.backup_dir, _FIRST_GRADIENT_FILE)
            values = [ops.convert_to_numpy(x) for x in self._first_gradient]
            np.savez(path + ".tmp.npz", *values)
            os.replace(path + ".tmp.npz", path)
            self._first_gradient_unsaved = False
        path = os.path.join(self.backup_dir, _STATE_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(self._state, f)
        os.replace(path + ".tmp", path)

    def _load_backup(self, iterations):
        """The saved state if it belongs to `iterations`, else None."""
        if self.backup_dir is None:
            return None
        path = os.path.join(self.backup_dir, _STATE_FILE)
        arrays = os.path.join(self.backup_dir, _FIRST_GRADIENT_FILE)
        if not (os.path.exists(path) and os.path.exists(arrays)):
            return None
        with open(path) as f:
            state = json.load(f)
        if state.get("iterations") != iterations or state.get("first_loss") is None:
            return None
        import numpy as np

        with np.load(arrays) as data:
            self._first_gradient = [
                ops.convert_to_tensor(data[f"arr_{i}"]) for i in range(len(data.files))
            ]
        self._first_gradient_unsaved = False
        return state


def _fresh_state(iterations):
    return {
        "iterations": iterations,
        "first_loss": None,
        "prev_loss": None,
        "gap_decayed": 0.0,
        "gap_calibrated": 0.0,
        "pending": 0.0,
        "reliable": True,
        "best": math.inf,
        "warned_nan": False,
        "restarted": False,
    }
