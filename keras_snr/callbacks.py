"""Callbacks that read SNRAdam's statistics during `fit()`.

`GateLogger` logs the gate; `PopulationRiskEstimate` adds an estimate of the
held-out loss, computed from the training run alone, to the epoch logs under
`pop_risk`; `ValidationFreeStopping` stops on it. The formulas are the pure
functions of `keras_snr.population_risk`.
"""

import json
import math
import numbers
import os
import warnings

import keras
from keras import ops

from keras_snr import _distributed as D
from keras_snr import population_risk as PR
from keras_snr._backup import EpochBackup
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
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; received {name}={value!r}")
    return int(value)


# Loss names (lower case, without underscores) that tell classification from
# regression, for `task=None`.
_CLASSIFICATION_LOSSES = ("crossentropy", "hinge", "focal", "kldivergence", "kld")
_REGRESSION_LOSSES = ("meansquared", "meanabsolute", "mse", "mae", "mape", "msle", "huber",
                      "logcosh", "cosinesimilarity", "poisson")


def _infer_task(loss):
    """"classification", "regression" or None, from `model.loss`."""
    if isinstance(loss, str):
        name = loss
    elif isinstance(loss, keras.losses.Loss):
        name = getattr(loss, "fn", None).__name__ if hasattr(loss, "fn") else type(loss).__name__
    else:
        name = getattr(loss, "__name__", "")
    name = name.lower().replace("_", "")
    if any(key in name for key in _CLASSIFICATION_LOSSES):
        return "classification"
    if any(name.startswith(key) or name == key for key in _REGRESSION_LOSSES):
        return "regression"
    return None


def _binary_threshold(loss):
    """For a binary cross-entropy loss (one sigmoid output per label), the
    output above which a label is predicted 1: 0 for logits, 0.5 for
    probabilities; None for any other loss."""
    name = loss if isinstance(loss, str) else getattr(getattr(loss, "fn", loss), "__name__", "")
    if "binary" not in name.lower():
        return None
    return 0.0 if getattr(loss, "_fn_kwargs", {}).get("from_logits", False) else 0.5


def _take(x, keep):
    """Rows `keep` of an array or of every array in a structure."""
    import numpy as np

    return keras.tree.map_structure(lambda a: np.asarray(a)[keep], x)


def _sample_rows(x_train, y_train, sample_size, seed):
    """A random subset of at most `sample_size` rows of `x_train` (and the
    same rows of `y_train`), in their original order."""
    import numpy as np

    leaves = keras.tree.flatten(x_train)
    lengths = {int(np.shape(leaf)[0]) if np.ndim(leaf) else 0 for leaf in leaves}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(
            "`x_train` must be an array (or a structure of arrays) of training inputs "
            "with the examples along the first axis, all of the same length; received "
            f"lengths {sorted(lengths)}."
        )
    (length,) = lengths
    if y_train is not None and (np.ndim(y_train) == 0 or len(y_train) != length):
        raise ValueError(
            f"`y_train` must hold the targets of the {length} examples of `x_train` "
            f"along its first axis; received shape {np.shape(y_train)}."
        )
    keep = np.sort(np.random.default_rng(seed).permutation(length)[:sample_size])
    return length, _take(x_train, keep), None if y_train is None else np.asarray(y_train)[keep]


def _labels(y, pred, binary=False):
    """Integer class labels from the targets `y` of a classifier predicting
    `pred`: `y` itself (one label per predicted class axis, or per output
    when `binary`) or the argmax of one-hot targets shaped like the
    predictions."""
    if binary and y.size == pred.size:
        return y.reshape(pred.shape)
    if not binary and y.shape == pred.shape:
        return y.argmax(-1)
    if not binary and y.size == pred[..., 0].size and y.shape[:pred.ndim - 1] == pred.shape[:-1]:
        return y.reshape(pred.shape[:-1])
    raise ValueError(
        f"PopulationRiskEstimate: `y_train` holds targets of shape {y.shape[1:]} per "
        f"example, but the model predicts {pred.shape[1:]}; for a classifier pass integer "
        "labels (one per predicted class axis) or one-hot targets shaped like the outputs.")


