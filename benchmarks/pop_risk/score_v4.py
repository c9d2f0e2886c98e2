"""Scoring of the population-risk benchmark v4 (issue 20; a benchmark helper,
not API): every stopping rule replayed on the recorded runs, the readable
number checked against the held-out loss, the targets, and the report
(OUT.md, OUT.json).

Sets: the v4 design set is every run recorded before v4 (the v3 design and
v3 held-out sets: generator seeds 0-23 and 1000-1023, the seven tasks, the
four v3 real datasets); the v4 held-out set is generator seeds >= 2000 and
the real datasets of `V4_REAL`, recorded after the rule, its constants and
this scoring were committed.

Rules (0-based kept epoch of the full-data run unless said):

- `recipe`: `PopulationRiskEstimate(x_train=..., y_train=...)` +
  `ValidationFreeStopping()` of keras_snr 0.2: EarlyStopping(patience 10)
  on `pop_risk`, counting epochs from `pop_risk_ready` and stopping only
  once `pop_risk_wave` is 1. Replayed from the library's own logs (v4
  runs); on runs recorded before v4, from an offline replica (its
  256-example sample's prediction changes drawn binomially from the full
  training set's, seed 0).
- `recipe_v3`: the v3 recipe (the same without the wave).
- `holdout_acc`, `holdout_loss`, `retrain`, `label_wave` (window 3),
  `never`, `oracle`: as in v3 (`score.py`).
- `gradient_disparity`: Forouzesh & Thiran's rule on the recorded
  gradient disparity (`rules.gradient_disparity`, patience 5); v4 runs only.

The number: per run, at the recipe's kept epoch and at the last epoch, the
relative error of `heldout_loss_estimate` against the held-out loss (labels
as noisy as in training), whether `[heldout_loss_low, heldout_loss_high]`
contains it, and for classifiers the error of `heldout_accuracy_estimate`
against the held-out accuracy with noisy labels (v4 runs). On runs recorded
before v4 the same formulas are computed from the recorded logs.

Targets (pre-registered; v4 held-out set; cell = task x dynamics, means over
its seeds):

- label-noise classification: recipe >= 20 % holdout (val_accuracy) in
  clean accuracy on >= 75 % of cells and by >= 1 point on average; >= Label
  Wave on average and on each real dataset's cells; >= gradient disparity
  on average;
- every cell: no more than 2 % (relative) worse than training to the end on
  >= 90 % of cells, never more than 10 %;
- the number: at the kept epoch, the median over seeds of the relative
  error of `heldout_loss_estimate` <= 25 % on >= 70 % of cells (the error
  at the end of training reported).
"""

import json
import math

import numpy as np

from . import rules as RL
from . import score as S

V4_REAL = ("fair_sym25", "randhie", "mnist1d_sym40")
SAMPLE = 256  # PopulationRiskEstimate(sample_size=256)
WAVE_WINDOW, WAVE_RISE, WAVE_HORIZON = 5, 2.0, 10  # its defaults
PATIENCE = 10  # ValidationFreeStopping(patience=10)
GD_PATIENCE = 5
HOLDOUT_SHARE, HOLDOUT_MARGIN = 0.75, 0.01
SAFE, NEVER_WORSE = 0.02, 0.10
SAFE_SHARE = 0.90
NUMBER_TOLERANCE, NUMBER_SHARE = 0.25, 0.70

RULES = ("never", "oracle", "holdout_acc", "holdout_loss", "retrain", "label_wave",
         "gradient_disparity", "recipe_v3", "recipe")
RULE_NAMES = {
    "never": "never stopping", "oracle": "best epoch (oracle)",
    "holdout_acc": "20 % holdout, ES val_accuracy", "holdout_loss": "20 % holdout, ES val_loss",
    "retrain": "holdout's epochs, retrained on all", "label_wave": "Label Wave",
    "gradient_disparity": "gradient disparity", "recipe_v3": "keras_snr 0.1 recipe",
    "recipe": "keras_snr recipe",
}


