"""The population-risk estimators keras_snr shipped before the benchmark of
issue 12 replaced them (`capped`, the old default; `first_order`, `tic`,
`gsnr`, `eb`, `prequential`), kept here so that
`benchmarks/population_risk_validation.py` reports them beside the library's
`keras_snr.PopulationRiskEstimate`. Not API: the benchmark shows them
dominated (see benchmarks/results/population_risk.md).

This is keras_snr's `PopulationRiskEstimate` as of commit 912a51b, renamed
`LegacyPopulationRiskEstimate`, reading the optimizer through the public
`statistics()` API. Changes: every key it writes carries `prefix` (default
`"legacy_"`: `legacy_pop_risk`, `legacy_pop_risk_capped`, ...,
`legacy_signal_fraction`, `legacy_gradient_snr`, `legacy_eb_criterion`,
`legacy_noise_share`), so that it can run beside the library callback, whose
`pop_risk`, `signal_fraction` and `gradient_snr` it would otherwise
overwrite; and with gradient accumulation it no longer divides the update
count by the accumulation steps a second time (Keras's `iterations` already
counts updates).
"""

import math
import warnings

import keras
from keras import ops

from keras_snr import finite_dataset_alpha
from keras_snr.callbacks import _host
from keras_snr.callbacks import _positive_int
from keras_snr.callbacks import _resolve_sizes
from keras_snr.statistics import snr_optimizers

ESTIMATORS = ("capped", "first_order", "tic", "gsnr", "eb", "prequential")


def _require_snr_optimizers(callback):
    found = snr_optimizers(callback.model.optimizer)
    if not found:
        raise TypeError("LegacyPopulationRiskEstimate needs an SNRAdam optimizer")
    return found


