"""Candidate population-risk estimators, evaluated offline on recorded runs,
and the metrics of `benchmarks/population_risk_validation.py` (a benchmark
helper, not API).

Every estimator is a function of one run's recorded per-epoch series (the
epoch-mean training loss `L` that Keras logs, scalar reductions of the
optimizer state, lr and number of updates, the logs of the two estimating
callbacks; never the held-out loss) and returns one value per epoch. Names
and formulas are listed in `CANDIDATES`. Three kinds:

- `library`: what `keras_snr.PopulationRiskEstimate` itself logged during
  the run (`pop_risk`, already gated; `pop_risk_estimate`;
  `pop_risk_reliable`). Nothing is recomputed.
- `capped`, `first_order`, `tic`, `gsnr`: what the legacy callback
  (`pop_risk/legacy.py`, the library's estimators before) logged, under
  `legacy_pop_risk_<name>`.
- the rest: computed offline from the recorder's float64 reductions;
  `min_dec_cal+rel` is the offline replica of the library's estimator (see
  `agreement` for how closely the two agree).

Notation per coordinate: m = m_hat, v = v_hat, s = s_hat, q the gate,
P = 1 / (sqrt(v) + eps), N = alpha * s (alpha = b / (n - b)),
g2 = max(m^2 - c s, 0), c = (1 - beta_1) / (1 + beta_1); sums over all
coordinates are written S[...]. L1 = the epoch-1 mean training loss.
"""

import math

import numpy as np
from scipy import stats

TINY = 1e-30


class Run:
    """The recorded series of one main run, as arrays over epochs."""

    def __init__(self, rec, task_meta=None):
        self.rec = rec
        ep = rec["epochs"]
        self.E = len(ep)
        self.L = np.array([e["loss"] for e in ep])
        self.held = np.array([e["heldout"] for e in ep])
        self.train_end = np.array([e["train_end"] for e in ep])
        self.lr = np.array([e["lr"] for e in ep])
        self.updates = np.array([e["updates"] for e in ep], float)
        self.lu = self.lr * self.updates
        self.n, self.b, self.alpha = rec["n"], rec["batch"], rec["alpha"]
        self.logs = {k: np.array([e["logs"].get(k, np.nan) for e in ep])
                     for k in ep[0]["logs"]}
        self.sums = {k: np.array([e["sums"][k] for e in ep]) for k in ep[0]["sums"]}
        self.per_var = {k: np.array([e["per_var"][k] for e in ep])
                        for k in ep[0].get("per_var", {})}
        self.batch_losses = [np.array(e.get("batch_losses", [])) for e in ep]
        self.meta = task_meta or {}

    def S(self, k):
        return self.sums[k]


# ----------------------------------------------------------- building blocks


def noise_share(r):
    """Preconditioned noise share sum(qPN) / sum(qP g2), clipped to [0, 1]."""
    return np.clip(r.S("qPN") / (r.S("qPg2") + TINY), 0.0, 1.0)


def gradient_snr(r):
    return r.S("m2") / (r.alpha * r.S("s") + TINY)


def wd_decay(r):
    """exp(-lr * updates * weight_decay) per epoch (1 without decay)."""
    return np.exp(-r.lu * (r.meta.get("weight_decay") or 0.0))


def decayed_accumulation(r, rate):
    """G_e = sum_{j<e} lr_j u_j rate_j * prod_{j<i<=e} exp(-lr_i u_i wd):
    the gap accrued through epoch e-1 (so G_1 = 0: the estimate after
    epoch 1 is the prequential L1), decayed by the decoupled weight decay."""
    dec, out, g = wd_decay(r), [], 0.0
    for i in range(r.E):
        g *= dec[i]
        out.append(g)
        g += r.lu[i] * rate[i]
    return np.array(out)


def drop_calibrated(r, num):
    """G_e = sum_{j<=e} max(L_{j-1} - L_j, 0) * S[num]_j / S[qP g2]_j, decayed
    by the weight decay: the measured train-loss decrease of each epoch
    times the ratio of the gap rate to the first-order train-decrease rate
    (1 where S[qP g2] = 0: no full-batch gradient left, all of the drop is
    noise; as keras_snr.PopulationRiskEstimate does)."""
    denominator = r.S("qPg2")
    ratio = np.where(denominator > 0, r.S(num) / np.where(denominator > 0, denominator, 1.0), 1.0)
    drop = np.concatenate([[0.0], np.maximum(r.L[:-1] - r.L[1:], 0.0)])
    dec, out, g = wd_decay(r), [], 0.0
    for i in range(r.E):
        g = g * dec[i] + drop[i] * ratio[i]
        out.append(g)
    return np.array(out)


