"""Training runs of `benchmarks/population_risk_validation.py` and what they
record (a benchmark helper, not API).

`run_main` trains one task under one optimizer dynamics with the library's
`keras_snr.PopulationRiskEstimate(diagnostics=True)` and the old estimators'
`legacy.LegacyPopulationRiskEstimate(diagnostics=True)` (keys prefixed
`legacy_`) and a `Recorder`; it returns, per epoch, both callbacks' logs,
the held-out loss (computed by the recorder from data no estimator sees) and
a set of scalar reductions of the optimizer's state read through the public
API (`optimizer.statistics()`, `optimizer.iterations`,
`optimizer.learning_rate`), from which candidate estimators are evaluated
offline (`pop_risk/estimators.py`).

`run_shadows` is the covariance-penalty reference: the same model trained
`1 + K` times side by side in one Keras model (identical initial weights,
identical minibatches; tower 0 on the labels, tower k on labels perturbed by
`eps * z_k`), from which the divergence `df` of the whole training procedure
is estimated by finite differences.
"""

import math
import time

import keras
import numpy as np

import keras_snr

from .legacy import LegacyPopulationRiskEstimate

TINY = 1e-30


# ------------------------------------------------------------------ losses


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_loss(kind, y, pred):
    """Mean loss of predictions `pred` (NumPy, float64), as Keras computes it."""
    pred = np.asarray(pred, "float64")
    if kind == "mse":
        return float(np.mean((pred - y) ** 2))
    lp = log_softmax(pred)
    return float(-np.mean(np.take_along_axis(lp, y[..., None].astype(int), -1)))


def keras_loss(kind):
    if kind == "mse":
        return "mse"
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def make_optimizer(task, gate, n):
    alpha = keras_snr.finite_dataset_alpha(task["batch"], n)
    kwargs = dict(learning_rate=task["lr"], weight_decay=task["weight_decay"],
                  beta_2=task.get("beta_2", 0.999))
    if gate is None:
        return keras_snr.SNRAdam(gate=None, **kwargs)
    return keras_snr.SNRAdam(gate=gate, alpha=alpha, **kwargs)


# ------------------------------------------------------------ the recorder

# Per-variable reductions stored per variable (the rest only as totals).
PER_VARIABLE = ("count", "m2", "s", "g2", "qPN", "qPg2", "qP", "capped_rate", "tic",
                "Ntau", "work0_ns")