def task_set(task):
    family, key = task.split(":")
    if family == "gen":
        return "v4-heldout" if int(key) >= 2000 else "design"
    if family == "real" and key in V4_REAL:
        return "v4-heldout"
    return "design"


# ------------------------------------------------------------ the recipe


def sample_changes(run, rec):
    """Prediction changes as the library would count them on its sample, for
    a run recorded before v4 (counts per epoch, NaN at epoch 1; a binomial
    draw, seed 0, from the full training set's changes) and the sample's
    size."""
    size = min(SAMPLE, run.n)
    rng = np.random.default_rng(0)
    p = np.clip(np.nan_to_num(run.flips / run.n), 0.0, 1.0)
    out = np.full(run.E, np.nan)
    out[1:] = rng.binomial(size, p[1:])
    return out, size


def wave_series(counts, window=WAVE_WINDOW, rise=WAVE_RISE, horizon=WAVE_HORIZON):
    """`(ready, wave)` per epoch from the sample's change counts, as
    `keras_snr.PopulationRiskEstimate` computes them."""
    E = len(counts)
    smooth = np.full(E, np.nan)
    for e in range(window, E):
        smooth[e] = np.mean(counts[e - window + 1:e + 1])
    ready, wave = np.zeros(E, bool), np.zeros(E, bool)
    low, on, is_ready = None, False, False
    for e in range(E):
        if not is_ready and e > window and np.isfinite(smooth[e - 1]) and smooth[e] > smooth[e - 1]:
            is_ready, low = True, e - 1
        if is_ready and not on and e - low <= horizon and np.isfinite(smooth[e]):
            on = smooth[e] - smooth[low] >= rise * math.sqrt((smooth[low] + 1.0) / window)
        ready[e], wave[e] = is_ready, on
    return ready, wave


def validation_free_stopping(pop_risk, ready, wave, patience=PATIENCE):
    """Replay of `keras_snr.ValidationFreeStopping(patience)`: Keras's
    EarlyStopping on `pop_risk` over the epochs with `ready`, whose patience
    applies only once `wave`. Returns `(kept epoch, epochs run)`."""
    best, best_epoch, wait = None, None, 0
    for e, (v, r, w) in enumerate(zip(pop_risk, ready, wave)):
        if not r or v is None or not np.isfinite(v):
            continue
        wait += 1
        if best is None or v < best:
            best, best_epoch, wait = v, e, 0
            continue
        if w and wait >= patience and e > 0:
            return best_epoch, e + 1
    return (len(pop_risk) - 1 if best_epoch is None else best_epoch), len(pop_risk)


def recipe_series(run, rec):
    """`(pop_risk, ready, wave, source)`: the library's logs where the run
    has them (v4), else the offline replica."""
    if "pop_risk_wave" in run.logs:
        return (run.logs["pop_risk"], run.logs["pop_risk_ready"] > 0.5,
                run.logs["pop_risk_wave"] > 0.5, "library")
    _, logged, _ = S.replica_series(run)
    if not run.classification:
        ones = np.ones(run.E, bool)
        return np.asarray(logged), ones, ones, "replica"
    ready, wave = wave_series(*sample_changes(run, rec)[:1])
    return np.asarray(logged), ready, wave, "replica"


def number_series(run, rec):
    """`(estimate, low, high)` of the held-out loss per epoch: the library's
    logs where present, else the documented formulas on the recorded logs."""
    if "heldout_loss_estimate" in run.logs:
        return (run.logs["heldout_loss_estimate"], run.logs["heldout_loss_low"],
                run.logs["heldout_loss_high"])
    est = (run.logs["pop_risk_estimate"] if "pop_risk_estimate" in run.logs
           else S.replica_series(run)[0])
    est = np.asarray(est, float)
    first = run.L[0]
    return 0.5 * (run.L + np.minimum(first, est)), run.L, np.maximum(first, est)


