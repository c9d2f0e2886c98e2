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
_CLASSES_FILE = "pop_risk_classes.npy"


def _first_leaf(x):
    return keras.tree.flatten(x)[0]


class PopulationRiskEstimate(keras.callbacks.Callback):
    """Estimate the population (held-out) loss each epoch from training alone,
    and say when early stopping on it may begin.

    At every epoch end this writes to the logs (History, progress bar,
    CSVLogger, `EarlyStopping`, `ModelCheckpoint`; list it before them):

    - `pop_risk_estimate`: an estimate of the loss on unseen data drawn
      like the training data (labels noisy in the same way), `loss + G`.
      A stopping signal more than a number: on the held-out tasks of the
      benchmark it followed the held-out loss's ups and downs (Spearman
      >= 0.9) on 21 % of them, with a mean absolute relative error of 2.15.
    - `pop_risk`: what to monitor. `pop_risk_estimate` while it is trusted
      (`pop_risk_reliable` = 1); after that a value just below every
      `pop_risk` logged before (1e-6 relative), so that an `EarlyStopping`
      watching it neither stops nor restores an older epoch on a guess.
    - `pop_risk_reliable`: 1.0 until the training loss falls below
      `reliability_threshold` times the first epoch's, then 0.0 for the rest
      of the run (the estimate was measured to go wrong there); a warning
      says so once.
    - `prediction_changes` (with `x_train`, for classifiers): the fraction
      of the sampled training examples (label entries, for sequences) whose
      predicted class changed since the previous epoch (NaN at epoch 1).
    - `pop_risk_ready`: 1.0 once early stopping may count epochs. For a
      classifier with `x_train`, from the epoch after the first local
      minimum of `prediction_changes` smoothed by a trailing moving average
      of `label_wave_window` epochs (Label Wave: Yuan, Feng & Liu, ICLR
      2024); without `x_train` or for a single-output model, from epoch 1.
    - `pop_risk_wave`: 1.0 once that minimum is confirmed as the start of a
      strong wave: within `wave_horizon` epochs the smoothed count of
      changes rises above its minimum by `wave_rise` standard errors
      (`sqrt((count at the minimum + 1) / label_wave_window)`, counts on
      the sample). Until then `ValidationFreeStopping` counts epochs but
      does not stop: a weak or absent wave (little or no label noise) does
      not end training. 1.0 from epoch 1 where `pop_risk_ready` is.
    - `heldout_loss_estimate`, `heldout_loss_low`, `heldout_loss_high`: the
      number to read. An estimate of the loss on unseen data labelled like
      the training data, and an interval for it: low = the training loss
      `L`, high = `max(L_1, L + G)` (`L_1` the first epoch's training
      loss, which was measured mostly on examples the model had not yet
      trained on), estimate = `(L + min(L_1, L + G)) / 2`. On the
      benchmark's v4 held-out tasks, at the epoch `ValidationFreeStopping`
      kept, it was within 25 % of the held-out loss on 46 of 66 cells (80 %
      of label-noise ones, 2 of 8 noise-free classifiers), median error
      11 %; at the end of training on 50 %. The interval is wide late in
      training; README.md says how often each held.
    - With `y_train` as well (the integer labels of `x_train`):
      `heldout_accuracy_estimate`, `heldout_accuracy_low`,
      `heldout_accuracy_high`, the same for the accuracy on unseen data
      labelled like the training data (noisy labels, what a user could
      measure on a holdout): high = the accuracy `a` on the `x_train`
      sample, low = `min(a_1, a)` (`a_1` at the first epoch end),
      estimate = their mean.
    - `signal_fraction`: fraction of coordinates with `m_hat**2 > alpha *
      s_hat`; `gradient_snr`: `sum(m_hat**2) / sum(alpha * s_hat)`.

    The recommended recipe is this callback followed by
    `keras_snr.ValidationFreeStopping()`: an `EarlyStopping` on `pop_risk`
    (patience 10, restoring the best weights) that counts epochs only once
    `pop_risk_ready` is 1 and stops only once `pop_risk_wave` is 1. For a
    classifier it thus aims at clean accuracy (the held-out loss bottoms
    out before the accuracy peaks under label noise; the wave of
    prediction changes marks where memorisation begins, and without one it
    never stops early); for regression it aims at the held-out loss.

    The gap `G` (this project's heuristic, chosen by measurement in
    `benchmarks/population_risk_benchmark.py`; the paper's formula is not
    public) accumulates each epoch's first-order optimism, capped per
    coordinate, and shrinks with the decoupled weight decay:
    `G <- exp(-lr * weight_decay * updates) * G + lr * updates * A`, with
    `A = sum q P alpha s_hat min(1, sqrt(g**2 / (alpha s_hat)))` read from
    the optimizer after the epoch: `P = 1 / (sqrt(v_hat) + epsilon)`, `q`
    the gate, `g**2 = max(m_hat**2 - c s_hat, 0)` (`c = (1 - beta_1) / (1 +
    beta_1)`) the squared full-batch gradient. Here `alpha =
    keras_snr.finite_dataset_alpha(b, n)` (`b` the examples behind one
    update, `n` the training-set size), so `alpha * s_hat` estimates the
    variance of the full-dataset gradient's sampling error. What it
    measured, against the 20 % holdout and Label Wave, is in README.md.

    Reading the optimizer is one compiled reduction per epoch (JAX, TF; on
    torch per-variable eager ops), and with `x_train` one forward pass over
    at most `sample_size` training examples (`model.predict_on_batch`); the
    train step is untouched. To watch a plain Adam run, train with
    `keras_snr.SNRAdam(gate=None)`.

    Args:
        dataset_size: Number of training examples `n`. If omitted, inferred
            as `batch_size * steps_per_epoch` (exact only if the last batch
            is full). Required with `steps_per_epoch` on a repeated dataset.
        batch_size: Global batch size given to `fit()` (summed over
            replicas). If omitted, inferred as `ceil(dataset_size /
            steps_per_epoch)`. One of the two is required.
        x_train: Training inputs (all of them or a random subset; an array
            or a structure of arrays as the model takes them) on which to
            count prediction changes. Recommended for classifiers.
        y_train: The integer class labels of `x_train` (optional): with
            them the held-out accuracy is estimated too.
        sample_size: At most this many examples of `x_train` are used (a
            random subset drawn with `seed`). Defaults to 256 (a forward
            pass over them costs a few per cent of an epoch at the
            benchmark's settings; see `benchmarks/callback_overhead.py`).
            A larger sample sees a wave sooner (the rise, in standard
            errors, grows with the square root of the sample).
        label_wave_window: Epochs of the moving average of
            `prediction_changes`. Defaults to 5.
        wave_rise: Rise after the first minimum, in standard errors, that
            confirms a wave (`pop_risk_wave`). `0` confirms any minimum (the
            rule of keras_snr 0.1). Defaults to 2.0.
        wave_horizon: Epochs after the minimum within which the rise must
            come. Defaults to 10.
        reliability_threshold: In `(0, 1)`. Defaults to `0.05`.
        prediction_batch_size: Examples per `predict_on_batch` call.
        seed: Seed of the `x_train` subsample.
        backup_dir: Directory to save the callback's state in at every epoch
            end and restore it from when training resumes with
            `keras.callbacks.BackupAndRestore` in a new process (use the
            same directory). Without it, a resumed run restarts the
            estimate, warns, and marks it unreliable.
        diagnostics: Also log `pop_risk_gap` and
            `prediction_changes_smoothed`.
        monitor_loss: Key of the training loss in `logs`. Defaults to
            `"loss"`. The loss must be non-negative.
    """

    def __init__(
        self,
        dataset_size=None,
        batch_size=None,
        x_train=None,
        y_train=None,
        sample_size=256,
        label_wave_window=5,
        wave_rise=2.0,
        wave_horizon=10,
        reliability_threshold=0.05,
        prediction_batch_size=1024,
        seed=0,
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
        if (
            isinstance(wave_rise, bool)
            or not isinstance(wave_rise, numbers.Real)
            or not 0 <= wave_rise < math.inf
        ):
            raise ValueError(
                f"`wave_rise` must be a number >= 0; received wave_rise={wave_rise!r}"
            )
        for name, value in (("sample_size", sample_size),
                            ("label_wave_window", label_wave_window),
                            ("wave_horizon", wave_horizon),
                            ("prediction_batch_size", prediction_batch_size)):
            if _positive_int(name, value) is None:
                raise ValueError(f"`{name}` must be a positive integer; received {name}=None")
        if backup_dir is not None and not isinstance(backup_dir, (str, os.PathLike)):
            raise ValueError(
                f"`backup_dir` must be a path or None; received backup_dir={backup_dir!r}"
            )
        if not isinstance(monitor_loss, str):
            raise ValueError(
                f"`monitor_loss` must be a string; received monitor_loss={monitor_loss!r}"
            )
        self.x_train = None
        if x_train is not None:
            import numpy as np

            leaves = keras.tree.flatten(x_train)
            lengths = {int(np.shape(leaf)[0]) if np.ndim(leaf) else 0 for leaf in leaves}
            if len(lengths) != 1 or 0 in lengths:
                raise ValueError(
                    "`x_train` must be an array (or a structure of arrays) of "
                    "training inputs with the examples along the first axis, "
                    f"all of the same length; received lengths {sorted(lengths)}."
                )
            (length,) = lengths
            keep = np.sort(np.random.default_rng(seed).permutation(length)[:sample_size])
            self.x_train = keras.tree.map_structure(lambda a: np.asarray(a)[keep], x_train)
        self.y_train = None
        if y_train is not None:
            import numpy as np

            if x_train is None:
                raise ValueError(
                    "`y_train` is used with `x_train` (the labels of the same "
                    "examples); pass `x_train=` too."
                )
            y = np.asarray(y_train)
            if y.ndim == 0 or y.shape[0] != length or not np.issubdtype(y.dtype, np.integer):
                raise ValueError(
                    "`y_train` must be the integer class labels of `x_train`, "
                    f"{length} of them along the first axis; received an array "
                    f"of shape {y.shape} and dtype {y.dtype}."
                )
            self.y_train = y[keep]
        self.sample_size = int(sample_size)
        self.label_wave_window = int(label_wave_window)
        self.wave_rise = float(wave_rise)
        self.wave_horizon = int(wave_horizon)
        self.reliability_threshold = float(reliability_threshold)
        self.prediction_batch_size = int(prediction_batch_size)
        self.seed = seed
        self.backup_dir = None if backup_dir is None else os.fspath(backup_dir)
        self.diagnostics = bool(diagnostics)
        self.monitor_loss = monitor_loss
        self._state = None  # the estimate's state, kept across fit() calls
        self._classes = None  # predicted classes on the sample at the last epoch end
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
        self._reduce = None

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
        self._classes = None
        if iterations > 0:
            self._state["reliable"] = False
            self._state["restarted"] = True
            warnings.warn(
                f"PopulationRiskEstimate: the optimizer has already made "
                f"{iterations} updates and no saved estimate matches them "
                "(pass `backup_dir=` to resume one with BackupAndRestore). "
                "The estimate restarts here without its first epoch; "
                "`pop_risk_reliable` is 0 for the rest of the run.",
                stacklevel=3,
            )

    # ------------------------------------------------------------ per epoch

    def _build_reader(self):
        opt, alpha = self._opt, self._alpha
        c = (1.0 - opt.beta_1) / (1.0 + opt.beta_1)
        eps = opt.epsilon

        def reduce():
            stats = opt.statistics()
            sums = [0.0] * 5
            for m, v, s, q in zip(stats.momentum, stats.velocity, stats.noise_variance,
                                  stats.gate):
                if m is None:
                    continue
                m, v, s, q = (ops.cast(x, "float32") for x in (m, v, s, q))
                noise = alpha * s
                m2 = ops.square(m)
                g2 = ops.relu(m2 - c * s)
                capped = ops.minimum(1.0, ops.sqrt(g2 / (noise + _TINY)))
                terms = (
                    q / (ops.sqrt(v) + eps) * noise * capped,  # A
                    m2,
                    noise,
                    ops.cast(ops.greater(m2, noise), "float32"),
                    ops.ones_like(m),
                )
                sums = [total + ops.sum(term) for total, term in zip(sums, terms)]
            return ops.stack([ops.cast(x, "float32") for x in sums])

        self._reduce = compile_reader(reduce, [opt])

    def _predicted_classes(self):
        """Predicted classes on the `x_train` sample, or None where there
        are none (no `x_train`, or one output unit)."""
        import numpy as np

        if self.x_train is None:
            return None
        length = len(_first_leaf(self.x_train))
        step = self.prediction_batch_size
        chunks = []
        for start in range(0, length, step):
            batch = keras.tree.map_structure(lambda a: a[start:start + step], self.x_train)
            pred = self.model.predict_on_batch(batch)
            if not hasattr(pred, "shape"):
                raise ValueError(
                    "PopulationRiskEstimate(x_train=...) needs a model with one "
                    f"output tensor; this model returns {type(pred).__name__}."
                )
            chunks.append(np.asarray(ops.convert_to_numpy(pred)))
        pred = np.concatenate(chunks)
        if pred.ndim < 2 or pred.shape[-1] < 2:
            if not self._state.get("warned_single_output"):
                self._state["warned_single_output"] = True
                warnings.warn(
                    "PopulationRiskEstimate: the model has one output unit per "
                    f"example (shape {pred.shape[1:]}), so there is no predicted "
                    "class to follow and `x_train` is not used (for a one-logit "
                    "binary classifier, output two logits to have prediction "
                    "changes counted); early stopping may begin at epoch 1.",
                    stacklevel=4,
                )
            return None
        return pred.argmax(-1)

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
            self._build_reader()
        st = self._state
        opt = self._opt
        loss = float(loss)
        iterations = int(_host(opt.iterations))
        updates = iterations - st["iterations"]
        st["iterations"] = iterations
        lr = _host(opt.learning_rate)
        weight_decay = float(opt.weight_decay or 0.0)
        if st["first_loss"] is None:
            self._first_epoch(loss, updates)

        sums = ops.convert_to_numpy(self._reduce()).astype("float64")
        rate, m2, noise, signal, count = (float(x) for x in sums)
        st["gap"] = math.exp(-lr * weight_decay * updates) * st["gap"] + lr * updates * rate
        estimate = loss + st["gap"]
        if st["reliable"] and loss < self.reliability_threshold * st["first_loss"]:
            st["reliable"] = False
            warnings.warn(
                f"PopulationRiskEstimate: at epoch {epoch + 1} the training loss "
                f"({loss:.4g}) fell below {self.reliability_threshold:g} times "
                f"the first epoch's ({st['first_loss']:.4g}); the estimate is no "
                "longer trusted (`pop_risk_reliable` = 0 from now on) and "
                "`pop_risk` is held just below its best, so that early stopping "
                "on it keeps the latest weights. To choose an epoch from here, "
                "hold out validation data (e.g. `validation_split=0.2` with "
                "`EarlyStopping(monitor='val_loss')`).",
                stacklevel=2,
            )
        changes = self._prediction_changes()
        if not (math.isfinite(estimate) and math.isfinite(rate)):
            if not st["warned_nan"]:
                warnings.warn(
                    f"PopulationRiskEstimate: non-finite training loss ({loss}) "
                    f"or optimizer statistics at epoch {epoch + 1}; `pop_risk` "
                    "is NaN from now on.",
                    stacklevel=2,
                )
                st["warned_nan"] = True
            st["gap"] = float("nan")
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
        logs["pop_risk_ready"] = float(st["ready"])
        logs["pop_risk_wave"] = float(st["wave"])
        # The readable number (see the docstring): the held-out loss is
        # bracketed by the training loss and by the larger of the first
        # epoch's loss and `loss + G`; the estimate is the middle of the
        # training loss and the smaller of the two.
        first = st["first_loss"] if math.isfinite(estimate) else float("nan")
        logs["heldout_loss_estimate"] = 0.5 * (loss + min(first, estimate))
        logs["heldout_loss_low"] = loss if math.isfinite(estimate) else float("nan")
        logs["heldout_loss_high"] = max(first, estimate)
        if self._tracks_changes:
            logs["prediction_changes"] = changes
            accuracy = self._accuracy
            if accuracy is not None:
                low = min(st["first_accuracy"], accuracy)
                logs["heldout_accuracy_estimate"] = 0.5 * (low + accuracy)
                logs["heldout_accuracy_low"] = low
                logs["heldout_accuracy_high"] = accuracy
        logs["signal_fraction"] = signal / max(count, 1.0)
        logs["gradient_snr"] = m2 / (noise + _TINY)
        if self.diagnostics:
            logs["pop_risk_gap"] = float(st["gap"])
            if self._tracks_changes:
                logs["prediction_changes_smoothed"] = self._smoothed(len(st["changes"]) - 1)
        self._save_backup()

    def _prediction_changes(self):
        """Count this epoch's prediction changes on the sample and apply
        the Label Wave rule to `pop_risk_ready`. Returns the fraction
        changed (NaN when there is no previous epoch to compare with)."""
        import numpy as np

        st = self._state
        classes = self._predicted_classes()
        self._tracks_changes = classes is not None
        self._accuracy = None
        if classes is None:
            st["ready"] = st["wave"] = True
            return float("nan")
        if self.y_train is not None:
            if self.y_train.shape != classes.shape:
                raise ValueError(
                    f"PopulationRiskEstimate: `y_train` holds labels of shape "
                    f"{self.y_train.shape[1:]} per example, but the model "
                    f"predicts classes of shape {classes.shape[1:]}."
                )
            self._accuracy = float(np.mean(classes == self.y_train))
            if st["first_accuracy"] is None:
                st["first_accuracy"] = self._accuracy
        previous, self._classes = self._classes, classes
        if previous is None or previous.shape != classes.shape:
            st["changes"].append(None)
            return float("nan")
        changes = float(np.mean(classes != previous))
        st["changes"].append(changes)
        last = len(st["changes"]) - 1
        before, now = self._smoothed(last - 1), self._smoothed(last)
        if not st["ready"] and math.isfinite(before) and now > before:
            st["ready"] = True  # the previous epoch was the first local minimum
            st["wave_from"], st["wave_base"] = last - 1, before
        if st["ready"] and not st["wave"] and st["wave_from"] is not None:
            # A strong wave: within `wave_horizon` epochs of the minimum the
            # smoothed count rises by `wave_rise` standard errors of a mean
            # of `window` Poisson counts, sqrt((count at the minimum + 1) / window).
            size, window = classes.size, self.label_wave_window
            if last - st["wave_from"] <= self.wave_horizon and math.isfinite(now):
                rise = (now - st["wave_base"]) * size
                noise = math.sqrt((st["wave_base"] * size + 1.0) / window)
                st["wave"] = rise >= self.wave_rise * noise
        return changes

    def _smoothed(self, index):
        """Trailing moving average of `label_wave_window` prediction
        changes ending at `index` (NaN until that many are known)."""
        window = self.label_wave_window
        values = self._state["changes"][max(index - window + 1, 0):index + 1]
        if index < 0 or len(values) < window or any(v is None for v in values):
            return float("nan")
        return sum(values) / window

    def _first_epoch(self, loss, updates):
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
                f"the {self._n} training examples; check `dataset_size`.",
                stacklevel=3,
            )
        if self.x_train is None:
            outputs = getattr(self.model, "outputs", None) or []
            shape = getattr(outputs[0], "shape", None) if len(outputs) == 1 else None
            if shape is not None and len(shape) >= 2 and (shape[-1] or 0) > 1:
                warnings.warn(
                    "PopulationRiskEstimate: the model has several outputs per "
                    "example (a classifier?) but no `x_train` was given, so "
                    "prediction changes are not counted and early stopping "
                    "may begin at epoch 1 (`pop_risk_ready` = 1), on the loss "
                    "estimate alone; under label noise that stops before the "
                    "accuracy peaks. Pass `x_train=` (training inputs) to "
                    "hold stopping back until memorisation begins.",
                    stacklevel=3,
                )

    # ------------------------------------------------------------ backup

    def _save_backup(self):
        if self.backup_dir is None:
            return
        import numpy as np

        os.makedirs(self.backup_dir, exist_ok=True)
        path = os.path.join(self.backup_dir, _CLASSES_FILE)
        if self._classes is not None:
            with open(path + ".tmp", "wb") as f:
                np.save(f, self._classes)
            os.replace(path + ".tmp", path)
        elif os.path.exists(path):
            os.remove(path)
        path = os.path.join(self.backup_dir, _STATE_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(self._state, f)
        os.replace(path + ".tmp", path)

    def _load_backup(self, iterations):
        """The saved state if it belongs to `iterations`, else None."""
        if self.backup_dir is None:
            return None
        path = os.path.join(self.backup_dir, _STATE_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            state = json.load(f)
        if state.get("iterations") != iterations or state.get("first_loss") is None:
            return None
        state = {**_fresh_state(iterations), **state}  # a state saved by keras_snr < 0.2
        import numpy as np

        classes = os.path.join(self.backup_dir, _CLASSES_FILE)
        self._classes = np.load(classes) if os.path.exists(classes) else None
        return state


def _fresh_state(iterations):
    return {
        "iterations": iterations,
        "first_loss": None,
        "gap": 0.0,
        "reliable": True,
        "ready": False,
        "wave": False,
        "wave_from": None,
        "wave_base": None,
        "first_accuracy": None,
        "changes": [],
        "best": math.inf,
        "warned_nan": False,
        "restarted": False,
    }


class ValidationFreeStopping(keras.callbacks.EarlyStopping):
    """Early stopping without a validation set: the recommended recipe with
    `keras_snr.PopulationRiskEstimate`.

    A `keras.callbacks.EarlyStopping(monitor="pop_risk", mode="min",
    patience=patience, restore_best_weights=restore_best_weights)` that
    counts an epoch only once `pop_risk_ready` is 1 in the logs and stops
    only once `pop_risk_wave` is 1: for a classifier whose
    `PopulationRiskEstimate` has `x_train`, it counts from the epoch after
    the first local minimum of the smoothed prediction changes (Label Wave)
    and may stop once a strong rise after it has confirmed that
    memorisation began (until then `patience` is not enforced: without such
    a wave it never stops early); otherwise it counts and may stop from
    epoch 1. It keeps the weights of the epoch with the lowest `pop_risk`
    among those it counted (Keras restores them at the end of training,
    stopped or not); `best_epoch` is that epoch (0-based), or the last
    epoch trained when none was counted (the model then keeps its latest
    weights). List it after the `PopulationRiskEstimate` in `callbacks=`.

    Without a wave the lowest `pop_risk` is often the first counted epoch
    (`pop_risk` rises as the training loss falls), so a run whose accuracy
    kept rising is rolled back to it: on the benchmark's v4 held-out tasks
    that cost more than 2 % accuracy on about a third of the cells. If the
    history shows `pop_risk_wave` at 0 throughout, prefer the latest
    weights (a `keras.callbacks.ModelCheckpoint` saves them each epoch).

    Args:
        patience: Epochs without a lower `pop_risk` before stopping.
            Defaults to 10 (the value the benchmark used).
        restore_best_weights: As in `EarlyStopping`. Defaults to True.
        verbose: As in `EarlyStopping`.
    """

    def __init__(self, patience=10, restore_best_weights=True, verbose=0):
        if _positive_int("patience", patience) is None:
            raise ValueError("`patience` must be a positive integer; received patience=None")
        super().__init__(monitor="pop_risk", mode="min", min_delta=0, patience=patience,
                         restore_best_weights=restore_best_weights, verbose=verbose)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "pop_risk_ready" not in logs or "pop_risk_wave" not in logs:
            raise ValueError(
                "ValidationFreeStopping reads `pop_risk`, `pop_risk_ready` and "
                "`pop_risk_wave`, which keras_snr.PopulationRiskEstimate "
                "writes; list a PopulationRiskEstimate before it in "
                f"`callbacks=`. Logs hold: {sorted(logs)}."
            )
        self._last_epoch = epoch
        if logs["pop_risk_ready"] < 0.5:
            return
        if logs["pop_risk_wave"] >= 0.5:
            super().on_epoch_end(epoch, logs)
            return
        patience, self.patience = self.patience, math.inf  # count, but do not stop yet
        try:
            super().on_epoch_end(epoch, logs)
        finally:
            self.patience = patience

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._last_epoch = None

    def on_train_end(self, logs=None):
        if self.best is None and self._last_epoch is not None:
            self.best_epoch = self._last_epoch  # nothing counted: the latest weights stay
        super().on_train_end(logs)
