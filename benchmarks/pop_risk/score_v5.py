"""Scoring of the population-risk benchmark v5, keras_snr 1.0's rule (a
benchmark helper, not API): every stopping rule replayed on the recorded
runs, the number checked against the held-out loss at every epoch, the
targets and the report (OUT.md, OUT.json).

Sets: the design set is every run recorded before v5 (generator seeds 0-23,
1000-1023 and 2000-2029, the seven tasks, the real datasets of v3 and v4);
the held-out set is generator seeds >= 4000 and the real datasets of
`V5_REAL`, recorded after the rule, its constants, the number, its
reliability flag and this scoring were committed.

Rules (0-based kept epoch of the full-data run unless said):

- `recipe`: `PopulationRiskEstimate(x_train=..., y_train=...)` +
  `ValidationFreeStopping(estimate)` of keras_snr 1.0, replayed with the
  library's own functions (`keras_snr.population_risk.stopping_update`,
  `kept_epoch`) on the signals the estimate logged (v5 runs:
  `memorization_ready`, `memorization`, `pop_risk_stop`, `train_loss_end`,
  `loss`); on runs recorded before v5, on signals rebuilt from the record
  (prediction changes on a 256-example sample drawn binomially from the full
  training set's where the sample's were not logged; the full training
  set's end-of-epoch loss). Where it stops early, the epochs after the stop
  are not used.
- `recipe_v02`, `recipe_v01`: keras_snr 0.2's and 0.1's rules
  (`score_v4.validation_free_stopping` on `loss + G`, held below its best
  once the loss falls under 5 % of the first epoch's; 0.1 without the wave),
  on the same signals.
- `holdout_acc`, `holdout_loss`, `retrain`, `label_wave`, `never`, `oracle`
  as in v3 (`score.py`); `gradient_disparity` as in v4.

The number: at every epoch of every full run, `pop_risk` against the
held-out loss (labels drawn like the training labels), whether it lies in
`[pop_risk_low, pop_risk_high]`, and `pop_risk_reliable`; `pop_accuracy`
against the held-out accuracy (noisy labels). On runs recorded before v5 the
library's formulas (`keras_snr.population_risk`) are applied to the record
(the full training set's end-of-epoch loss standing in for the sample's).

Targets (pre-registered; held-out set; cell = task x dynamics, means over
its seeds; groups LN label-noise classification, C noise-free
classification, R regression):

- safety, each group: the recipe within 2 % (relative) of training to the
  end on >= 95 % of cells, never more than 5 % worse;
- LN: the recipe's mean clean accuracy >= training to the end + 1 point and
  >= the better of `recipe_v01` and `recipe_v02`; stretch: >= the 20 %
  holdout (val_accuracy);
- the number, over every epoch of every run (all groups together, each
  group reported apart): where reliable, within 25 % of the held-out loss
  on >= 80 % of points and inside the interval on >= 90 %; reliable on >=
  60 % of points; never off by more than 3x while reliable.
"""

import json
import math

import numpy as np

from keras_snr import population_risk as PR

from . import rules as RL
from . import score as S
from . import score_v4 as S4

V5_REAL = ("mnist5k_sym30", "mnist5k", "autompg")
PATIENCE, MEMORIZATION_RATIO = 10, 0.15  # ValidationFreeStopping's defaults
SAMPLE = 256  # PopulationRiskEstimate(sample_size=256)
WAVE = dict(window=5, rise=2.0, horizon=10)  # its Label Wave defaults
SAFE, NEVER_WORSE, SAFE_SHARE = 0.02, 0.05, 0.95
LN_MARGIN = 0.01
TOLERANCE, WITHIN_SHARE, COVER_SHARE, RELIABLE_SHARE, MAX_FACTOR = 0.25, 0.80, 0.90, 0.60, 3.0
GROUPS = ("LN", "C", "R")

RULES = ("never", "oracle", "holdout_acc", "holdout_loss", "retrain", "label_wave",
         "gradient_disparity", "recipe_v01", "recipe_v02", "recipe")
RULE_NAMES = {
    "never": "never stopping", "oracle": "best epoch (oracle)",
    "holdout_acc": "20 % holdout, ES val_accuracy", "holdout_loss": "20 % holdout, ES val_loss",
    "retrain": "holdout's epochs, retrained on all", "label_wave": "Label Wave",
    "gradient_disparity": "gradient disparity", "recipe_v01": "keras_snr 0.1 recipe",
    "recipe_v02": "keras_snr 0.2 recipe", "recipe": "keras_snr 1.0 recipe",
}