# ------------------------------------------------------------ per run


def rule_epochs(run, rec, holdout):
    base = S.rule_epochs(run, holdout)
    out = {k: base[k] for k in ("never", "oracle", "holdout_acc", "holdout_loss", "retrain",
                                "label_wave") if k in base}
    pop_risk, ready, wave, source = recipe_series(run, rec)
    out["recipe"] = (validation_free_stopping(pop_risk, ready, wave)[0], "full")
    out["recipe_v3"] = (validation_free_stopping(pop_risk, ready, np.ones(run.E, bool))[0],
                        "full")
    gd = [e.get("gd") for e in rec["epochs"]]
    if all(g is not None for g in gd):
        out["gradient_disparity"] = (RL.gradient_disparity(gd, GD_PATIENCE)[0], "full")
    return out, source


def number_metrics(run, rec, kept):
    est, low, high = number_series(run, rec)
    out = {}
    for where, e in (("kept", kept), ("end", run.E - 1)):
        held = run.held[e]
        out[where] = {"rel_error": float(abs(est[e] - held) / held),
                      "covered": bool(low[e] <= held <= high[e]),
                      "estimate": float(est[e]), "heldout": float(held)}
        acc = run.logs.get("heldout_accuracy_estimate")
        if run.classification and acc is not None and np.isfinite(acc[e]):
            truth = rec["epochs"][e]["heldout_acc"]
            out[where]["acc_error"] = float(abs(acc[e] - truth))
            out[where]["acc_covered"] = bool(run.logs["heldout_accuracy_low"][e] <= truth
                                             <= run.logs["heldout_accuracy_high"][e])
    return out


def collect_cells(runs):
    cells = {}
    for (kind, task, dyn, seed), rec in sorted(runs.items()):
        if kind != "full":
            continue
        holdout = runs.get(("holdout", task, dyn, seed))
        run = S.Run(rec)
        epochs, source = rule_epochs(run, rec, holdout)
        res = {name: S.outcome(run, holdout, kept, src) for name, (kept, src) in epochs.items()}
        cell = cells.setdefault((task, dyn), {
            "task": task, "dynamics": dyn, "set": task_set(task), "group": S.group(rec),
            "info": rec.get("info", {}), "recipe_source": source, "seeds": [],
            "classification": run.classification})
        cell["seeds"].append({"seed": seed, "rules": res, "epochs": run.E,
                              "number": number_metrics(run, rec, epochs["recipe"][0])})
    return cells


# ------------------------------------------------------------ per cell


def cell_mean(cell, rule, field="quality"):
    return S.cell_mean(cell, rule, field)


def relative_to_end(cell, rule):
    """How much better the rule's mean quality is than training to the end
    (relative; negative: worse)."""
    q, end = cell_mean(cell, rule), cell_mean(cell, "never")
    if cell["classification"]:
        return q / end - 1.0 if end > 0 else 0.0
    return end / q - 1.0


def at_least(cell, a, b):
    x, y = cell_mean(cell, a), cell_mean(cell, b)
    return x >= y if cell["classification"] else x <= y


def number_ok(cell, where="kept"):
    errs = [s["number"][where]["rel_error"] for s in cell["seeds"]]
    return float(np.median(errs)) <= NUMBER_TOLERANCE


