"""Scoring of `benchmarks/population_risk_benchmark.py` (a benchmark helper,
not API): every stopping rule replayed on the recorded runs, the targets of
issue 16, and the report (OUT.md, OUT.json).

Per task, seed and dynamics the recorded full-data run gives the
validation-free rules, the oracle, never stopping and retrain-on-all (the
full run's state at epoch e is the retrain for e epochs); the holdout run
gives the two holdout rules. The quantity judged is clean held-out
accuracy for classification and held-out loss (same label noise as
training) for regression; held-out loss is reported for every rule too.
"""

import json
import math

import numpy as np
from scipy import stats

from . import rules as RL

HOLDOUT_PATIENCE = 10
SAFE = 0.02  # never more than 2 % worse than training to the end
SPEARMAN_TARGET, SPEARMAN_SHARE = 0.9, 0.7
HOLDOUT_SHARE = 0.8


# ------------------------------------------------------------ per-run series


class Run:
    """One full-data run's recorded series as arrays over epochs."""

    def __init__(self, rec):
        self.rec = rec
        ep = rec["epochs"]
        self.E = len(ep)
        self.kind = rec["loss"]
        self.classification = self.kind != "mse"
        self.L = np.array([e["loss"] for e in ep])
        self.held = np.array([e["heldout_loss"] for e in ep])
        self.clean_loss = np.array([e["clean_loss"] for e in ep])
        self.clean_acc = (np.array([e["clean_acc"] for e in ep]) if self.classification
                          else None)
        self.flips = (np.array([e.get("flips", np.nan) for e in ep], float)
                      if self.classification else None)
        self.logs = {k: np.array([e["logs"].get(k, np.nan) for e in ep])
                     for k in ep[-1]["logs"]}
        self.sums = ({k: np.array([e["sums"][k] for e in ep]) for k in ep[0]["sums"]}
                     if "sums" in ep[0] else {})
        self.lu = np.array([e["lr"] * e["updates"] for e in ep])
        self.n, self.b = rec["n"], rec["batch"]
        self.weight_decay = rec.get("weight_decay") or 0.0

    def quality(self, epoch):
        """What the rule is judged on: clean accuracy (classification,
        higher is better) or held-out loss (regression, lower is better)."""
        return self.clean_acc[epoch] if self.classification else self.held[epoch]


def label_noise_classification(rec):
    """Classification whose training labels were corrupted on purpose."""
    info = rec.get("info", {})
    if rec["loss"] == "mse":
        return False
    if "noise_rate" in info:
        return info["noise_rate"] > 0
    return info.get("name") in ("noisy_digits", "digits_cnn", "mnist1d_sym30",
                                "mnist1d_pair20", "breast_cancer_sym20")


# ------------------------------------------------------------------ rules

LIBRARY_MONITOR = "pop_risk"
LIBRARY_PATIENCE = 20


def rule_epochs(run, holdout=None):
    """`{rule: (kept epoch in the full run or None, source)}`; holdout rules
    keep an epoch of the holdout run (source "holdout")."""
    out = {"never": (run.E - 1, "full")}
    if run.classification:
        out["oracle"] = (int(np.argmax(run.clean_acc)), "full")
    else:
        out["oracle"] = (int(np.argmin(run.held)), "full")
    if LIBRARY_MONITOR in run.logs:
        values = [None if not np.isfinite(v) else float(v) for v in run.logs[LIBRARY_MONITOR]]
        out["library"] = (RL.keras_early_stopping(values, LIBRARY_PATIENCE)[0], "full")
    if run.classification:
        out["label_wave"] = (RL.label_wave(run.flips)[0], "full")
    if run.sums:
        eb = 1.0 - run.sums["eb_ratio"] / np.maximum(run.sums["count"], 1.0)
        out["eb"] = (RL.first_true(eb > 0)[0], "full")
    if holdout is not None:
        hv = holdout["epochs"]
        val_loss = [e["val_loss"] for e in hv]
        out["holdout_loss"] = (RL.keras_early_stopping(val_loss, HOLDOUT_PATIENCE)[0],
                               "holdout")
        if run.classification:
            val_acc = [e["val_acc"] for e in hv]
            out["holdout_acc"] = (RL.keras_early_stopping(val_acc, HOLDOUT_PATIENCE,
                                                          mode="max")[0], "holdout")
        # retrain on all data for the holdout's epoch count (accuracy-monitored
        # for classification, loss-monitored for regression)
        chosen = out["holdout_acc" if run.classification else "holdout_loss"][0]
        out["retrain"] = (min(chosen, run.E - 1), "full")
    return out


def outcome(run, holdout, kept, source):
    """Quality and held-out loss of the weights a rule keeps."""
    if source == "full":
        return {"quality": float(run.quality(kept)), "heldout": float(run.held[kept]),
                "epoch": kept + 1}
    e = holdout["epochs"][kept]
    q = e["clean_acc"] if run.classification else e["heldout_loss"]
    return {"quality": float(q), "heldout": float(e["heldout_loss"]), "epoch": kept + 1}


def spearman(x, y):
    x = np.asarray(x, float)
    if not np.all(np.isfinite(x)) or np.ptp(x) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def score_run(rec, holdout=None):
    run = Run(rec)
    res = {name: outcome(run, holdout, kept, src)
           for name, (kept, src) in rule_epochs(run, holdout).items()}
    est = run.logs.get("pop_risk_estimate")
    extra = {}
    if est is not None:
        extra["spearman"] = spearman(est, run.held)
        extra["mare"] = float(np.nanmean(np.abs(est - run.held) / run.held))
    return run, res, extra


def relative(run, a, b):
    """How much better quality `a` is than `b` (positive: better), relative."""
    if run.classification:
        return a / b - 1.0
    return b / a - 1.0


def to_json(obj):
    return json.loads(json.dumps(obj, default=lambda o: None if isinstance(o, float)
                                 and not math.isfinite(o) else o))


def report(runs, args, command):
    raise NotImplementedError  # written once the design is done