def _epoch_sums(optimizer, alpha):
    """A compiled function returning, as of the last update, the sums over
    all trained coordinates of `(A, m_hat**2, alpha s_hat, open, 1)`, with
    `A` the optimism rate of `population_risk.gap_update`."""
    c = (1.0 - optimizer.beta_1) / (1.0 + optimizer.beta_1)
    eps = optimizer.epsilon

    def reduce():
        stats = optimizer.statistics()
        sums = [0.0] * 5
        for m, v, s, q in zip(stats.momentum, stats.velocity, stats.noise_variance, stats.gate):
            if m is None:
                continue
            m, v, s, q = (ops.cast(x, "float32") for x in (m, v, s, q))
            noise = alpha * s
            m2 = ops.square(m)
            capped = ops.minimum(1.0, ops.sqrt(ops.relu(m2 - c * s) / (noise + _TINY)))
            terms = (q / (ops.sqrt(v) + eps) * noise * capped, m2, noise,
                     ops.cast(ops.greater(m2, noise), "float32"), ops.ones_like(m))
            sums = [total + ops.sum(term) for total, term in zip(sums, terms)]
        return ops.stack([ops.cast(x, "float32") for x in sums])

    return compile_reader(reduce, [optimizer])


_TINY = 1e-30


def _sample_pass(model, x, y, task, batch_size, loss_fn):
    """`(classes, end_loss, accuracy)` of `model` on the sample `x` with
    targets `y` (None where not available): one forward pass. The predicted
    classes are the argmax of the last axis, or, under a binary
    cross-entropy, each output thresholded (one label per output)."""
    import numpy as np

    length, chunks = len(keras.tree.flatten(x)[0]), []
    for start in range(0, length, batch_size):
        pred = model.predict_on_batch(
            keras.tree.map_structure(lambda a: a[start:start + batch_size], x))
        if not hasattr(pred, "shape"):
            raise ValueError("PopulationRiskEstimate(x_train=...) needs a model with one "
                             f"output tensor; this model returns {type(pred).__name__}.")
        rows = min(batch_size, length - start)
        chunks.append(D.local_rows(model, np.asarray(ops.convert_to_numpy(pred)), rows))
    pred = np.concatenate(chunks)
    classifier = task == "classification"
    threshold = _binary_threshold(getattr(model, "loss", None)) if classifier else None
    if classifier and threshold is None and (pred.ndim < 2 or pred.shape[-1] < 2):
        raise ValueError(
            "PopulationRiskEstimate: the model is a classifier but predicts "
            f"{pred.shape[1:]} per example, with no class axis of two or more entries to "
            "follow; compile a binary classifier with a binary cross-entropy, or pass "
            "`task='regression'`.")
    labels = None if y is None or not classifier else _labels(y, pred, threshold is not None)
    end_loss = None if y is None else float(ops.convert_to_numpy(loss_fn(y, pred)))
    if not classifier:
        return None, end_loss, None
    if not np.all(np.isfinite(pred)):
        return None, math.nan, None
    classes = pred.argmax(-1) if threshold is None else (pred > threshold).astype("int32")
    accuracy = None if labels is None else float(np.mean(classes == labels))
    return classes, end_loss, accuracy


def _as_float32(y, pred):
    """Targets and predictions as tensors, floats in float32: what a Keras
    loss computes on."""
    y, pred = ops.convert_to_tensor(y), ops.convert_to_tensor(pred)
    if "float" in keras.backend.standardize_dtype(y.dtype):
        y = ops.cast(y, "float32")
    return y, ops.cast(pred, "float32")