def floor_reliable(r, kappa=0.05):
    """Latched reliability: True until the first epoch with L < kappa * L1."""
    return np.logical_and.accumulate(r.L >= kappa * r.L[0])


def gated(est, reliable):
    """What is logged as `pop_risk`: the estimate while reliable, else a
    value strictly below every value logged before (so EarlyStopping counts
    the epoch as an improvement: it never stops, and restore_best_weights
    restores the latest unreliable epoch, on a guess)."""
    out, best = [], math.inf
    for x, ok in zip(est, reliable):
        if not ok and math.isfinite(best):
            x = best - max(1e-6 * abs(best), 1e-12)
        out.append(x)
        best = min(best, x)
    return np.array(out)


# ------------------------------------------------------------- candidates
#
# Each returns (estimate, reliable) per epoch; `reliable` is None for the
# ungated ones. The logged value of a gated one is `gated(estimate, reliable)`.


def _plain(fn):
    return lambda r: (fn(r), None)


def _with_floor(fn, kappa=0.05):
    return lambda r: (fn(r), floor_reliable(r, kappa))


def e_train(r):
    return r.L


def e_log(name):
    """A legacy estimator, as the legacy callback logged it."""
    return lambda r: r.logs[f"legacy_pop_risk_{name}"]


def e_library(r):
    """The library callback's own logs: (estimate, reliable, logged pop_risk)."""
    return (r.logs["pop_risk_estimate"], r.logs["pop_risk_reliable"] > 0.5,
            r.logs["pop_risk"])


def e_decayed_capped(r):
    return r.L + decayed_accumulation(r, r.S("capped_rate"))


def e_rsat_cal(r):
    return r.L + drop_calibrated(r, "rsat_rate")


def e_fo_cal(r):
    return r.L + drop_calibrated(r, "qPN")


def e_min_dec_cal(r):
    """L + min(decayed capped gap, drop-calibrated saturating gap)."""
    return r.L + np.minimum(decayed_accumulation(r, r.S("capped_rate")),
                            drop_calibrated(r, "rsat_rate"))


def e_cap_cur(r):
    return r.L + np.maximum(r.L[0] - r.L, 0.0) * r.S("capped_rate") / (r.S("qPg2") + TINY)


def e_gsnr_cur(r):
    return r.L + np.maximum(r.L[0] - r.L, 0.0) * noise_share(r)


def e_sum(key):
    return lambda r: r.L + r.S(key)


LIBRARY = "library"
REPLICA = "min_dec_cal+rel"  # the library's estimator, recomputed offline
RECOMMENDED = LIBRARY