def task_set(task):
    family, key = task.split(":")
    if family == "gen":
        return "heldout" if int(key) >= 4000 else "design"
    return "heldout" if family == "real" and key in V5_REAL else "design"


# ------------------------------------------------------------ signals


def gap_series(run):
    """The accumulated optimism `G` per epoch from the record's optimizer
    sums, with the library's `gap_update`."""
    gap, out = 0.0, []
    for e in range(run.E):
        ep = run.rec["epochs"][e]
        gap = PR.gap_update(gap, ep["lr"], run.weight_decay, ep["updates"],
                            run.sums["capped_rate"][e])
        out.append(gap)
    return np.array(out)


def signals(run):
    """Per epoch, what `ValidationFreeStopping` reads from the estimate
    (`keras_snr.PopulationRiskEstimate.signals`), and the source: the
    library's logs ("library", v5 runs) or rebuilt from the record."""
    L, first = run.L, run.L[0]
    ranked = np.logical_and.accumulate(L >= PR.RANKED_LOSS_FRACTION * first)
    if "memorization_ready" in run.logs:
        lg = run.logs
        end = lg["train_loss_end"] if "train_loss_end" in lg else np.full(run.E, np.nan)
        score, ready = lg["pop_risk_stop"], lg["memorization_ready"] > 0.5
        wave = lg["memorization"] > 0.5 if "memorization" in lg else np.zeros(run.E, bool)
        source = "library"
    else:
        end, score = np.array([e["train_end_loss"] for e in run.rec["epochs"]]), L + gap_series(run)
        ready = wave = np.zeros(run.E, bool)
        if run.classification:
            ready, wave = wave_flags(run)
        source = "record"
    out = []
    for e in range(run.E):
        finite = bool(np.isfinite(L[e]) and np.isfinite(score[e])
                      and (not run.classification or np.isfinite(end[e])))
        out.append({"finite": finite, "ready": bool(ready[e]), "wave": bool(wave[e]),
                    "ranked": bool(ranked[e]), "score": float(score[e]),
                    "end_loss": float(end[e]) if run.classification else None,
                    "classifier": run.classification})
    return out, source


def wave_flags(run, window=WAVE["window"], rise=WAVE["rise"], horizon=WAVE["horizon"]):
    """`(ready, wave)` per epoch with the library's `wave_update`, on the
    sample's changes where they were logged (v3 held-out: 512 examples; v4:
    256) and otherwise a binomial draw of a 256-example sample's (seed 0)."""
    if "prediction_changes" in run.logs:
        size = min(logged_sample_size(run.rec["task"]), run.n)
        fractions = list(run.logs["prediction_changes"])
    else:
        counts, size = S4.sample_changes(run, run.rec)
        fractions = list(counts / size)
    state, ready, wave = PR.new_wave(), [], []
    for e, f in enumerate(fractions):
        changed = None if e == 0 or not np.isfinite(f) else float(f)
        state = PR.wave_update(state, changed, size, window, rise, horizon)
        ready.append(state["ready"])
        wave.append(state["wave"])
    return np.array(ready), np.array(wave)


def logged_sample_size(task):
    """The sample on which the library counted the logged prediction
    changes: 512 examples on the v3 held-out set (`sample_size` was 512
    then), 256 since v4."""
    family, key = task.split(":")
    v3 = (family == "gen" and 1000 <= int(key) < 2000) or (family == "real" and key in (
        "mnist1d_sym30", "mnist1d_pair20", "breast_cancer_sym20", "diabetes"))
    return 512 if v3 else SAMPLE


def replay_recipe(sig, patience=PATIENCE, ratio=MEMORIZATION_RATIO):
    """`(kept epoch, epochs run)` of `ValidationFreeStopping(patience,
    memorization_ratio)`, with the library's functions."""
    state, last = PR.new_stopping(), len(sig) - 1
    for e, s in enumerate(sig):
        if not s["classifier"]:
            s = {**s, "ready": False}
        state, stop = PR.stopping_update(state, e, s, patience, ratio)
        if stop:
            last = e
            break
    kept, _ = PR.kept_epoch(state, last, sig[last]["end_loss"], sig[last]["finite"], ratio)
    return kept, last + 1


def replay_old(sig, run, wave_needed):
    """keras_snr 0.2's (`wave_needed`) or 0.1's recipe on the same signals."""
    score = S.gated([s["score"] for s in sig], [s["ranked"] for s in sig])
    if run.classification:
        ready = [s["ready"] for s in sig]
        wave = [s["wave"] for s in sig] if wave_needed else [True] * run.E
    else:
        ready = wave = [True] * run.E
    return S4.validation_free_stopping(score, ready, wave)[0]