def _sample_loss(model):
    """The model's training loss as `f(y, pred) -> scalar`: for one loss (a
    name, a `keras.losses.Loss` or a function) without loss weights, that
    loss compiled once (`jax.jit`, `tf.function`; eager on torch), which
    makes the sample's loss cheap; otherwise Keras's own compiled loss,
    called eagerly."""
    loss = getattr(model, "loss", None)
    compiled = getattr(model, "_compile_loss", None)
    weights = getattr(compiled, "_user_loss_weights", "unknown")
    if compiled is None or weights is None:
        fn = None
        if isinstance(loss, str):
            try:
                fn = keras.losses.get(loss)
            except ValueError:
                fn = None
        elif isinstance(loss, keras.losses.Loss) or (callable(loss) and not isinstance(loss, type)):
            fn = loss
        if fn is not None:
            return compile_reader(lambda y, pred: ops.mean(fn(*_as_float32(y, pred))), [])
    if compiled is None:
        raise ValueError("PopulationRiskEstimate(y_train=...) needs a compiled model: call "
                         "`model.compile(optimizer, loss)` first.")
    return lambda y, pred: ops.mean(compiled(y, pred))


def _check_arguments(dataset_size, batch_size, x_train, y_train, task, sample_size,
                     label_wave_window, wave_rise, wave_horizon, prediction_batch_size,
                     backup_dir, monitor_loss):
    """PopulationRiskEstimate's arguments, or a clear error."""
    _positive_int("dataset_size", dataset_size)
    _positive_int("batch_size", batch_size)
    if batch_size >= dataset_size:
        raise ValueError(
            f"`batch_size` ({batch_size}) must be smaller than `dataset_size` "
            f"({dataset_size}): with full-batch training there is no sampling noise "
            "to estimate the optimism from.")
    if task not in (None, "classification", "regression"):
        raise ValueError("`task` must be 'classification', 'regression' or None; "
                         f"received task={task!r}")
    if isinstance(wave_rise, bool) or not isinstance(wave_rise, numbers.Real) \
            or not 0 <= wave_rise < math.inf:
        raise ValueError(f"`wave_rise` must be a number >= 0; received wave_rise={wave_rise!r}")
    for name, value in (("sample_size", sample_size), ("label_wave_window", label_wave_window),
                        ("wave_horizon", wave_horizon),
                        ("prediction_batch_size", prediction_batch_size)):
        _positive_int(name, value)
    if backup_dir is not None and not isinstance(backup_dir, (str, os.PathLike)):
        raise ValueError(f"`backup_dir` must be a path or None; received backup_dir={backup_dir!r}")
    if not isinstance(monitor_loss, str):
        raise ValueError(f"`monitor_loss` must be a string; received monitor_loss={monitor_loss!r}")
    if y_train is not None and x_train is None:
        raise ValueError("`y_train` holds the targets of `x_train`; pass `x_train=` too.")