CANDIDATES = {
    # name: (function, formula); the function returns (estimate, reliable)
    # or, for `library`, (estimate, reliable, logged value)
    LIBRARY: (e_library, "keras_snr.PopulationRiskEstimate() as logged during the run: "
                         "pop_risk (gated), pop_risk_estimate, pop_risk_reliable"),
    "train_loss": (_plain(e_train), "L, the epoch-mean training loss Keras logs"),
    "capped": (_plain(e_log("capped")),
               "legacy default (logged by the legacy callback): L + sum_e lr u S[qPN min(1, sqrt(g2/N))]"),
    "first_order": (_plain(e_log("first_order")), "legacy: L + sum_e lr u S[qPN]"),
    "tic": (_plain(e_log("tic")), "legacy: L + S[N/h (1 - exp(-h tau))], h = b s + g2"),
    "gsnr": (_plain(e_log("gsnr")), "legacy: L + sum_e drop_e * clip(S[qPN]/S[qPg2], 0, 1)"),
    "decayed_capped": (_plain(e_decayed_capped),
                       "L + G, G_e = sum_{j<e} lr u_j capped_rate_j exp(-lr wd sum_{j<i<=e} u_i)"),
    "decayed_capped+rel": (_with_floor(e_decayed_capped), "decayed_capped; unreliable once L < 0.05 L1"),
    REPLICA: (_with_floor(e_min_dec_cal),
              "offline replica of `library` (float64, from the recorder's reductions): "
              "L + min(decayed_capped gap, rsat_cal gap); unreliable once L < 0.05 L1"),
    "rsat_cal": (_plain(e_rsat_cal), "L + sum_e drop_e S[qPN min(1,|g|/|g_1|)]/S[qPg2] (WD-decayed)"),
    "capped+rel": (_with_floor(e_log("capped")), "legacy capped with the same reliability rule"),
    "train_loss+rel": (_with_floor(e_train), "L with the same reliability rule"),
    "rsat_cal+rel": (_with_floor(e_rsat_cal),
                     "L + sum_e drop_e S[qPN |g|/|g_1|]/S[qPg2] (WD-decayed), floor rule"),
    "fo_cal+rel": (_with_floor(e_fo_cal), "L + sum_e drop_e S[qPN]/S[qPg2] (WD-decayed), floor rule"),
    "cap_cur+rel": (_with_floor(e_cap_cur),
                    "current state: L + (L1 - L) S[qPN min(1, sqrt(g2/N))]/S[qPg2], floor rule"),
    "gsnr_cur": (_plain(e_gsnr_cur), "current state: L + (L1 - L) clip(S[qPN]/S[qPg2], 0, 1)"),
    "n_min_tau+rel": (_with_floor(e_sum("N_min_tau_1h")),
                      "current-state diagonal TIC: L + S[N min(tau, 1/h)], floor rule"),
    "ntau_dec": (_plain(e_sum("Ntau_dec")),
                 "current-state diagonal OU: L + S[N tau (1-r)/(-ln r)], r = |g|/|g_1|"),
    "tic_gsat": (_plain(e_sum("tic_gsat")), "L + S[(1 - |g|/|g_1|) N / h]"),
    "work0_ns": (_plain(e_sum("work0_ns")), "H-free diagonal TIC: L + S[-(w - w0) m_1 min(1, N_1/g_1^2)]"),
}


def evaluate(r, name):
    """(estimate, reliable or None, logged value) of candidate `name` on run
    `r`; the logged value of a gated offline candidate is `gated(...)`."""
    out = CANDIDATES[name][0](r)
    if len(out) == 3:
        return out
    est, rel = out
    return est, rel, (gated(est, rel) if rel is not None else est)


def agreement(r):
    """How closely the library's logs agree with the offline replica on run
    `r`: max over epochs of the absolute and relative differences of
    `pop_risk`, `pop_risk_estimate` and the two gaps, the number of epochs
    whose reliability flags differ, and whether EarlyStopping (patience 20)
    on either series restores the same epoch."""
    lib_est, lib_rel, lib_logged = evaluate(r, LIBRARY)
    est, rel, logged = evaluate(r, REPLICA)
    gap_dec = decayed_accumulation(r, r.S("capped_rate"))
    gap_cal = drop_calibrated(r, "rsat_rate")

    floor = 1e-6 * abs(r.L[0])  # relative differences of values below this are not meaningful

    def diff(a, b):
        a, b = np.asarray(a, float), np.asarray(b, float)
        d = np.abs(a - b)
        return float(np.max(d)), float(np.max(d / np.maximum(np.abs(b), floor)))

    out = {}
    for key, a, b in (("pop_risk", lib_logged, logged), ("estimate", lib_est, est),
                      ("gap_decayed", r.logs["pop_risk_gap_decayed"], gap_dec),
                      ("gap_calibrated", r.logs["pop_risk_gap_calibrated"], gap_cal)):
        out[f"{key}_max_abs"], out[f"{key}_max_rel"] = diff(a, b)
    # C = S[qP g2] = 0 exactly (every coordinate's g2 clipped to 0): the calibrated
    # gap's B / (C + 1e-30) explodes in both, and the min() takes the decayed gap
    out["gap_calibrated_max"] = float(np.max(r.logs["pop_risk_gap_calibrated"]))
    out["epochs_C_zero"] = int(np.sum(r.S("qPg2") == 0))
    out["epochs_C_zero_reliable"] = int(np.sum((r.S("qPg2") == 0) & np.asarray(lib_rel)))
    out["argmax_epoch"] = int(np.argmax(np.abs(np.asarray(lib_logged) - logged))) + 1
    out["reliable_mismatch_epochs"] = int(np.sum(np.asarray(lib_rel) != np.asarray(rel)))
    out["same_es_epoch"] = (keras_early_stopping([float(x) for x in lib_logged], 20)
                            == keras_early_stopping([float(x) for x in logged], 20))
    return out