def summarise(cells):
    ln = [c for c in cells if c["group"] == "LN"]
    out = {"cells": len(cells), "label_noise_cells": len(ln)}
    have = lambda c, r: np.isfinite(cell_mean(c, r))  # noqa: E731
    if ln:
        for anchor in ("holdout_acc", "holdout_loss", "retrain", "label_wave",
                       "gradient_disparity", "recipe_v3"):
            part = [c for c in ln if have(c, anchor)]
            if not part:
                continue
            out[f"recipe_vs_{anchor}"] = {
                "cells": len(part),
                "share_at_least": float(np.mean([at_least(c, "recipe", anchor) for c in part])),
                "mean_difference": float(np.mean([cell_mean(c, "recipe") - cell_mean(c, anchor)
                                                  for c in part]))}
        real = {}
        for c in ln:
            if c["task"].startswith("real:") and have(c, "label_wave"):
                real.setdefault(c["task"], []).append(cell_mean(c, "recipe")
                                                      - cell_mean(c, "label_wave"))
        out["recipe_vs_label_wave_real"] = {t: float(np.mean(v)) for t, v in real.items()}
        out["mean_quality"] = {r: float(np.mean([cell_mean(c, r) for c in ln]))
                               for r in RULES if all(have(c, r) for c in ln)}
    rel = {r: [relative_to_end(c, r) for c in cells if have(c, r)]
           for r in RULES if r not in ("never", "oracle")}
    out["safe_share"] = {r: float(np.mean(np.array(v) >= -SAFE)) for r, v in rel.items() if v}
    out["worst_relative"] = {r: float(np.min(v)) for r, v in rel.items() if v}
    out["unsafe_cells"] = {r: [f"{c['task']} {c['dynamics']}" for c in cells
                               if have(c, r) and relative_to_end(c, r) < -SAFE]
                           for r in RULES if r not in ("never", "oracle")}
    for where in ("kept", "end"):
        ok = [number_ok(c, where) for c in cells]
        errs = [s["number"][where]["rel_error"] for c in cells for s in c["seeds"]]
        cov = [s["number"][where]["covered"] for c in cells for s in c["seeds"]]
        out[f"number_{where}"] = {"share_cells_within": float(np.mean(ok)),
                                  "median_rel_error": float(np.median(errs)),
                                  "interval_coverage": float(np.mean(cov))}
        acc = [s["number"][where].get("acc_error") for c in cells for s in c["seeds"]]
        acc = [a for a in acc if a is not None]
        if acc:
            accc = [s["number"][where]["acc_covered"] for c in cells for s in c["seeds"]
                    if "acc_covered" in s["number"][where]]
            out[f"number_{where}"]["accuracy_median_abs_error"] = float(np.median(acc))
            out[f"number_{where}"]["accuracy_within_5_points"] = float(
                np.mean(np.array(acc) <= 0.05))
            out[f"number_{where}"]["accuracy_interval_coverage"] = float(np.mean(accc))
        groups = {}
        for g in ("LN", "C", "R"):
            gc = [c for c in cells if c["group"] == g]
            if gc:
                groups[g] = float(np.mean([number_ok(c, where) for c in gc]))
        out[f"number_{where}"]["share_cells_within_by_group"] = groups
    return out