class PopulationRiskEstimate(keras.callbacks.Callback):
    """Estimate the held-out loss each epoch from the training run alone.

    At every epoch end it writes to the logs (where History, the progress
    bar, CSVLogger, TensorBoard and later callbacks see them):

    - `pop_risk`: the estimated loss on unseen data whose labels are drawn
      like the training labels (noisy where they are noisy);
    - `pop_risk_low`, `pop_risk_high`: an interval for it;
    - `pop_risk_reliable`: 1.0 when the logged quantities can tell the
      held-out loss, 0.0 when they cannot (the training loss has collapsed
      below a fifth of the first epoch's, the estimated optimism is large,
      a loss or prediction was not finite, or the estimate restarted);
    - with `x_train` and `y_train` for a classifier: `pop_accuracy`,
      `pop_accuracy_low`, `pop_accuracy_high`, the same for the accuracy
      on unseen data labelled like the training data, and `memorization`:
      1.0 once a strong wave of prediction changes on the training sample
      says that the model began to memorise (Label Wave).

    With `diagnostics=True` also `pop_risk_gap` (the optimism `G`),
    `pop_risk_stop` (the score `ValidationFreeStopping` ranks epochs by),
    `memorization_ready` (Label Wave's first minimum passed),
    `prediction_changes` and `prediction_changes_smoothed`,
    `train_loss_end` (the loss on the sample at the epoch's end),
    `signal_fraction` and `gradient_snr`.

    With `L` the epoch-average training loss Keras logs, `L_end` the loss on
    the `x_train` sample at the epoch's end (`L` without `y_train`), `L_1`
    the first epoch's `L` and `G` the optimism accumulated from `SNRAdam`'s
    statistics:

    ```
    pop_risk = (L_end + min(L_1, L_end + G)) / 2
    pop_risk_low, pop_risk_high = min(L_end, L), max(L_1, L_end + G)
    pop_risk_reliable = L_end >= 0.2 * L_1 and L_end + G <= 2 * L_1
    ```

    Each formula is a small function of `keras_snr.population_risk`;
    `docs/population_risk.md` says how they were chosen and how well they
    held on tasks they were not chosen on. It reads `SNRAdam`'s
    statistics (one compiled reduction per epoch) and, with `x_train`, runs
    one forward pass over at most `sample_size` training examples; the
    training step is untouched. To watch a plain AdamW run, train with
    `keras_snr.SNRAdam(gate=None)`.

    Example:

    ```python
    estimate = keras_snr.PopulationRiskEstimate(
        dataset_size=len(x_train), batch_size=64, x_train=x_train, y_train=y_train)
    model.compile(optimizer=keras_snr.SNRAdam(), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, batch_size=64, epochs=30,
              callbacks=[estimate, keras_snr.ValidationFreeStopping(estimate)])
    ```

    Args:
        dataset_size: Number of training examples `n`.
        batch_size: Examples behind one optimizer step (the global batch
            under data parallelism, before gradient accumulation).
        x_train: Training inputs (all or a random subset), as the model
            takes them. Needed for `memorization` and the accuracy.
        y_train: Their targets, as given to `fit()`: with them the
            end-of-epoch training loss replaces the epoch average Keras logs
            (which lags the weights), and a classifier's accuracy is
            estimated. A classifier's predicted class is the argmax of its
            outputs or, under a binary cross-entropy, each output
            thresholded (at 0 for logits, 0.5 for probabilities).
        task: `"classification"`, `"regression"` or None to infer it from
            the compiled loss (an error says when it cannot).
        sample_size: At most this many examples of `x_train` are used.
        label_wave_window: Epochs of the moving average of prediction changes.
        wave_rise: Rise after Label Wave's minimum, in standard errors,
            that confirms a wave.
        wave_horizon: Epochs after the minimum within which it must come.
        prediction_batch_size: Examples per `predict_on_batch` call.
        seed: Seed of the `x_train` subsample.
        backup_dir: Directory where this callback (and a
            `ValidationFreeStopping` reading it) saves its state at every
            epoch end, so that a run resumed by
            `keras.callbacks.BackupAndRestore` continues exactly. List both
            before `BackupAndRestore` in `callbacks=`.
        diagnostics: Also log the diagnostic keys above.
        monitor_loss: Key of the training loss in the logs.
    """

    def __init__(self, dataset_size, batch_size, x_train=None, y_train=None, task=None,
                 sample_size=256, label_wave_window=5, wave_rise=2.0, wave_horizon=10,
                 prediction_batch_size=1024, seed=0, backup_dir=None, diagnostics=False,
                 monitor_loss="loss"):
        super().__init__()
        _check_arguments(dataset_size, batch_size, x_train, y_train, task, sample_size,
                         label_wave_window, wave_rise, wave_horizon, prediction_batch_size,
                         backup_dir, monitor_loss)
        self.dataset_size, self.batch_size = int(dataset_size), int(batch_size)
        self.x_train = self.y_train = None
        if x_train is not None:
            length, self.x_train, self.y_train = _sample_rows(x_train, y_train, sample_size, seed)
            if length > self.dataset_size:
                raise ValueError(
                    f"`x_train` has {length} examples, more than `dataset_size` "
                    f"({dataset_size}); pass the number of training examples.")
        self.task, self.sample_size, self.seed = task, sample_size, seed
        self.label_wave_window, self.wave_rise = label_wave_window, float(wave_rise)
        self.wave_horizon, self.prediction_batch_size = wave_horizon, prediction_batch_size
        self.backup_dir = None if backup_dir is None else os.fspath(backup_dir)
        self.diagnostics, self.monitor_loss = bool(diagnostics), monitor_loss
        self.signals = None  # this epoch's inputs of ValidationFreeStopping
        self._state = None  # kept across fit() calls
        self._classes = None  # predicted classes on the sample at the last epoch end
        self._backup = None
        self._training, self._sample_loss = False, None

    # ------------------------------------------------------------ set-up

    def on_train_begin(self, logs=None):
        optimizers = _require_snr_optimizers(self)
        if len(optimizers) > 1:
            raise ValueError("PopulationRiskEstimate supports one SNRAdam per model; the "
                             f"model's optimizer holds {len(optimizers)}.")
        self._opt = optimizers[0]
        k = self._opt.gradient_accumulation_steps or 1
        self._alpha = finite_dataset_alpha(self.batch_size, self.dataset_size, k)
        self._task = self.task or _infer_task(getattr(self.model, "loss", None))
        if self._task is None and self.x_train is not None:
            raise ValueError(
                "PopulationRiskEstimate could not tell from the compiled loss "
                f"({getattr(self.model, 'loss', None)!r}) whether the model is a classifier; "
                "pass `task='classification'` or `task='regression'`.")
        self._reduce, self._sample_loss, self._started, self._training = None, None, False, True
        if self.backup_dir is not None:  # one set of files per process
            rank = D.process_index()
            self._backup = EpochBackup(self.backup_dir, f"estimate{'' if rank == 0 else rank}")

    def on_train_end(self, logs=None):
        self._training = False

    def on_test_begin(self, logs=None):
        self._warn_outside_fit("evaluate()")

    def on_predict_begin(self, logs=None):
        self._warn_outside_fit("predict()")

    def _warn_outside_fit(self, where):
        if not self._training:
            warnings.warn(f"PopulationRiskEstimate does nothing in {where}: it estimates the "
                          "held-out loss from a training run. Pass it to `fit()`.", stacklevel=3)

    def on_epoch_begin(self, epoch, logs=None):
        # After every on_train_begin: BackupAndRestore has restored the optimizer.
        if not self._started:
            self._started = True
            self._resume(epoch)

    def _resume(self, epoch):
        iterations = int(_host(self._opt.iterations))
        if self._state is not None and self._state["iterations"] == iterations:
            self._state["next_epoch"] = epoch  # a further fit() of the same run
            return
        found = self._backup.load(iterations, epoch) if self._backup else None
        if found is not None:
            self._state, arrays = found
            self._classes = arrays.get("classes")
            return
        self._state, self._classes = _fresh_state(iterations, epoch), None
        if iterations > 0:
            self._state["restarted"] = True
            hint = ("list PopulationRiskEstimate before BackupAndRestore in `callbacks=`"
                    if self._backup else "pass `backup_dir=` to resume it with BackupAndRestore")
            warnings.warn(
                f"PopulationRiskEstimate: the optimizer has already made {iterations} updates "
                "and no saved estimate matches them; the estimate restarts without its first "
                f"epoch and `pop_risk_reliable` is 0 for this run ({hint}).", stacklevel=3)

    # ------------------------------------------------------------ per epoch

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self.monitor_loss not in logs:
            raise KeyError(f"PopulationRiskEstimate: the epoch logs have no "
                           f"`{self.monitor_loss}`; available keys: {sorted(logs)}. Pass "
                           "`monitor_loss=` naming the training loss.")
        if not self._started:
            self._started = True
            self._resume(epoch)
        if self._reduce is None:
            self._reduce = _epoch_sums(self._opt, self._alpha)
        # the loss of the whole run's batch: under torch.distributed each
        # process logs its own
        st, loss = self._state, D.mean_over_processes(float(logs[self.monitor_loss]))
        iterations = int(_host(self._opt.iterations))
        updates, st["iterations"], st["next_epoch"] = iterations - st["iterations"], iterations, epoch + 1
        rate, m2, noise, signal, count = (float(x) for x in ops.convert_to_numpy(self._reduce()))
        st["gap"] = PR.gap_update(st["gap"], _host(self._opt.learning_rate),
                                  float(self._opt.weight_decay or 0.0), updates, rate)
        classes, end_loss, accuracy = self._sample_pass()
        finite = all(math.isfinite(x) for x in (loss, st["gap"], end_loss or 0.0))
        if st["finite"] and not finite:
            warnings.warn(f"PopulationRiskEstimate: non-finite training loss ({loss}), "
                          f"predictions or optimizer statistics at epoch {epoch + 1}; the "
                          "estimate is unreliable for the rest of the run.", stacklevel=2)
        st["finite"] = st["finite"] and finite
        if st["first_loss"] is None:
            self._first_epoch(loss, accuracy)
            D.warn_if_weights_differ(self.model)
        first, used = st["first_loss"], loss if end_loss is None else end_loss
        st["ranked"] = st["ranked"] and loss >= PR.RANKED_LOSS_FRACTION * first
        if classes is not None and finite:
            previous, self._classes = self._classes, classes
            changed = None if previous is None or previous.shape != classes.shape \
                else float((classes != previous).mean())
            st["wave"] = PR.wave_update(st["wave"], changed, classes.size, self.label_wave_window,
                                        self.wave_rise, self.wave_horizon)
        estimate, low, high = PR.loss_estimate(loss, used, first, st["gap"])
        reliable = st["finite"] and not st["restarted"] and PR.is_reliable(used, first, st["gap"])
        logs.update(pop_risk=estimate, pop_risk_low=low, pop_risk_high=high,
                    pop_risk_reliable=float(reliable))
        if accuracy is not None:
            if st["first_accuracy"] is None:  # the first epoch's predictions were not finite
                st["first_accuracy"] = accuracy
            pop_acc = PR.accuracy_estimate(accuracy, st["first_accuracy"])
            logs.update(zip(("pop_accuracy", "pop_accuracy_low", "pop_accuracy_high"), pop_acc))
        classifier = self._task == "classification" and self.x_train is not None
        if classifier:
            logs["memorization"] = float(st["wave"]["wave"])
        score = PR.stop_score(loss, st["gap"])
        self.signals = {"iterations": iterations, "finite": finite, "score": score,
                        "ready": st["wave"]["ready"], "wave": st["wave"]["wave"],
                        "ranked": st["ranked"], "end_loss": end_loss, "classifier": classifier}
        if self.diagnostics:
            changes = st["wave"]["changes"]
            logs.update(pop_risk_gap=st["gap"], pop_risk_stop=score,
                        memorization_ready=float(st["wave"]["ready"]),
                        signal_fraction=signal / max(count, 1.0), gradient_snr=m2 / (noise + _TINY))
            if classifier:
                last = changes[-1] if changes and classes is not None else None
                logs["prediction_changes"] = math.nan if last is None else last
                logs["prediction_changes_smoothed"] = PR.smoothed(
                    changes, len(changes) - 1, self.label_wave_window)
            if end_loss is not None:
                logs["train_loss_end"] = end_loss
        if self._backup:
            self._backup.save(st, {} if self._classes is None else {"classes": self._classes})

    def _first_epoch(self, loss, accuracy):
        st = self._state
        st["first_loss"], st["first_accuracy"] = loss, accuracy
        if not loss > 0:
            st["finite"] = False
            warnings.warn(f"PopulationRiskEstimate: the first epoch's training loss is {loss}; "
                          "the estimate assumes a positive loss and is unreliable for this run.",
                          stacklevel=3)

    def _sample_pass(self):
        """`(classes, end_loss, accuracy)` on the `x_train` sample (None
        where not available): one forward pass."""
        if self.x_train is None:
            return None, None, None
        return _sample_pass(self.model, self.x_train, self.y_train, self._task,
                            self.prediction_batch_size, self._loss_fn())

    def _loss_fn(self):
        if self._sample_loss is None:
            self._sample_loss = _sample_loss(self.model)
        return self._sample_loss

    # ------------------------------------------------------------ rollback

    def _snapshot(self):
        return json.loads(json.dumps(self._state)), self._classes

    def _rollback(self, snapshot):
        """Return to the state of an earlier epoch whose weights were
        restored; the optimizer keeps its iterations."""
        self._state, self._classes = json.loads(json.dumps(snapshot[0])), snapshot[1]
        self._state["iterations"] = int(_host(self._opt.iterations))