def reductions(m, v, s, q, w, st, alpha, c, b, eps):
    """Scalar sums over the coordinates of one variable (NumPy float64).

    `st` is the recorder's per-variable state (w0, w_prev, tau, g0sq, ...),
    already advanced to this epoch."""
    P = 1.0 / (np.sqrt(v) + eps)
    N = alpha * s
    m2 = m * m
    g2 = np.maximum(m2 - c * s, 0.0)
    qP = q * P
    h_ef = b * s + g2  # empirical Fisher: per-example gradient second moment
    tau = st["tau"]
    # gradient-decay saturation: exp(-H tau) ~ |g| / |g(epoch 1)|
    r = np.clip(np.sqrt(g2 / (st["g0sq"] + TINY)), 0.0, 1.0)
    r = np.where(st["g0sq"] > 0, r, 1.0)
    rc = np.clip(r, 1e-12, 1 - 1e-12)
    sat_ratio = np.where(r >= 1 - 1e-12, 1.0, (1 - rc) / (-np.log(rc)))
    cap = np.minimum(1.0, np.sqrt(g2 / (N + TINY)))
    ns = np.minimum(1.0, N / (g2 + TINY))  # per-coordinate noise share
    d0 = w - st["w0"]
    d1 = w - st["w1"]
    ns1 = np.where(st["g0sq"] > 0, np.minimum(1.0, st["N1"] / (st["g0sq"] + TINY)), 1.0)
    nscur = np.where(st["g0sq"] > 0, np.minimum(1.0, N / (st["g0sq"] + TINY)), 1.0)
    work0 = -d0 * st["m1"]
    work1 = -d1 * st["m1"]
    dprev = w - st["w_prev"]
    out = {
        "count": float(m.size),
        "m2": m2.sum(), "s": s.sum(), "v": v.sum(), "g2": g2.sum(),
        "q": np.broadcast_to(q, m.shape).sum(), "P": P.sum(), "qP": np.broadcast_to(qP, m.shape).sum(),
        "qPN": (qP * N).sum(), "qPg2": (qP * g2).sum(), "qPm2": (qP * m2).sum(),
        "PN": (P * N).sum(), "Pg2": (P * g2).sum(),
        "capped_rate": (qP * N * cap).sum(),
        "rsat_rate": (qP * N * r).sum(),
        "signal": float((m2 > N).sum()),
        "eb_ratio": np.where(s > 0, m2 / (c * s + TINY), 0.0).sum(),
        "qP_min_g2N": (qP * np.minimum(g2, N)).sum(),
        "qP_relu_g2mN": (qP * np.maximum(g2 - N, 0.0)).sum(),
        "qPN_ns": (qP * N * ns).sum(),
        "tic": (N / (h_ef + TINY) * -np.expm1(-h_ef * tau)).sum(),
        "tic_nosat": (N / (h_ef + TINY)).sum(),
        "tic_gsat": ((1 - r) * N / (h_ef + TINY)).sum(),
        "Ntau": (N * tau).sum(),
        "Ntau_dec": (N * tau * sat_ratio).sum(),
        "N_min_tau_1h": (N * np.minimum(tau, 1.0 / (h_ef + TINY))).sum(),
        "w2": (w * w).sum(), "d0": (d0 * d0).sum(), "dprev": (dprev * dprev).sum(),
        "m_d0": (m * d0).sum(), "m_dprev": (m * dprev).sum(),
        "g0sq": st["g0sq"].sum(), "tau": tau.sum(),
        # H-free diagonal TIC: E[-xi (w - w0)] = E[-g_S(0) (w - w0)] * N / g_S(0)^2
        "work0": work0.sum(), "work0_ns": (work0 * ns1).sum(),
        "work0_nscur": (work0 * nscur).sum(), "work1_ns": (work1 * ns1).sum(),
        "N_over_g0sq": np.where(st["g0sq"] > 0, N / (st["g0sq"] + TINY), 0.0).sum(),
    }
    return {k: float(val) for k, val in out.items()}