def targets(summ):
    """[(target, measured, met)] of issue 20."""
    rows = []
    h = summ.get("recipe_vs_holdout_acc")
    if h:
        rows.append((f"label noise: recipe >= 20 % holdout on >= {100 * HOLDOUT_SHARE:.0f} % of "
                     "cells", f"{100 * h['share_at_least']:.0f} % of {h['cells']}",
                     h["share_at_least"] >= HOLDOUT_SHARE))
        rows.append((f"label noise: recipe >= holdout by >= {100 * HOLDOUT_MARGIN:.0f} point on "
                     "average", f"{100 * h['mean_difference']:+.1f} points",
                     h["mean_difference"] >= HOLDOUT_MARGIN))
    lw = summ.get("recipe_vs_label_wave")
    if lw:
        rows.append(("label noise: recipe >= Label Wave on average",
                     f"{100 * lw['mean_difference']:+.1f} points", lw["mean_difference"] >= 0))
        real = summ.get("recipe_vs_label_wave_real", {})
        if real:
            rows.append(("label noise: recipe >= Label Wave on each real dataset",
                         ", ".join(f"{t.split(':')[1]} {100 * d:+.1f}" for t, d in real.items()),
                         all(d >= 0 for d in real.values())))
    gd = summ.get("recipe_vs_gradient_disparity")
    if gd:
        rows.append(("label noise: recipe >= gradient disparity on average",
                     f"{100 * gd['mean_difference']:+.1f} points", gd["mean_difference"] >= 0))
    share, worst = summ["safe_share"].get("recipe"), summ["worst_relative"].get("recipe")
    if share is not None:
        rows.append((f"every cell: within {100 * SAFE:.0f} % of training to the end on >= "
                     f"{100 * SAFE_SHARE:.0f} % of cells", f"{100 * share:.0f} %",
                     share >= SAFE_SHARE))
        rows.append((f"every cell: never more than {100 * NEVER_WORSE:.0f} % worse",
                     f"worst {100 * worst:+.1f} %", worst >= -NEVER_WORSE))
    n = summ["number_kept"]
    rows.append((f"the number at the kept epoch within {100 * NUMBER_TOLERANCE:.0f} % on >= "
                 f"{100 * NUMBER_SHARE:.0f} % of cells",
                 f"{100 * n['share_cells_within']:.1f} % (median error "
                 f"{100 * n['median_rel_error']:.0f} %)", n["share_cells_within"] >= NUMBER_SHARE))
    e = summ["number_end"]
    rows.append(("the number at the end of training (reported)",
                 f"{100 * e['share_cells_within']:.0f} % of cells within "
                 f"{100 * NUMBER_TOLERANCE:.0f} % (median error {100 * e['median_rel_error']:.0f} %)",
                 None))
    return rows


# ------------------------------------------------------------ report


def headline(part, summ):
    lines = ["| target (issue 20) | measured | met |", "| --- | --- | --- |"]
    for name, measured, met in targets(summ):
        lines.append(f"| {name} | {measured} | {'-' if met is None else 'yes' if met else 'no'} |")
    lines.append("")
    cols = [(g, d) for g, _ in S.HEADLINE_GROUPS for d in ("adam", "snr")
            if any(c["group"] == g and c["dynamics"] == d for c in part)]
    names = {"LN": "label noise", "C": "no noise, classif.", "R": "regression"}
    lines += ["Mean over cells (clean accuracy %, regression: held-out loss); in brackets "
              f"the cells whose mean is more than {100 * SAFE:.0f} % worse than training to "
              "the end:", "",
              "| rule | " + " | ".join(
                  f"{names[g]}, {d} ({sum(1 for c in part if c['group'] == g and c['dynamics'] == d)})"
                  for g, d in cols) + " |",
              "| --- |" + " --- |" * len(cols)]
    for r in RULES:
        row = []
        for g, d in cols:
            gc = [c for c in part if c["group"] == g and c["dynamics"] == d]
            vals = [cell_mean(c, r) for c in gc]
            if not all(np.isfinite(vals)):
                row.append("-")
                continue
            bad = 0 if r in ("never", "oracle") else sum(relative_to_end(c, r) < -SAFE
                                                         for c in gc)
            k, digits = (100, 1) if g != "R" else (1, 3)
            row.append(f"{k * np.mean(vals):.{digits}f} [{bad}]")
        lines.append(f"| {RULE_NAMES[r]} | " + " | ".join(row) + " |")
    lines += ["", "The number (`heldout_loss_estimate`, interval `[heldout_loss_low, "
              "heldout_loss_high]`; classifiers with `y_train`: `heldout_accuracy_estimate`):", "",
              "| where | cells within 25 % (LN / C / R) | median relative error | interval "
              "contains the held-out loss | accuracy: median abs. error, within 5 points, "
              "interval coverage |",
              "| --- | --- | --- | --- | --- |"]
    for where in ("kept", "end"):
        n = summ[f"number_{where}"]
        g = n["share_cells_within_by_group"]
        acc = ("-" if "accuracy_median_abs_error" not in n else
               f"{100 * n['accuracy_median_abs_error']:.1f} points, "
               f"{100 * n['accuracy_within_5_points']:.0f} %, "
               f"{100 * n['accuracy_interval_coverage']:.0f} %")
        lines.append(f"| {'recipe' + chr(39) + 's kept epoch' if where == 'kept' else 'last epoch'}"
                     f" | {100 * n['share_cells_within']:.0f} % ("
                     + " / ".join(f"{100 * g[k]:.0f} %" if k in g else "-" for k in ("LN", "C", "R"))
                     + f") | {100 * n['median_rel_error']:.0f} % | "
                     f"{100 * n['interval_coverage']:.0f} % of runs | {acc} |")
    return lines + [""]