def _fresh_state(iterations, epoch):
    return {"iterations": iterations, "next_epoch": epoch, "first_loss": None,
            "first_accuracy": None, "gap": 0.0, "finite": True, "ranked": True,
            "restarted": False, "wave": PR.new_wave()}


class ValidationFreeStopping(keras.callbacks.Callback):
    """Early stopping without a validation set, reading a
    `PopulationRiskEstimate`.

    For a classifier whose estimate has `x_train` and `y_train`: epochs
    count from the one after Label Wave's first minimum of prediction
    changes on the training sample; the best is the counted epoch with the
    lowest `pop_risk_stop` (training loss plus estimated optimism). Earlier
    weights are kept only on evidence that the model memorised since: a
    strong wave of prediction changes (`memorization` = 1) and an
    end-of-epoch training loss fallen to `memorization_ratio` times its
    value at the best epoch or below. With that evidence, training stops
    once `pop_risk_stop` has not improved for `patience` counted epochs,
    and the best epoch's weights are restored (also when training runs to
    the end); without it, the model keeps its latest weights, as if trained
    to the end. A non-finite loss or prediction stops training at once and
    restores the best epoch's weights, never non-finite ones.

    For a regression model, or without `x_train` and `y_train`, it keeps the
    latest weights (no rule tried there was safe: `docs/population_risk.md`)
    and only guards against a non-finite loss; a warning says so.

    After `fit()`, `best_epoch` is the epoch whose weights the model holds
    (0-based), `stopped_epoch` the epoch training stopped at (0 if it ran to
    the end) and `restored` whether earlier weights were restored; the
    estimate is rolled back with the weights, so a further `fit()`
    continues from a consistent state. With `use_ema=True` the moving
    average of the best epoch is restored, as Keras would have kept it.

    Example:

    ```python
    estimate = keras_snr.PopulationRiskEstimate(
        dataset_size=len(x_train), batch_size=64, x_train=x_train, y_train=y_train)
    stopping = keras_snr.ValidationFreeStopping(estimate)
    model.fit(x_train, y_train, batch_size=64, epochs=100, callbacks=[estimate, stopping])
    print(stopping.best_epoch, stopping.restored)
    ```

    Args:
        estimate: The `keras_snr.PopulationRiskEstimate` of the same
            `fit()`, listed before this callback.
        patience: Counted epochs without a lower `pop_risk_stop` before
            stopping (once memorisation is evident).
        memorization_ratio: In `(0, 1)`: how far the end-of-epoch training
            loss must fall below its value at the best epoch to count as
            memorisation.
        verbose: 1 to print when it stops or restores.
    """

    def __init__(self, estimate=None, patience=10, memorization_ratio=0.15, verbose=0):
        super().__init__()
        if not isinstance(estimate, PopulationRiskEstimate):
            raise TypeError(
                "ValidationFreeStopping reads a keras_snr.PopulationRiskEstimate; pass the "
                "one you give to `fit()`: `ValidationFreeStopping(estimate)`; received "
                f"{type(estimate).__name__}.")
        self.estimate, self.patience = estimate, _positive_int("patience", patience)
        if isinstance(memorization_ratio, bool) or not isinstance(memorization_ratio, numbers.Real) \
                or not 0 < memorization_ratio < 1:
            raise ValueError("`memorization_ratio` must be in (0, 1); received "
                             f"memorization_ratio={memorization_ratio!r}")
        self.memorization_ratio, self.verbose = float(memorization_ratio), verbose
        self.best_epoch = self.stopped_epoch = 0
        self.restored = False

    def on_train_begin(self, logs=None):
        self._state, self._best, self._last = None, None, None
        self.best_epoch = self.stopped_epoch = 0
        self.restored = False
        estimate = self.estimate
        if estimate.x_train is None or estimate.y_train is None or estimate._task != "classification":
            warnings.warn(
                "ValidationFreeStopping restores earlier weights only for a classifier whose "
                "PopulationRiskEstimate has `x_train` and `y_train`; here it keeps the latest "
                "weights and only stops on a non-finite loss.", stacklevel=2)
        backup = estimate._backup  # its per-process file names, for the stopping state
        self._backup = (None if backup is None
                        else EpochBackup(backup.directory, backup.name.replace("estimate", "stopping")))

    def on_epoch_begin(self, epoch, logs=None):
        if self._state is not None:
            return
        self._state = PR.new_stopping()
        if self._backup:  # resumed by BackupAndRestore: the matching state
            found = self._backup.load(int(_host(self.estimate._opt.iterations)), epoch)
            if found is not None:
                saved, arrays = found
                self._state = saved["stopping"]
                if saved["snapshot"] is not None:  # a best epoch, its weights and estimate
                    weights = [arrays[f"w{i}"] for i in range(saved["weights"])]
                    self._best = (weights, (saved["snapshot"], arrays.get("classes")))

    def on_epoch_end(self, epoch, logs=None):
        signals = self.estimate.signals
        if signals is None or signals["iterations"] != int(_host(self.estimate._opt.iterations)):
            raise ValueError("ValidationFreeStopping reads this epoch's PopulationRiskEstimate: "
                             "list the estimate before it in `callbacks=`.")
        self._last = epoch, signals
        if not signals["classifier"]:
            signals = {**signals, "ready": False}  # nothing to rank: guard against NaN only
        self._state, stop = PR.stopping_update(self._state, epoch, signals, self.patience,
                                               self.memorization_ratio)
        if self._state["best_epoch"] == epoch:
            self._best = (self._weights(), self.estimate._snapshot())
        if stop:
            self.model.stop_training = True
            self.stopped_epoch = epoch
        if self._backup:
            self._save(epoch)

    def on_train_end(self, logs=None):
        if self._last is None:
            return
        last, signals = self._last
        epoch, restore = PR.kept_epoch(self._state, last, signals["end_loss"], signals["finite"],
                                       self.memorization_ratio)
        self.best_epoch = epoch
        if restore:
            weights, snapshot = self._best
            self.model.set_weights(weights)
            self.estimate._rollback(snapshot)
            self.restored = True
            if self.verbose:
                print(f"ValidationFreeStopping: restored the weights of epoch {epoch + 1}.")
        elif not signals["finite"]:
            warnings.warn("ValidationFreeStopping: training stopped on a non-finite loss before "
                          "any epoch was counted; the model's weights may be non-finite.",
                          stacklevel=2)
        self._state = None  # a further fit() starts afresh, as EarlyStopping does

    def _weights(self):
        """The model's weights as the user would keep them now: with
        `use_ema`, the moving averages Keras writes in at the end of fit()."""
        opt = self.estimate._opt
        values = [ops.convert_to_numpy(v.value) for v in self.model.weights]
        if opt.use_ema:
            trainable = {id(v): v for v in self.model.trainable_weights}
            for i, v in enumerate(self.model.weights):
                if id(v) in trainable:
                    average = opt._model_variables_moving_average[opt._get_variable_index(v)]
                    if average is not None:
                        values[i] = ops.convert_to_numpy(average.value)
        return values

    def _save(self, epoch):
        st = self.estimate._state
        saved = {"iterations": st["iterations"], "next_epoch": epoch + 1,
                 "stopping": self._state, "snapshot": None, "weights": 0}
        arrays = {}
        if self._best is not None:
            weights, (snapshot, classes) = self._best
            saved.update(snapshot=snapshot, weights=len(weights))
            arrays = {f"w{i}": w for i, w in enumerate(weights)}
            if classes is not None:
                arrays["classes"] = classes
        self._backup.save(saved, arrays)