class Recorder(keras.callbacks.Callback):
    """Per-epoch reductions of the optimizer state, the held-out loss (from
    `test`, which only this recorder sees) and the end-of-epoch full
    training loss; per-step batch losses too (for diagnosis only)."""

    def __init__(self, kind, train, test, n, b, clean=None, batch_losses=True):
        super().__init__()
        self.kind, self.train, self.test, self.clean = kind, train, test, clean
        self.n, self.b = n, b
        self.alpha = keras_snr.finite_dataset_alpha(b, n)
        self.epochs = []
        self.batch_losses = [] if batch_losses else None
        self._want_batches = batch_losses

    def on_train_begin(self, logs=None):
        self.opt = self.model.optimizer
        self.vars = self.model.trainable_variables
        self.state = [
            dict(w0=np.asarray(v.numpy(), "float64"), w_prev=np.asarray(v.numpy(), "float64"),
                 tau=np.zeros(v.shape), g0sq=None)
            for v in self.vars
        ]
        self.last_iter = int(self.opt.iterations.numpy())
        self._epoch_batches = []
        self._prev_mean, self._seen = 0.0, 0
        self._t0 = time.perf_counter()
        self.recorder_seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_batches, self._prev_mean, self._seen = [], 0.0, 0

    def on_train_batch_end(self, batch, logs=None):
        if not self._want_batches or logs is None:
            return
        # Keras logs the running (batch-size weighted) mean of the epoch.
        mean = float(logs["loss"])
        size = min(self.b, self.n - self._seen)
        total = mean * (self._seen + size) - self._prev_mean * self._seen
        self._epoch_batches.append(total / size)
        self._prev_mean, self._seen = mean, self._seen + size

    def on_epoch_end(self, epoch, logs=None):
        t0 = time.perf_counter()
        opt = self.opt
        iterations = int(opt.iterations.numpy())
        updates = iterations - self.last_iter
        self.last_iter = iterations
        lr = float(np.asarray(opt.learning_rate))
        c = (1.0 - opt.beta_1) / (1.0 + opt.beta_1)
        st = opt.statistics()
        totals, per_var = {}, {k: [] for k in PER_VARIABLE}
        for i, var in enumerate(self.vars):
            m = st.momentum[i]
            if m is None:
                continue
            m = np.asarray(m, "float64")
            v = np.asarray(st.velocity[i], "float64")
            s = np.asarray(st.noise_variance[i], "float64")
            q = np.asarray(st.gate[i], "float64")
            w = np.asarray(var.numpy(), "float64")
            state = self.state[i]
            P = 1.0 / (np.sqrt(v) + opt.epsilon)
            state["tau"] = state["tau"] + lr * updates * q * P
            if state["g0sq"] is None:
                state["g0sq"] = np.maximum(m * m - c * s, 0.0)
                state["m1"], state["w1"] = m, w
                state["N1"] = self.alpha * s
            red = reductions(m, v, s, q, w, state, self.alpha, c, self.b, opt.epsilon)
            state["w_prev"] = w
            for k, val in red.items():
                totals[k] = totals.get(k, 0.0) + val
            for k in PER_VARIABLE:
                per_var[k].append(red[k])
        pred_tr = self.model.predict(self.train[0], batch_size=4096, verbose=0)
        pred_te = self.model.predict(self.test[0], batch_size=4096, verbose=0)
        rec = {
            "epoch": epoch + 1,
            "iterations": iterations, "updates": updates, "lr": lr,
            "loss": float(logs["loss"]),
            "train_end": np_loss(self.kind, self.train[1], pred_tr),
            "heldout": np_loss(self.kind, self.test[1], pred_te),
            "logs": {k: float(v) for k, v in logs.items()},
            "sums": totals,
            "per_var": per_var,
        }
        if self.kind != "mse":
            rec["heldout_acc"] = float(np.mean(pred_te.argmax(-1) == self.test[1]))
            rec["train_acc"] = float(np.mean(pred_tr.argmax(-1) == self.train[1]))
        if self.clean is not None:
            pred = self.model.predict(self.clean[0], batch_size=4096, verbose=0)
            rec["clean_mse"] = float(np.mean((pred - self.clean[1]) ** 2))
        if self._want_batches:
            rec["batch_losses"] = self._epoch_batches
        self.recorder_seconds += time.perf_counter() - t0
        rec["wall"] = time.perf_counter() - self._t0
        rec["recorder_seconds"] = self.recorder_seconds
        self.epochs.append(rec)


def estimator_callbacks(n, b):
    """The two estimating callbacks of every main run: the library's
    (`pop_risk`, `pop_risk_estimate`, `pop_risk_reliable`, `signal_fraction`,
    `gradient_snr`, `pop_risk_gap_decayed`, `pop_risk_gap_calibrated`) and
    the legacy one (`legacy_pop_risk_capped`, ...)."""
    return [keras_snr.PopulationRiskEstimate(dataset_size=n, batch_size=b, diagnostics=True),
            LegacyPopulationRiskEstimate(dataset_size=n, batch_size=b, diagnostics=True)]