class LegacyPopulationRiskEstimate(keras.callbacks.Callback):
    """Estimate the population (held-out) loss each epoch from training alone.

    At the end of every epoch this callback reads the optimizer's statistics
    (momentum `m`, velocity `v` and noise variance `s` of
    `keras_snr.SNRAdam`) and the epoch's mean training loss, and writes to
    `logs` (every key below prefixed with `prefix`, `"legacy_"` by default):

    - `pop_risk`: the estimate of the loss on unseen data from the same
      distribution (same units as `loss`);
    - `signal_fraction`: fraction of coordinates with
      `m_hat**2 > alpha * s_hat` (the hard gate's open fraction);
    - `gradient_snr`: `sum(m_hat**2) / (alpha * sum(s_hat))` over all
      trained coordinates;
    - with `diagnostics=True`, also every estimator of `ESTIMATORS` as
      `pop_risk_<name>` and the EB criterion as `eb_criterion`.

    Here `alpha = b / (n - b)` (`keras_snr.finite_dataset_alpha`), with `b`
    the examples behind one update and `n` the dataset size: `alpha * s_hat`
    estimates the variance of the full-dataset gradient's sampling error.

    Everything is read once per epoch (one small device-to-host transfer of
    a few scalars); the train step is untouched, so it works under `jit` on
    TensorFlow, JAX and PyTorch. To watch a plain Adam run, train with
    `keras_snr.SNRAdam(gate=None)` (exactly AdamW, statistics kept).

    **List this callback before** `EarlyStopping`, `ModelCheckpoint`,
    `ReduceLROnPlateau` and `CSVLogger`: Keras calls callbacks in list order
    and they read `logs` in the same epoch-end call (Keras warns that the
    metric is not available otherwise). Pass them `mode="min"`: Keras
    cannot infer the direction of a metric it does not know, and says so.

    Estimator (`estimator="capped"`, the default): `pop_risk = loss + G`,
    where the generalisation gap `G` is accumulated each epoch as
    `lr * updates * sum_k q_k * P_k * alpha * s_hat_k * min(1, |g_k| /
    sqrt(alpha * s_hat_k))`, with `P_k = 1 / (sqrt(v_hat_k) + epsilon)` the
    Adam preconditioner, `q_k` the gate and `g_k**2 = max(m_hat_k**2 - c *
    s_hat_k, 0)` (`c = (1 - beta_1) / (1 + beta_1)` removes the minibatch
    noise of the momentum) the full-batch gradient. It is the first-order
    gap accounting (`"first_order"`: rate `alpha * s_hat`), except that a
    coordinate whose training gradient has been fitted away (`|g| <<
    sqrt(alpha * s_hat)`) stops adding to the gap: on a quadratic with
    gradient noise `xi` the gap grows at rate `E[xi * g_S]`, which is
    `alpha * s` at the start and `sqrt(alpha * s) * |g_S|` once the
    noise dominates `g_S`. It is a heuristic: see the benchmark
    `benchmarks/population_risk_validation.py` for how well it tracks
    held-out loss, and where it does not.

    Other estimators (for `estimator=` or `diagnostics=True`):
    `"first_order"` (uncapped gap accounting; overshoots), `"tic"` (saturating
    per-coordinate optimism `alpha s/h (1 - exp(-h tau))` with curvature `h`
    the empirical Fisher `b * s_hat + g**2` and `tau` the accumulated step
    size, a diagonal TIC), `"gsnr"` (train-loss decrease counted as gap in
    proportion to the noise share `sum(q P alpha s) / sum(q P g**2)`),
    `"eb"` (train-loss decrease counted as gap once the EB criterion of
    Mahsereci et al. 2017 is positive) and `"prequential"` (the first
    epoch's mean training loss, a constant).

    Args:
        dataset_size: Number of training examples `n`. If omitted, inferred
            as `batch_size * steps_per_epoch` (exact only if the last batch
            is full).
        batch_size: Global batch size passed to `fit()`. If omitted,
            inferred as `ceil(dataset_size / steps_per_epoch)`. One of
            `dataset_size` and `batch_size` is required.
        estimator: Which estimator `pop_risk` reports; one of `ESTIMATORS`.
        diagnostics: Also log every estimator and the EB criterion.
        monitor_loss: Key of the training loss in `logs`. Defaults to
            `"loss"`.
        prefix: Prefix of every key written. Defaults to `"legacy_"`.
    """

    def __init__(
        self,
        dataset_size=None,
        batch_size=None,
        estimator="capped",
        diagnostics=False,
        monitor_loss="loss",
        prefix="legacy_",
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
        if estimator not in ESTIMATORS:
            raise ValueError(
                f"`estimator` must be one of {ESTIMATORS}; received "
                f"estimator={estimator!r}"
            )
        self.estimator = estimator
        self.diagnostics = bool(diagnostics)
        self.monitor_loss = monitor_loss
        self.prefix = str(prefix)

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
        self._last_iterations = int(_host(self._opt.iterations))
        self._gaps = {name: 0.0 for name in ESTIMATORS}
        self._prev_loss = None
        self._first_loss = None
        self._tau = None
        self._warned_nan = False

    # ------------------------------------------------------------ per epoch

    def _statistics(self, lr_updates, need_tau):
        """Scalars (and the tau accumulators) from the current slots."""
        opt = self._opt
        alpha = self._alpha
        c = (1.0 - opt.beta_1) / (1.0 + opt.beta_1)
        sums = {}
        names = (
            "count", "signal", "m2", "s", "eb_ratio", "first_order", "capped",
            "qp_noise", "qp_g2", "tic",
        )
        for name in names:
            sums[name] = []
        new_tau = []
        stats = opt.statistics()
        per_variable = [
            x for x in zip(stats.momentum, stats.velocity, stats.noise_variance, stats.gate)
            if x[0] is not None
        ]
        for i, (m_hat, v_hat, s_hat, q) in enumerate(per_variable):
            m_hat, v_hat, s_hat, q = (ops.cast(x, "float32") for x in (m_hat, v_hat, s_hat, q))
            m2 = ops.square(m_hat)
            noise = alpha * s_hat
            g2 = ops.relu(m2 - c * s_hat)
            qp = q / (ops.sqrt(v_hat) + opt.epsilon)
            tiny = 1e-30
            sums["count"].append(ops.cast(ops.size(m_hat), "float32"))
            sums["signal"].append(
                ops.sum(ops.cast(ops.greater(m2, noise), "float32"))
            )
            sums["m2"].append(ops.sum(m2))
            sums["s"].append(ops.sum(s_hat))
            sums["eb_ratio"].append(
                ops.sum(m2 / (c * s_hat + tiny) * ops.cast(s_hat > 0, "float32"))
            )
            sums["first_order"].append(ops.sum(qp * noise))
            cap = ops.minimum(1.0, ops.sqrt(g2 / (noise + tiny)))
            sums["capped"].append(ops.sum(qp * noise * cap))
            sums["qp_noise"].append(ops.sum(qp * noise))
            sums["qp_g2"].append(ops.sum(qp * g2))
            if need_tau:
                tau = lr_updates * qp * ops.ones_like(m_hat)
                if self._tau is not None:
                    tau = tau + self._tau[i]
                new_tau.append(tau)
                h = self._b_eff * s_hat + g2
                sat = -ops.expm1(-h * tau)
                sums["tic"].append(ops.sum(noise / (h + tiny) * sat))
        if need_tau:
            self._tau = new_tau
        stacked = ops.stack(
            [ops.sum(ops.stack(sums[n])) if sums[n] else ops.zeros(()) for n in names]
        )
        values = ops.convert_to_numpy(stacked).astype("float64")
        return dict(zip(names, values))

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
        loss = float(loss)
        opt = self._opt
        iterations = int(_host(opt.iterations))
        updates = iterations - self._last_iterations
        self._last_iterations = iterations
        lr = _host(opt.learning_rate)
        lr_updates = lr * updates
        need_tau = self.diagnostics or self.estimator == "tic"
        stats = self._statistics(lr_updates, need_tau)

        count = max(stats["count"], 1.0)
        signal_fraction = stats["signal"] / count
        gradient_snr = stats["m2"] / (self._alpha * stats["s"] + 1e-30)
        eb = 1.0 - stats["eb_ratio"] / count
        noise_share = min(1.0, max(0.0, stats["qp_noise"] / (stats["qp_g2"] + 1e-30)))

        if self._first_loss is None:
            self._first_loss = loss
        drop = 0.0 if self._prev_loss is None else max(self._prev_loss - loss, 0.0)
        self._prev_loss = loss
        g = self._gaps
        g["first_order"] += lr_updates * stats["first_order"]
        g["capped"] += lr_updates * stats["capped"]
        g["gsnr"] += drop * noise_share
        g["eb"] += drop * (1.0 if eb > 0 else 0.0)
        estimates = {name: loss + g[name] for name in ("first_order", "capped", "gsnr", "eb")}
        estimates["tic"] = loss + stats["tic"] if need_tau else float("nan")
        estimates["prequential"] = self._first_loss

        finite = math.isfinite(loss) and all(
            math.isfinite(x) for x in stats.values()
        )
        if not finite:
            if not self._warned_nan:
                warnings.warn(
                    f"PopulationRiskEstimate: non-finite training loss "
                    f"({loss}) or optimizer statistics at epoch {epoch}; "
                    "`pop_risk` is reported as NaN from now on.",
                    stacklevel=2,
                )
                self._warned_nan = True
            for name in g:
                g[name] = float("nan")
            estimates = {name: float("nan") for name in estimates}
        p = self.prefix
        logs[f"{p}pop_risk"] = float(estimates[self.estimator])
        logs[f"{p}signal_fraction"] = float(signal_fraction)
        logs[f"{p}gradient_snr"] = float(gradient_snr)
        if self.diagnostics:
            for name, value in estimates.items():
                logs[f"{p}pop_risk_{name}"] = float(value)
            logs[f"{p}eb_criterion"] = float(eb)
            logs[f"{p}noise_share"] = float(noise_share)