# ------------------------------------------------------------------ metrics


def keras_early_stopping(values, patience):
    """Replay keras.callbacks.EarlyStopping(mode="min", min_delta=0,
    restore_best_weights=True, baseline=None, start_from_epoch=0) on
    `values` (None = key missing). Returns (restored epoch index, number of
    epochs run)."""
    best, best_epoch, wait, have_weights = None, 0, 0, False
    for epoch, current in enumerate(values):
        if current is None:
            continue
        if not have_weights:
            have_weights, best_epoch = True, epoch
        wait += 1
        if best is None or current < best:  # NaN < x is False
            best, best_epoch, wait = current, epoch, 0
            continue
        if wait >= patience and epoch > 0:
            return best_epoch, epoch + 1
    return best_epoch, len(values)


def spearman(est, held):
    est = np.asarray(est, float)
    if not np.all(np.isfinite(est)) or np.ptp(est) == 0:
        return float("nan")
    return float(stats.spearmanr(est, held).statistic)


def score_series(est, held, patience):
    est = np.asarray(est, float)
    best = held.min()
    finite = np.isfinite(est)
    amin = int(np.nanargmin(est)) if finite.any() else len(held) - 1
    vals = [float(x) for x in est]
    es_epoch, ran = keras_early_stopping(vals, patience)
    return {
        "spearman": spearman(est, held),
        "mare": float(np.nanmean(np.abs(est - held) / held)),
        "argmin_regret": float(held[amin] / best - 1),
        "es_regret": float(held[es_epoch] / best - 1),
        "es_vs_end": float(held[es_epoch] / held[-1] - 1),
        "es_epoch": es_epoch + 1,
        "es_ran": ran,
        "epoch1_error": float((est[0] - held[0]) / held[0]),
    }


# ------------------------------------------- covariance-penalty reference


def reference_estimates(shadow, kind):
    """Covariance-penalty (Efron 2004) estimates from a shadow run.

    Regression (squared loss, per label entry): optimism = 2 sigma^2 df / m,
    m = number of label entries, df the finite-difference divergence; the
    estimate is tower 0's end-of-epoch training loss + optimism, with sigma^2
    - `run`: RSS / (m - df) of the current epoch (unstable as df -> m);
    - `frozen`: RSS / (m - df) at the last epoch with df <= m / 2, then
      frozen (the fit is still far from interpolation there);
    - `min`: the running minimum of RSS / (m - df) over those epochs.
    Classification (Efron's exponential-family form, mean cross-entropy):
    optimism = (1/m) sum_i tr(d eta_i / d y_i Var(y_i)), with the isotropic
    probe and Var(y_i) plug-in p_i(1 - p_i) (trace 1 - |p_i|^2) from
    - `gini_now`: tower 0's current predictions;
    - `gini_ep1`: its predictions at the end of epoch 1 (nearer the prior).
    """
    ep = shadow["epochs"]
    tr = np.array([e["train_end"] for e in ep])
    df = np.array([e["df"] for e in ep])
    out = {}
    if kind == "mse":
        m = ep[0]["m"]
        rss = np.array([e["rss"] for e in ep])
        s2 = rss / np.maximum(m - df, 1e-9)
        early = df <= m / 2
        frozen, mins, cur, cur_min = [], [], s2[0], s2[0]
        for i in range(len(ep)):
            if early[i]:
                cur = s2[i]
                cur_min = min(cur_min, s2[i])
            frozen.append(cur)
            mins.append(cur_min)
        for name, s in (("run", s2), ("frozen", np.array(frozen)), ("min", np.array(mins))):
            out[f"cov_{name}"] = tr + 2 * s * df / m
        out["df_over_m"] = df / m
    else:
        m = ep[0]["m"]  # label entries: examples x sequence positions
        dg = np.array([e["delta_gini"] for e in ep])
        dg1 = np.array([e["delta_gini1"] for e in ep])
        out["cov_gini_now"] = tr + dg / m
        out["cov_gini_ep1"] = tr + dg1 / m
        out["df_over_m"] = df / m
    return out
