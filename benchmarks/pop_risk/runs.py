"""Training runs of `benchmarks/population_risk_benchmark.py` and what they
record (a benchmark helper, not API).

`run_full` trains on 100 % of a task's training set with the library's
`keras_snr.PopulationRiskEstimate` (its logs are recorded as they were
written) and a `Recorder` that sees data no estimator sees. Per epoch it
keeps what every validation-free rule, the oracle and retrain-on-all need to
be replayed offline: the epoch logs, the end-of-epoch loss and accuracy on
the training set, the number of training examples whose predicted class
changed since the previous epoch (Label Wave), the held-out loss with the
training label distribution, clean held-out accuracy and loss, and scalar
reductions of the optimizer's state through the public API
(`optimizer.statistics()`), e.g. for the EB criterion, and the gradient
disparity of Forouzesh & Thiran (`gd`, see `gradient_disparity`) with its
free proxy from the optimizer's noise slot (`gd_slot`). With `arrays=True`
it also returns per-example predicted classes and losses on the training
set (design only, never committed).

`run_holdout` is the anchor that needs a run of its own: the same task
trained on 80 % of the training set, with the other 20 % (same label noise)
as the validation set the user would hold out; it records the validation
loss and accuracy and the same held-out and clean metrics per epoch (and
`gd` on the 80 % it fits).

A task may name a learning-rate schedule (`task["schedule"]`, the v4
generated tasks): "constant" (the default), "cosine" or "step", over the
run's total steps; see `learning_rate`.
"""

import math
import time

import keras
import numpy as np

import keras_snr

TINY = 1e-30
HOLDOUT_FRACTION = 0.2
GD_BATCHES = 5  # s, the batches of the gradient disparity (Forouzesh & Thiran use 5)


# ------------------------------------------------------------------ losses


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def per_example_loss(kind, y, pred):
    """Per-example loss (float64) of predictions `pred`, as Keras computes it
    (squared error averaged over outputs; cross-entropy from logits averaged
    over sequence positions)."""
    pred = np.asarray(pred, "float64")
    if kind == "mse":
        err = (pred - np.asarray(y, "float64").reshape(pred.shape)) ** 2
        return err.reshape(len(err), -1).mean(1)
    lp = log_softmax(pred)
    nll = -np.take_along_axis(lp, np.asarray(y)[..., None].astype(int), -1)[..., 0]
    return nll.reshape(len(nll), -1).mean(1)