# ------------------------------------------------------------ the number


def number_series(run):
    """`(estimate, low, high, reliable)` per epoch: the library's logs (v5)
    or its formulas on the record."""
    lg = run.logs
    if "pop_risk_low" in lg:
        return lg["pop_risk"], lg["pop_risk_low"], lg["pop_risk_high"], lg["pop_risk_reliable"] > .5
    end = np.array([e["train_end_loss"] for e in run.rec["epochs"]])
    gap, first = gap_series(run), run.L[0]
    rows = [PR.loss_estimate(run.L[e], end[e], first, gap[e]) for e in range(run.E)]
    reliable = [PR.is_reliable(end[e], first, gap[e]) for e in range(run.E)]
    return (*(np.array(c) for c in zip(*rows)), np.array(reliable))


def number_points(run):
    est, low, high, reliable = number_series(run)
    held = run.held
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.maximum(est / held, held / est)
    out = {"reliable": reliable.tolist(), "within": (np.abs(est / held - 1) <= TOLERANCE).tolist(),
           "covered": ((low <= held) & (held <= high)).tolist(),
           "factor": np.where(np.isfinite(factor), factor, np.inf).tolist()}
    acc = run.logs.get("pop_accuracy")
    if acc is not None:
        truth = np.array([e["heldout_acc"] for e in run.rec["epochs"]])
        out["acc_error"] = np.abs(acc - truth).tolist()
        out["acc_covered"] = ((run.logs["pop_accuracy_low"] <= truth)
                              & (truth <= run.logs["pop_accuracy_high"])).tolist()
    return out


# ------------------------------------------------------------ cells


def collect_cells(runs, patience=PATIENCE, ratio=MEMORIZATION_RATIO):
    """`{(task, dynamics): cell}`; `patience` and `ratio` are the recipe's
    (the design script varies them)."""
    cells = {}
    for (kind, task, dyn, seed), rec in sorted(runs.items()):
        if kind != "full":
            continue
        holdout = runs.get(("holdout", task, dyn, seed))
        run = S.Run(rec)
        run.rec.setdefault("task", task)
        base = S.rule_epochs(run, holdout)
        epochs = {k: base[k] for k in ("never", "oracle", "holdout_acc", "holdout_loss",
                                       "retrain", "label_wave") if k in base}
        sig, source = signals(run)
        kept, ran = replay_recipe(sig, patience, ratio)
        epochs["recipe"] = (kept, "full")
        epochs["recipe_v02"] = (replay_old(sig, run, True), "full")
        epochs["recipe_v01"] = (replay_old(sig, run, False), "full")
        gd = [e.get("gd") for e in rec["epochs"]]
        if all(g is not None for g in gd):
            epochs["gradient_disparity"] = (RL.gradient_disparity(gd, S4.GD_PATIENCE)[0], "full")
        res = {name: S.outcome(run, holdout, k, src) for name, (k, src) in epochs.items()}
        cell = cells.setdefault((task, dyn), {
            "task": task, "dynamics": dyn, "set": task_set(task), "group": S.group(rec),
            "info": rec.get("info", {}), "source": source, "seeds": [],
            "classification": run.classification})
        cell["seeds"].append({"seed": seed, "rules": res, "epochs": run.E, "recipe_ran": ran,
                              "restored": kept != ran - 1, "number": number_points(run)})
    return cells


def cell_mean(cell, rule):
    return S.cell_mean(cell, rule)


def relative_to_end(cell, rule):
    q, end = cell_mean(cell, rule), cell_mean(cell, "never")
    if cell["classification"]:
        return q / end - 1.0 if end > 0 else 0.0
    return end / q - 1.0


def number_summary(cells):
    pts = {k: [] for k in ("reliable", "within", "covered", "factor")}
    acc_err, acc_cov = [], []
    for c in cells:
        for s in c["seeds"]:
            for k in pts:
                pts[k] += s["number"][k]
            acc_err += s["number"].get("acc_error", [])
            acc_cov += s["number"].get("acc_covered", [])
    rel = np.array(pts["reliable"], bool)
    if not len(rel):
        return None
    out = {"points": int(len(rel)), "reliable_share": float(rel.mean())}
    if rel.any():
        out.update(within_share=float(np.mean(np.array(pts["within"])[rel])),
                   covered_share=float(np.mean(np.array(pts["covered"])[rel])),
                   max_factor=float(np.max(np.array(pts["factor"])[rel])))
    out["within_share_all_points"] = float(np.mean(pts["within"]))
    if acc_err:
        out.update(accuracy_median_abs_error=float(np.median(acc_err)),
                   accuracy_within_5_points=float(np.mean(np.array(acc_err) <= 0.05)),
                   accuracy_interval_coverage=float(np.mean(acc_cov)))
    return out