def run_main(task_fn, gate, seed, quick, extra_callbacks=(), epochs=None,
             batch_losses=True, record=True, estimators=True):
    """One run. Returns `(record, model, task)`. With `estimators=False` the
    two estimating callbacks are left out (`extra_callbacks` only)."""
    task = task_fn(seed, quick)
    keras.utils.set_random_seed(seed)
    model = task["build"]()
    (xtr, ytr), test = task["train"], task["test"]
    n, b = len(xtr), task["batch"]
    model.compile(optimizer=make_optimizer(task, gate, n), loss=keras_loss(task["loss"]))
    callbacks = estimator_callbacks(n, b) if estimators else []
    callbacks += list(extra_callbacks)
    recorder = Recorder(task["loss"], (xtr, ytr), test, n, b, task.get("clean"),
                        batch_losses=batch_losses) if record else None
    if recorder is not None:
        callbacks.append(recorder)
    if epochs is None:
        epochs = task["epochs"] if not quick else max(5, task["epochs"] // 5)
    t0 = time.perf_counter()
    model.fit(xtr, ytr, batch_size=b, epochs=epochs, shuffle=True, verbose=0,
              callbacks=callbacks)
    wall = time.perf_counter() - t0
    out = dict(n=n, batch=b, alpha=keras_snr.finite_dataset_alpha(b, n),
               params=int(model.count_params()), wall=wall,
               epochs=recorder.epochs if recorder else None,
               recorder_seconds=recorder.recorder_seconds if recorder else 0.0)
    return out, model, task


# ------------------------------------------------------ shadow runs (df)


def _tower_loss(kind, towers):
    from keras import ops

    def loss(y_true, y_pred):
        if kind == "mse":
            per = ops.mean(ops.square(y_true - y_pred), axis=-1)  # (b, T)
        else:
            per = -ops.sum(y_true * ops.log_softmax(y_pred, axis=-1), axis=-1)
            if len(per.shape) > 2:  # sequences: mean over positions
                per = ops.mean(per, axis=tuple(range(2, len(per.shape))))
        return ops.sum(per, axis=1)

    return loss


class ShadowRecorder(keras.callbacks.Callback):
    """Per epoch: tower 0's end-of-epoch training and held-out loss, and the
    finite-difference divergence of the training procedure.

    Regression: `df = mean_k sum_i (f_k(x_i) - f_0(x_i)) . z_ki / eps`.
    Classification (Efron's exponential-family form, logits `eta`, one-hot
    labels `y`): `delta_i = mean_k z_ki . (eta_k(x_i) - eta_0(x_i)) / eps`
    with zero-sum isotropic `z` (covariance `I - 11'/K`), i.e.
    `tr(D_i (I - 11'/K))` for `D_i = d eta_i / d y_i`."""

    def __init__(self, kind, train, test, z, eps, towers, classes=None):
        super().__init__()
        self.kind, self.train, self.test, self.z, self.eps = kind, train, test, z, eps
        self.towers, self.classes = towers, classes
        self.epochs = []

    def on_train_begin(self, logs=None):
        self._t0 = time.perf_counter()
        self.recorder_seconds = 0.0
        self._p1 = None

    def on_epoch_end(self, epoch, logs=None):
        t0 = time.perf_counter()
        ptr = np.asarray(self.model.predict(self.train[0], batch_size=4096, verbose=0), "float64")
        pte = np.asarray(self.model.predict(self.test[0], batch_size=4096, verbose=0), "float64")
        f0 = ptr[:, 0]
        diff = ptr[:, 1:] - f0[:, None]  # (n, K, ...)
        ytr = self.train[1]
        rec = {"epoch": epoch + 1,
               "train_end": np_loss(self.kind, ytr, f0),
               "heldout": np_loss(self.kind, self.test[1], pte[:, 0]),
               "loss_all_towers": float(logs["loss"])}
        if self.kind == "mse":
            per_ex = (diff * self.z).reshape(len(f0), diff.shape[1], -1).sum(-1) / self.eps
            df = float(per_ex.sum(0).mean())
            rec.update(df=df, df_se=float(per_ex.sum(0).std(ddof=1) / math.sqrt(per_ex.shape[1]))
                       if per_ex.shape[1] > 1 else float("nan"),
                       rss=float(((f0 - ytr) ** 2).sum()), m=int(np.prod(ytr.shape)))
        else:
            # diff: (n, K, [L,] C) logits; z: same shape; delta per example (and position)
            k = diff.shape[1]
            prod = (diff * self.z).sum(-1) / self.eps  # (n, K[, L])
            delta = prod.mean(1)  # (n[, L])
            p = np.exp(log_softmax(f0))
            gini = 1.0 - (p * p).sum(-1)  # plug-in label variance tr(diag p - pp')
            if self._p1 is None:
                self._p1 = gini
            onehot = np.eye(self.classes)[ytr]
            brier = ((onehot - p) ** 2).sum(-1)
            cls = self.classes
            rec.update(
                df=float(delta.sum() / (cls - 1)),  # isotropic df (per unit label variance)
                delta_gini=float((delta * gini).sum() / (cls - 1)),
                delta_gini1=float((delta * self._p1).sum() / (cls - 1)),
                delta_se=float(prod.reshape(len(f0), k, -1).sum((0, 2)).std(ddof=1)
                               / math.sqrt(k) / (cls - 1)) if k > 1 else float("nan"),
                brier=float(brier.sum()), gini_sum=float(gini.sum()),
                m=int(np.prod(ytr.shape)))
        self.recorder_seconds += time.perf_counter() - t0
        rec["wall"] = time.perf_counter() - self._t0
        rec["recorder_seconds"] = self.recorder_seconds
        self.epochs.append(rec)


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch (for cost measurements)."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._t)


def run_shadows(task_fn, gate, seed, quick, shadows=4, epochs=None, timing_only=False,
                return_model=False):
    """Covariance-penalty reference run with `shadows` perturbed towers
    (`return_model`: the trained 1 + K tower model too, under "model")."""
    task = task_fn(seed, quick)
    keras.utils.set_random_seed(seed)
    base = task["build"]()
    (xtr, ytr), (xte, yte) = task["train"], task["test"]
    n, b = len(xtr), task["batch"]
    towers = [base] + [task["build"]() for _ in range(shadows)]
    weights = base.get_weights()
    for t in towers[1:]:
        t.set_weights(weights)
    inp = keras.Input(base.input_shape[1:], dtype=base.inputs[0].dtype)
    out = keras.ops.stack([t(inp) for t in towers], axis=1)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(10_000 + seed)
    eps = task["eps"]
    if task["loss"] == "mse":
        z = rng.choice([-1.0, 1.0], size=(n, shadows) + ytr.shape[1:])
        y = np.concatenate([ytr[:, None], ytr[:, None] + eps * z], 1).astype("float32")
    else:
        cls = task["classes"]
        onehot = np.eye(cls, dtype="float64")[ytr]  # (n[, L], C)
        u = rng.normal(size=(n, shadows) + onehot.shape[1:])
        z = u - u.mean(-1, keepdims=True)
        y = np.concatenate([onehot[:, None], onehot[:, None] + eps * z], 1).astype("float32")
    model.compile(optimizer=make_optimizer(task, gate, n), loss=_tower_loss(task["loss"], len(towers)))
    rec = ShadowRecorder(task["loss"], (xtr, ytr), (xte, yte), z, eps, len(towers),
                         task.get("classes"))
    timer = EpochTimer()
    callbacks = [timer] if timing_only else [rec, timer]
    if epochs is None:
        epochs = task["epochs"] if not quick else max(5, task["epochs"] // 5)
    t0 = time.perf_counter()
    model.fit(xtr, y, batch_size=b, epochs=epochs, shuffle=True, verbose=0, callbacks=callbacks)
    wall = time.perf_counter() - t0
    out = dict(n=n, batch=b, shadows=shadows, eps=eps, wall=wall, epochs=rec.epochs,
               recorder_seconds=rec.recorder_seconds if not timing_only else 0.0,
               epoch_times=timer.times)
    if return_model:
        out["model"] = model
    return out