def markdown(cells, summaries, command):
    lines = ["# Stopping without a validation set: population-risk benchmark v4", "",
             f"Command: `{command}`", "",
             "Quality: clean held-out accuracy (%) for classification, held-out loss (same "
             "label noise as training) for regression; mean over seeds. Recipe: "
             "`PopulationRiskEstimate(x_train=..., y_train=...)` + `ValidationFreeStopping()` "
             "(v4 held-out set: the library's own logs; design set: offline replica).", "",
             "Deviation from the pre-registration (4045270), found when the held-out set was "
             "first scored: the scorer's list of real datasets with injected label noise "
             "(`score.REAL_LABEL_NOISE`) lacked v4's `fair_sym25` and `mnist1d_sym40`, which "
             "filed them as noise-free. They are label-noise cells here. Scored as first "
             "committed, the label-noise targets read: recipe >= holdout on 28 % of 46 cells, "
             "-1.6 points on average; +2.7 points over Label Wave; +1.3 over gradient "
             "disparity (no real label-noise dataset, so no per-dataset row). The rule, its "
             "constants, the runs and every other target are unchanged.", ""]
    for name, title in (("v4-heldout", "v4 held-out set (generator seeds >= 2000, "
                         + ", ".join(V4_REAL) + ")"),
                        ("design", "v4 design set (everything recorded before: v3 design "
                         "and v3 held-out)")):
        part = [c for c in cells.values() if c["set"] == name]
        if not part:
            continue
        seeds = sorted({len(c["seeds"]) for c in part})
        lines += [f"## {title}", "", f"Seeds per cell: {'/'.join(map(str, seeds))}.", ""]
        lines += headline(part, summaries[name])
        for g, gtitle in S.HEADLINE_GROUPS:
            gc = [c for c in part if c["group"] == g]
            if not gc:
                continue
            lines += [f"### {gtitle}: {len(gc)} task x dynamics cells", "",
                      "| task | dynamics | " + " | ".join(RULE_NAMES[r] for r in RULES)
                      + " | number error at kept epoch |",
                      "| --- | --- |" + " --- |" * (len(RULES) + 1)]
            for c in gc:
                err = np.median([s["number"]["kept"]["rel_error"] for s in c["seeds"]])
                lines.append(f"| {c['task']} ({S.describe(c)}) | {c['dynamics']} | "
                             + " | ".join(S.fmt_q(c, r) for r in RULES)
                             + f" | {100 * err:.0f} % |")
            lines.append("")
    return "\n".join(lines) + "\n"


def report(runs, args, command):
    cells = collect_cells(runs)
    summaries = {}
    for name in ("design", "v4-heldout"):
        part = [c for c in cells.values() if c["set"] == name]
        if part:
            summaries[name] = summarise(part)
            summaries[name]["by_dynamics"] = {
                dyn: summarise([c for c in part if c["dynamics"] == dyn])
                for dyn in sorted({c["dynamics"] for c in part})}
    text = markdown(cells, summaries, command)
    print(text)
    if args.out:
        with open(args.out + ".md", "w") as f:
            f.write(text)
        with open(args.out + ".json", "w") as f:
            json.dump(S.to_json({"command": command, "summaries": summaries,
                                 "cells": list(cells.values())}), f, indent=1)