def summarise(cells):
    out = {"cells": len(cells)}
    have = lambda c, r: np.isfinite(cell_mean(c, r))  # noqa: E731
    ln = [c for c in cells if c["group"] == "LN"]
    out["label_noise_mean"] = {r: float(np.mean([cell_mean(c, r) for c in ln]))
                               for r in RULES if ln and all(have(c, r) for c in ln)}
    out["safety"] = {}
    for g in GROUPS:
        gc = [c for c in cells if c["group"] == g]
        if not gc:
            continue
        out["safety"][g] = {}
        for r in RULES:
            if r in ("never", "oracle") or not all(have(c, r) for c in gc):
                continue
            rel = np.array([relative_to_end(c, r) for c in gc])
            out["safety"][g][r] = {"cells": len(gc), "safe_share": float(np.mean(rel >= -SAFE)),
                                   "worst": float(rel.min()),
                                   "unsafe": [f"{c['task']} {c['dynamics']}" for c, x in
                                              zip(gc, rel) if x < -SAFE]}
    out["number"] = {"all": number_summary(cells)}
    for g in GROUPS:
        gc = [c for c in cells if c["group"] == g]
        if gc:
            out["number"][g] = number_summary(gc)
    runs = [s for c in cells for s in c["seeds"]]
    out["recipe_restored_share"] = float(np.mean([s["restored"] for s in runs]))
    out["recipe_stopped_early_share"] = float(np.mean([s["recipe_ran"] < s["epochs"]
                                                       for s in runs]))
    return out


def targets(summ):
    """[(target, measured, met)], pre-registered."""
    rows = []
    for g in GROUPS:
        s = summ["safety"].get(g, {}).get("recipe")
        if s:
            rows.append((f"{g}: within {100 * SAFE:.0f} % of training to the end on >= "
                         f"{100 * SAFE_SHARE:.0f} % of cells",
                         f"{100 * s['safe_share']:.0f} % of {s['cells']}",
                         s["safe_share"] >= SAFE_SHARE))
            rows.append((f"{g}: never more than {100 * NEVER_WORSE:.0f} % worse",
                         f"worst {100 * s['worst']:+.1f} %", s["worst"] >= -NEVER_WORSE))
    m = summ["label_noise_mean"]
    if "recipe" in m:
        rows.append((f"LN: recipe >= training to the end + {100 * LN_MARGIN:.0f} point",
                     f"{100 * (m['recipe'] - m['never']):+.2f} points",
                     m["recipe"] >= m["never"] + LN_MARGIN))
        best_old = max(m["recipe_v01"], m["recipe_v02"])
        rows.append(("LN: recipe >= the better of keras_snr 0.1 and 0.2",
                     f"{100 * (m['recipe'] - best_old):+.2f} points", m["recipe"] >= best_old))
        if "holdout_acc" in m:
            rows.append(("LN (stretch): recipe >= 20 % holdout (val_accuracy)",
                         f"{100 * (m['recipe'] - m['holdout_acc']):+.2f} points",
                         m["recipe"] >= m["holdout_acc"]))
    n = summ["number"]["all"]
    if n and "within_share" in n:
        rows += [
            (f"number: within {100 * TOLERANCE:.0f} % where reliable on >= "
             f"{100 * WITHIN_SHARE:.0f} % of points", f"{100 * n['within_share']:.0f} %",
             n["within_share"] >= WITHIN_SHARE),
            (f"number: inside the interval where reliable on >= {100 * COVER_SHARE:.0f} % of "
             "points", f"{100 * n['covered_share']:.0f} %", n["covered_share"] >= COVER_SHARE),
            (f"number: reliable on >= {100 * RELIABLE_SHARE:.0f} % of points",
             f"{100 * n['reliable_share']:.0f} %", n["reliable_share"] >= RELIABLE_SHARE),
            (f"number: never off by more than {MAX_FACTOR:g}x while reliable",
             f"worst {n['max_factor']:.2f}x", n["max_factor"] <= MAX_FACTOR)]
    return rows