def keras_loss(kind):
    if kind == "mse":
        return "mse"
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def learning_rate(task, n, epochs=None):
    """The learning rate of `task` fitted on `n` examples for `epochs`
    epochs (the task's by default): `task["lr"]` for the "constant"
    schedule (or none named), else a `LearningRateSchedule` over the run's
    total steps = epochs * ceil(n / batch): "cosine" decays from `lr` to 0
    (`CosineDecay`, alpha 0), "step" multiplies it by 0.1 at 50 % and again
    at 75 % of the steps (`PiecewiseConstantDecay`)."""
    lr, name = task["lr"], task.get("schedule", "constant")
    total = (epochs or task["epochs"]) * math.ceil(n / task["batch"])
    if name == "constant":
        return lr
    if name == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total, alpha=0.0)
    if name == "step":
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            [total // 2, (3 * total) // 4], [lr, 0.1 * lr, 0.01 * lr])
    raise ValueError(f"unknown learning-rate schedule {name!r}")


def make_optimizer(task, gate, n, epochs=None):
    """The run's `SNRAdam` (`gate=None`: Adam), with the task's learning
    rate or schedule over `epochs` epochs on `n` examples."""
    kwargs = dict(learning_rate=learning_rate(task, n, epochs),
                  weight_decay=task["weight_decay"], beta_2=task.get("beta_2", 0.999))
    if gate is None:
        return keras_snr.SNRAdam(gate=None, **kwargs)
    return keras_snr.SNRAdam(gate=gate, alpha=keras_snr.finite_dataset_alpha(task["batch"], n),
                             **kwargs)


def predict(model, x, chunk=4096):
    return np.concatenate([np.asarray(model.predict_on_batch(x[i:i + chunk]), "float64")
                           for i in range(0, len(x), chunk)])


def metrics(kind, y, pred, prefix):
    """Mean loss (and accuracy for classification) of `pred` against `y`."""
    out = {f"{prefix}loss": float(per_example_loss(kind, y, pred).mean())}
    if kind != "mse":
        out[f"{prefix}acc"] = float(np.mean(pred.argmax(-1) == y))
    return out


# ------------------------------------------------------------ optimizer sums


def optimizer_sums(opt, alpha):
    """Scalar sums over all trained coordinates of the optimizer state
    (NumPy float64; notation of keras_snr/callbacks.py: m, v, s the
    bias-corrected moments, q the gate, P = 1/(sqrt(v) + eps), N = alpha s,
    g2 = max(m^2 - c s, 0), c = (1 - beta_1)/(1 + beta_1))."""
    c = (1.0 - opt.beta_1) / (1.0 + opt.beta_1)
    st = opt.statistics()
    out = {}
    for m, v, s, q in zip(st.momentum, st.velocity, st.noise_variance, st.gate):
        if m is None:
            continue
        m, v, s, q = (np.asarray(x, "float64") for x in (m, v, s, q))
        q = np.broadcast_to(q, m.shape)
        P = 1.0 / (np.sqrt(v) + opt.epsilon)
        N = alpha * s
        m2 = m * m
        g2 = np.maximum(m2 - c * s, 0.0)
        qP = q * P
        red = {
            "count": float(m.size), "m2": m2.sum(), "s": s.sum(), "g2": g2.sum(),
            "q": q.sum(), "qPN": (qP * N).sum(), "qPg2": (qP * g2).sum(),
            "qPm2": (qP * m2).sum(),
            "capped_rate": (qP * N * np.minimum(1.0, np.sqrt(g2 / (N + TINY)))).sum(),
            "signal": float((m2 > N).sum()),
            # EB criterion (Mahsereci et al. 2017): 1 - mean_k m_k^2 / Var(m_k)
            "eb_ratio": np.where(s > 0, m2 / (c * s + TINY), 0.0).sum(),
        }
        for k, val in red.items():
            out[k] = out.get(k, 0.0) + float(val)
    return out


# ----------------------------------------------------- gradient disparity


def gd_batches(rng, n, batch, s=GD_BATCHES):
    """Indices of `s` random batches of `batch` distinct training examples
    (of `n`): disjoint when s * batch <= n (consecutive slices of one
    permutation, as the batches of an epoch), else drawn independently."""
    if s * batch <= n:
        order = rng.permutation(n)
        return [order[i * batch:(i + 1) * batch] for i in range(s)]
    return [rng.permutation(n)[:batch] for _ in range(s)]


def gradient_function(model, kind):
    """`grad(x, y)`: the gradient of the mean training loss of the batch
    `(x, y)` with respect to `model.trainable_variables` at their current
    values, flattened and concatenated in that order (NumPy float64). The
    loss is the one the model is trained with (`keras_loss(kind)`, mean
    over the batch as `compile` reduces it), without regularisation terms
    (the model's `losses`, weight decay); the forward pass is in inference
    mode (`training=False`: no dropout), so that it is a function of the
    weights alone. JAX backend only: `model.stateless_call` under
    `jax.grad`, compiled once per model (keep `grad` for the whole run)."""
    if keras.backend.backend() != "jax":
        raise NotImplementedError("the gradient disparity needs the JAX backend")
    import jax

    loss_fn = keras.losses.MeanSquaredError() if kind == "mse" else keras_loss(kind)

    def loss(trainable, non_trainable, x, y):
        pred, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        return loss_fn(y, pred)

    compiled = jax.jit(jax.grad(loss))

    def grad(x, y):
        g = compiled([v.value for v in model.trainable_variables],
                     [v.value for v in model.non_trainable_variables], x, y)
        return np.concatenate([np.asarray(a, "float64").ravel() for a in g])

    return grad


def mean_pairwise_distance(vectors):
    """The mean over the s(s-1)/2 pairs of rows of the l2 distance between
    them (the gradient disparity of s batch gradients)."""
    v = np.asarray(vectors, "float64")
    d = [np.linalg.norm(v[i] - v[j]) for i in range(len(v)) for j in range(i + 1, len(v))]
    return float(np.mean(d))


def gradient_disparity(grad, x, y, indices):
    """Gradient disparity (Forouzesh & Thiran, "Disparity Between Batches as
    a Signal for Early Stopping", arXiv:2107.06665) on the batches
    `(x[i], y[i])` for `i` in `indices`, with `grad` of
    `gradient_function`: the mean l2 distance between two batches' loss
    gradients, over all pairs of them."""
    return mean_pairwise_distance([grad(x[i], y[i]) for i in indices])


# ------------------------------------------------------------ the recorder


class Recorder(keras.callbacks.Callback):
    """Per-epoch record of a run (see the module docstring). `train` is what
    the model is fitted on, `val` the user's holdout (holdout runs only),
    `test`/`clean_test` the held-out data no estimator sees.

    With `gd` (JAX only), each epoch also records `gd`: the gradient
    disparity on GD_BATCHES random batches of the task's batch size from
    `train`, drawn by a NumPy generator seeded with `gd_seed` at the start
    of training (reproducible, and independent of Keras's random state).
    With `alpha` (full runs), it records the sums of `optimizer_sums` and
    `gd_slot` = sqrt(2 * sum of the bias-corrected noise variance s_hat):
    the root of E||g_1 - g_2||^2 = 2 tr Var(g) for two independent batch
    gradients, which the optimizer's slot estimates for free. Everything
    the recorder computes counts in `recorder_seconds`."""

    def __init__(self, task, train, val=None, arrays=False, alpha=None, gd=True, gd_seed=0):
        super().__init__()
        self.kind = task["loss"]
        self.batch = task["batch"]
        self.train, self.val = train, val
        self.test, self.clean_test = task["test"], task["clean_test"]
        self.alpha = alpha
        self.arrays = arrays
        self.gd, self.gd_seed = gd, gd_seed
        self.epochs, self.pred_classes, self.example_losses = [], [], []

    def on_train_begin(self, logs=None):
        if self.gd and keras.backend.backend() != "jax":
            raise NotImplementedError("Recorder(gd=True) needs the JAX backend")
        self._gd_rng = np.random.default_rng([self.gd_seed, 2107])
        self._grad = None  # built at the first epoch end (recorder time)
        self._prev_pred = None
        self._last_iterations = int(np.asarray(self.model.optimizer.iterations))
        self._t0 = time.perf_counter()
        self.recorder_seconds = 0.0

    def on_epoch_end(self, epoch, logs=None):
        t0 = time.perf_counter()
        opt = self.model.optimizer
        iterations = int(np.asarray(opt.iterations))
        rec = {"epoch": epoch + 1, "iterations": iterations,
               "updates": iterations - self._last_iterations,
               "lr": float(np.asarray(opt.learning_rate)), "loss": float(logs["loss"]),
               "logs": {k: float(v) for k, v in logs.items()}}
        self._last_iterations = iterations
        x, y = self.train
        pred = predict(self.model, x)
        losses = per_example_loss(self.kind, y, pred)
        rec["train_end_loss"] = float(losses.mean())
        if self.kind != "mse":
            cls = pred.argmax(-1)
            rec["train_end_acc"] = float(np.mean(cls == y))
            if self._prev_pred is not None:  # per label entry (sequence position)
                rec["flips"] = int(np.sum(cls != self._prev_pred))
            self._prev_pred = cls
            if self.arrays:
                self.pred_classes.append(cls.astype("int16"))
        if self.arrays:
            self.example_losses.append(losses.astype("float32"))
        rec.update(metrics(self.kind, self.test[1], predict(self.model, self.test[0]),
                           "heldout_"))
        rec.update(metrics(self.kind, self.clean_test[1],
                           predict(self.model, self.clean_test[0]), "clean_"))
        if self.val is not None:
            rec.update(metrics(self.kind, self.val[1], predict(self.model, self.val[0]),
                               "val_"))
        if self.alpha is not None:
            rec["sums"] = optimizer_sums(opt, self.alpha)
            rec["gd_slot"] = float(np.sqrt(2.0 * rec["sums"]["s"]))
        if self.gd:
            if self._grad is None:
                self._grad = gradient_function(self.model, self.kind)
            indices = gd_batches(self._gd_rng, len(x), self.batch)
            rec["gd"] = gradient_disparity(self._grad, x, y, indices)
        self.recorder_seconds += time.perf_counter() - t0
        rec["wall"] = time.perf_counter() - self._t0
        self.epochs.append(rec)


# ------------------------------------------------------------------ runs


def library_callbacks(task, train):
    """The estimating callback of every full-data run: the library's, as a
    user would set it up (`x_train` the training inputs and `y_train` their
    labels or targets; default sample size and wave constants), with its
    diagnostic keys, from which `pop_risk/score_v5.py` replays
    `keras_snr.ValidationFreeStopping` with the library's own functions (a
    live one could stop the run, and the record must go to the end)."""
    n, b = len(train[0]), task["batch"]
    return [keras_snr.PopulationRiskEstimate(dataset_size=n, batch_size=b, x_train=train[0],
                                             y_train=train[1], diagnostics=True)]


def _fit(task, gate, seed, train, val, callbacks, arrays, epochs, gd):
    keras.utils.set_random_seed(seed)
    model = task["build"]()
    n, b = len(train[0]), task["batch"]
    epochs = epochs or task["epochs"]
    model.compile(optimizer=make_optimizer(task, gate, n, epochs), loss=keras_loss(task["loss"]))
    alpha = keras_snr.finite_dataset_alpha(b, n)
    recorder = Recorder(task, train, val=val, arrays=arrays,
                        alpha=alpha if val is None else None, gd=gd, gd_seed=seed)
    t0 = time.perf_counter()
    model.fit(train[0], train[1], batch_size=b, epochs=epochs, shuffle=True,
              verbose=0, callbacks=list(callbacks) + [recorder])
    out = dict(n=n, batch=b, alpha=alpha, params=int(model.count_params()),
               wall=time.perf_counter() - t0, recorder_seconds=recorder.recorder_seconds,
               epochs=recorder.epochs)
    arrays_out = None
    if arrays:
        arrays_out = {"losses": np.stack(recorder.example_losses)}
        if recorder.pred_classes:
            arrays_out["pred"] = np.stack(recorder.pred_classes)
    return out, arrays_out


def run_full(task, gate, seed, arrays=False, epochs=None, gd=True):
    """Train on the whole training set; returns `(record, arrays or None)`.
    `gd=False` skips the gradient disparity (v3's records)."""
    train = task["train"]
    return _fit(task, gate, seed, train, None, library_callbacks(task, train), arrays, epochs,
                gd)


def holdout_split(task, seed):
    """The user's 80/20 split of the (noisy) training set."""
    x, y = task["train"]
    order = np.random.default_rng([seed, 99]).permutation(len(x))
    k = int(round(HOLDOUT_FRACTION * len(x)))
    return (x[order[k:]], y[order[k:]]), (x[order[:k]], y[order[:k]])


def run_holdout(task, gate, seed, epochs=None, gd=True):
    """Train on 80 %, validate on the other 20 %; returns the record.
    `gd=False` skips the gradient disparity (v3's records)."""
    train, val = holdout_split(task, seed)
    record, _ = _fit(task, gate, seed, train, val, [], False, epochs, gd)
    return record