# ------------------------------------------------------------ report


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f} %"


def section(part, summ):
    lines = ["| target | measured | met |", "| --- | --- | --- |"]
    for name, measured, met in targets(summ):
        lines.append(f"| {name} | {measured} | {'yes' if met else 'no'} |")
    names = {"LN": "label noise", "C": "no noise, classif.", "R": "regression"}
    cols = [(g, d) for g in GROUPS for d in ("adam", "snr")
            if any(c["group"] == g and c["dynamics"] == d for c in part)]
    lines += ["", "Mean over cells (clean accuracy %, regression: held-out loss); in brackets "
              f"the cells more than {100 * SAFE:.0f} % worse than training to the end:", "",
              "| rule | " + " | ".join(
                  f"{names[g]}, {d} ({sum(c['group'] == g and c['dynamics'] == d for c in part)})"
                  for g, d in cols) + " |", "| --- |" + " --- |" * len(cols)]
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
    lines += ["", f"The recipe restored earlier weights on {_pct(summ['recipe_restored_share'])}"
              f" of runs and stopped early on {_pct(summ['recipe_stopped_early_share'])}.", "",
              "The number over every epoch of every run (`pop_risk` against the held-out loss "
              "with training-like labels; `pop_accuracy` against the held-out accuracy):", "",
              "| group | points | reliable | within 25 % (reliable) | in interval (reliable) "
              "| worst factor (reliable) | within 25 % (all points) | accuracy: median error, "
              "within 5 points, coverage |", "| --- |" + " --- |" * 7]
    for g in ("all",) + GROUPS:
        n = summ["number"].get(g)
        if not n:
            continue
        acc = ("-" if "accuracy_median_abs_error" not in n else
               f"{100 * n['accuracy_median_abs_error']:.1f} points, "
               f"{_pct(n['accuracy_within_5_points'])}, {_pct(n['accuracy_interval_coverage'])}")
        lines.append(f"| {g} | {n['points']} | {_pct(n['reliable_share'])} | "
                     f"{_pct(n.get('within_share'))} | {_pct(n.get('covered_share'))} | "
                     f"{n.get('max_factor', math.nan):.2f}x | "
                     f"{_pct(n['within_share_all_points'])} | {acc} |")
    return lines + [""]


def markdown(cells, summaries, command):
    lines = ["# Stopping without a validation set: population-risk benchmark v5 (keras_snr 1.0)",
             "", f"Command: `{command}`", "",
             "Quality: clean held-out accuracy (%) for classification, held-out loss (same "
             "label noise as training) for regression; mean over seeds. The rules and targets "
             "are in `benchmarks/pop_risk/score_v5.py`'s docstring.", ""]
    for name, title in (("heldout", "Held-out set (generator seeds >= 4000, "
                         + ", ".join(V5_REAL) + ")"),
                        ("design", "Design set (everything recorded before v5)")):
        part = [c for c in cells.values() if c["set"] == name]
        if not part:
            continue
        seeds = sorted({len(c["seeds"]) for c in part})
        lines += [f"## {title}", "", f"Seeds per cell: {'/'.join(map(str, seeds))}.", ""]
        lines += section(part, summaries[name])
        for g, gtitle in S.HEADLINE_GROUPS:
            gc = [c for c in part if c["group"] == g]
            if not gc:
                continue
            lines += [f"### {gtitle}: {len(gc)} task x dynamics cells", "",
                      "| task | dynamics | " + " | ".join(RULE_NAMES[r] for r in RULES) + " |",
                      "| --- | --- |" + " --- |" * len(RULES)]
            for c in gc:
                lines.append(f"| {c['task']} ({S.describe(c)}) | {c['dynamics']} | "
                             + " | ".join(S.fmt_q(c, r) for r in RULES) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def report(runs, args, command):
    cells = collect_cells(runs)
    summaries = {}
    for name in ("design", "heldout"):
        part = [c for c in cells.values() if c["set"] == name]
        if part:
            summaries[name] = summarise(part)
    text = markdown(cells, summaries, command)
    print(text)
    if args.out:
        with open(args.out + ".md", "w") as f:
            f.write(text)
        slim = [{**c, "seeds": [{k: v for k, v in s.items() if k != "number"}
                                for s in c["seeds"]]} for c in cells.values()]
        with open(args.out + ".json", "w") as f:  # the per-epoch points are in the runs
            json.dump(S.to_json({"command": command, "summaries": summaries, "cells": slim}),
                      f, indent=1)
    return cells, summaries
