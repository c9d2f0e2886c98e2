"""Tables of `benchmarks/population_risk_validation.py` from the recorded
runs (a benchmark helper, not API): `report()` writes OUT.md, OUT.json and
OUT_raw.json.gz."""

import gzip
import json
import os

import numpy as np

from . import estimators as PE
from .tasks import TASKS

SAFE = 0.02  # EarlyStopping may end at most 2 % above never stopping
SPEARMAN_TARGET, REGRET_TARGET = 0.9, 0.05
DEFAULT_PATIENCE = 20
HIGHLIGHT = (PE.LIBRARY, PE.REPLICA, "train_loss", "capped", "tic", "first_order",
             "decayed_capped+rel", "rsat_cal+rel", "cap_cur+rel", "train_loss+rel",
             "capped+rel", "n_min_tau+rel")
HEADLINE = (PE.LIBRARY, "capped", "tic", "train_loss")
REG_TASKS = ("teacher_student", "noisy_image")
# the reference shown in the headline table: Efron's form with the current
# plug-in variance (classification), sigma^2 frozen before interpolation (regression)
HEADLINE_REFERENCE = {"ce": "cov_gini_now", "mse": "cov_frozen"}


def task_meta(task):
    return {"weight_decay": TASKS[task](0, True).get("weight_decay")} if task else {}


_META = {}


def meta(task):
    if task not in _META:
        _META[task] = task_meta(task)
    return _META[task]


def score_candidate(r, name, patience):
    est, rel, logged = PE.evaluate(r, name)
    est = np.asarray(est, float)
    s = PE.score_series(logged, r.held, patience)
    s["spearman_raw"] = PE.spearman(est, r.held)
    s["mare_raw"] = float(np.nanmean(np.abs(est - r.held) / r.held))
    s["reliable_fraction"] = float(np.mean(rel)) if rel is not None else 1.0
    if rel is not None and rel.any():
        s["mare_reliable"] = float(np.nanmean((np.abs(est - r.held) / r.held)[rel]))
    else:
        s["mare_reliable"] = s["mare_raw"]
    s["never_stop"] = float(r.held[-1] / r.held.min() - 1)
    s["epoch1_vs_L1"] = float(est[0] / r.L[0] - 1)
    return s


def fmt(values, pct=False, signed=False):
    v = np.asarray([x for x in values], float)
    if v.size == 0 or np.all(np.isnan(v)):
        return "n/a"
    k = 100.0 if pct else 1.0
    f = "{:+.2f}" if signed else ("{:.1f}" if pct else "{:.3f}")
    m, sd = np.nanmean(v) * k, np.nanstd(v) * k
    unit = "%" if pct else ""
    if len(v) == 1:
        return f.format(m) + unit
    return f.format(m) + " ± " + ("{:.1f}" if pct else "{:.2f}").format(sd) + unit


def cells(runs, seeds=None):
    out = {}
    for (kind, task, dyn, seed), rec in runs.items():
        if kind != "main" or (seeds is not None and seed not in seeds):
            continue
        out.setdefault((task, dyn), []).append(PE.Run(rec, meta(task)))
    order = [(t, d) for t in TASKS for d in ("adam", "snr") if (t, d) in out]
    return [(c, out[c]) for c in order]


def summary_rows(cell_runs, names, patience):
    rows = []
    for name in names:
        safe, tgt, worst, regs, sps, ran = 0, 0, -np.inf, [], [], []
        missed = []
        for (task, dyn), rs in cell_runs:
            sc = [score_candidate(r, name, patience) for r in rs]
            w = max(s["es_vs_end"] for s in sc)
            worst = max(worst, w)
            safe += w <= SAFE
            sp = np.nanmean([s["spearman_raw"] for s in sc])
            rg = np.mean([s["es_regret"] for s in sc])
            ok = sp >= SPEARMAN_TARGET and rg <= REGRET_TARGET
            tgt += ok
            if w > SAFE:
                missed.append(f"{task}/{dyn}")
            regs.append(rg)
            sps.append(sp)
            ran.append(np.mean([s["es_ran"] / r.E for s, r in zip(sc, rs)]))
        rows.append(dict(name=name, safe=safe, cells=len(cell_runs), targets=tgt,
                         worst=worst, mean_regret=float(np.mean(regs)),
                         mean_spearman=float(np.nanmean(sps)), epochs_run=float(np.mean(ran)),
                         unsafe=missed))
    return rows


def summary_table(rows, patience):
    lines = ["| candidate | safe cells (worst seed ES ≤ +2 % vs never stopping) | cells meeting targets "
             "(Spearman ≥ 0.9 and ES regret ≤ 5 %) | worst ES vs never stopping | mean ES regret vs best "
             "| mean Spearman | epochs run | unsafe cells |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| `{r['name']}` | {r['safe']}/{r['cells']} | {r['targets']}/{r['cells']} | "
                     f"{100 * r['worst']:+.1f}% | {100 * r['mean_regret']:.1f}% | "
                     f"{r['mean_spearman']:+.2f} | {100 * r['epochs_run']:.0f}% | "
                     f"{', '.join(r['unsafe']) or '–'} |")
    return "\n".join(lines)


def main_table(cell_runs, names, patience):
    lines = [f"| task | dyn | candidate | Spearman | MARE | argmin regret | ES regret vs best (P={patience}) "
             f"| ES vs never stopping: mean / worst | stop epoch / epochs | reliable epochs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    per_run = []
    for (task, dyn), rs in cell_runs:
        never = [r.held[-1] / r.held.min() - 1 for r in rs]
        lines.append(f"| **{task}** | **{dyn}** | *never stopping* | | | | {fmt(never, pct=True)} | | "
                     f"{rs[0].E} epochs | |")
        for name in names:
            sc = [score_candidate(r, name, patience) for r in rs]
            for r, s in zip(rs, sc):
                per_run.append(dict(task=task, dynamics=dyn, seed=r.rec["seed"], candidate=name,
                                    patience=patience, **s))
            worst = max(s["es_vs_end"] for s in sc)
            flag = " ⚠" if worst > SAFE else ""
            lines.append(
                f"| {task} | {dyn} | `{name}` | {fmt([s['spearman_raw'] for s in sc], signed=True)} | "
                f"{fmt([s['mare_raw'] for s in sc])} | {fmt([s['argmin_regret'] for s in sc], pct=True)} | "
                f"{fmt([s['es_regret'] for s in sc], pct=True)} | "
                f"{fmt([s['es_vs_end'] for s in sc], pct=True)} / {100 * worst:+.1f}%{flag} | "
                f"{np.mean([s['es_epoch'] for s in sc]):.0f} / {np.mean([s['es_ran'] for s in sc]):.0f} | "
                f"{fmt([s['reliable_fraction'] for s in sc], pct=True)} |")
    return "\n".join(lines), per_run


def reference_section(runs, patience):
    """Covariance-penalty reference vs the same run's held-out loss."""
    lines = [f"| task | dyn | reference | Spearman | MARE | argmin regret | ES regret vs best (P={patience}) "
             f"| ES vs never stopping: mean / worst | final df per label entry |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    per_run = []
    groups = {}
    for (kind, task, dyn, seed), rec in runs.items():
        if kind == "shadow":
            groups.setdefault((task, dyn), []).append(rec)
    for task in TASKS:
        for dyn in ("adam", "snr"):
            recs = groups.get((task, dyn))
            if not recs:
                continue
            kind = "mse" if task in REG_TASKS else "ce"
            ests = [(PE.reference_estimates(sh, kind), np.array([e["heldout"] for e in sh["epochs"]]))
                    for sh in recs]
            for name in ests[0][0]:
                if name == "df_over_m":
                    continue
                sc = [PE.score_series(e[name], held, patience) for e, held in ests]
                for sh, s in zip(recs, sc):
                    per_run.append(dict(task=task, dynamics=dyn, seed=sh["seed"], reference=name, **s))
                worst = max(s["es_vs_end"] for s in sc)
                lines.append(
                    f"| {task} | {dyn} | `{name}` | {fmt([s['spearman'] for s in sc], signed=True)} | "
                    f"{fmt([s['mare'] for s in sc])} | {fmt([s['argmin_regret'] for s in sc], pct=True)} | "
                    f"{fmt([s['es_regret'] for s in sc], pct=True)} | "
                    f"{fmt([s['es_vs_end'] for s in sc], pct=True)} / {100 * worst:+.1f}%"
                    f"{' ⚠' if worst > SAFE else ''} | "
                    f"{fmt([e['df_over_m'][-1] for e, _ in ests])} |")
    return "\n".join(lines), per_run


def sensitivity(cell_runs, patiences=(5, 10, 20, 40)):
    lines = ["| patience | safe cells | cells meeting targets | worst ES vs never stopping | "
             "mean ES regret vs best | epochs run (mean fraction) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for p in patiences:
        r = summary_rows(cell_runs, [PE.LIBRARY], p)[0]
        lines.append(f"| {p} | {r['safe']}/{r['cells']} | {r['targets']}/{r['cells']} | "
                     f"{100 * r['worst']:+.1f}% | {100 * r['mean_regret']:.1f}% | "
                     f"{100 * r['epochs_run']:.0f}% |")
    return "\n".join(lines)


def kappa_sensitivity(cell_runs, patience, kappas=(0.01, 0.02, 0.05, 0.1, 0.2)):
    lines = ["| kappa | safe cells | cells meeting targets | worst ES vs never stopping | "
             "mean ES regret vs best | reliable epochs (mean) |",
             "| --- | --- | --- | --- | --- | --- |"]
    saved = PE.CANDIDATES[PE.REPLICA]
    try:
        for k in kappas:
            PE.CANDIDATES[PE.REPLICA] = (PE._with_floor(PE.e_min_dec_cal, k), saved[1])
            r = summary_rows(cell_runs, [PE.REPLICA], patience)[0]
            rel = np.mean([np.mean(PE.floor_reliable(x, k)) for _, rs in cell_runs for x in rs])
            lines.append(f"| {k} | {r['safe']}/{r['cells']} | {r['targets']}/{r['cells']} | "
                         f"{100 * r['worst']:+.1f}% | {100 * r['mean_regret']:.1f}% | {100 * rel:.0f}% |")
    finally:
        PE.CANDIDATES[PE.REPLICA] = saved
    return "\n".join(lines)


HEADER = """
## The library's estimator (`library` = `keras_snr.PopulationRiskEstimate()`, patience {pat})

`keras_snr.PopulationRiskEstimate(dataset_size=n, batch_size=b,
diagnostics=True)` ran in every main run; the rows `library` are the values
it logged there (`pop_risk` for EarlyStopping, `pop_risk_estimate` for
Spearman and MARE, `pop_risk_reliable`), nothing recomputed. The row
`{replica}` is its offline replica (float64, from the recorder's
reductions of the same optimizer states; agreement below). At each epoch
end it reads `optimizer.statistics()` (m_hat, v_hat, s_hat, q per
variable), `iterations`, `learning_rate`, `weight_decay` and
`logs["loss"]`; per coordinate P = 1/(sqrt(v_hat)+epsilon), N = alpha*s_hat
(alpha = b/(n-b)), g2 = max(m_hat^2 - c*s_hat, 0), c = (1-beta_1)/(1+beta_1);
u_e = updates in epoch e, D_e = exp(-lr*wd*u_e) (wd = decoupled weight
decay, 0 if None), L_e = the epoch-mean training loss Keras logs:

```
A_e = sum q P N min(1, sqrt(g2 / N))           # the legacy capped rate
B_e = sum q P N min(1, sqrt(g2 / g1sq))         # saturating rate; g1sq = g2 at the end of epoch 1
C_e = sum q P g2                                # first-order train-decrease rate
G_dec_e = D_e * (G_dec_{{e-1}} + lr * u_{{e-1}} * A_{{e-1}}),      G_dec_1 = 0
G_cal_e = D_e * G_cal_{{e-1}} + max(L_{{e-1}} - L_e, 0) * B_e / C_e,  G_cal_1 = 0
estimate_e = L_e + min(G_dec_e, G_cal_e)        # = L_1 after epoch 1 (anchored)
reliable_e = reliable_{{e-1}} and L_e >= 0.05 * L_1   (latched)
pop_risk_e = estimate_e if reliable_e else best_{{e-1}} - max(1e-6*|best_{{e-1}}|, 1e-12)
```

`best_{{e-1}}` is the smallest `pop_risk` logged before. While unreliable the
logged value is not an estimate: it is set just below every earlier value so
that `EarlyStopping(monitor="pop_risk", mode="min", patience={pat},
restore_best_weights=True)` (min_delta 0) never stops on it and restores the
latest epoch. The legacy estimators (`capped`, the library's default before,
`first_order`, `tic`, `gsnr`) are logged in the same runs by
`benchmarks/pop_risk/legacy.py` under `legacy_pop_risk_<name>`.
"""


def load_json(path):
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def _cell_scores(rs, name, patience):
    sc = [score_candidate(r, name, patience) for r in rs]
    return dict(spearman=float(np.nanmean([s["spearman_raw"] for s in sc])),
                regret=float(np.mean([s["es_regret"] for s in sc])),
                worst=float(max(s["es_vs_end"] for s in sc)))


def _triple(c):
    ok = c["spearman"] >= SPEARMAN_TARGET and c["regret"] <= REGRET_TARGET
    mark = (" ✓" if ok else "") + (" ⚠" if c["worst"] > SAFE else "")
    return f"{c['spearman']:+.2f} / {100 * c['regret']:.1f}% / {100 * c['worst']:+.1f}%{mark}"


def headline(cell_runs, ref_runs, patience):
    """Per task x dynamics: the library vs the legacy default, tic, the
    training loss and the reference. Returns (markdown, rows)."""
    names = [n for n in HEADLINE if n in PE.CANDIDATES]
    lines = ["| task | dyn | never stopping: regret vs best | "
             + " | ".join(f"`{n}`" for n in names)
             + " | reference (shadow seeds) |",
             "| --- | --- | --- | " + " | ".join("---" for _ in names) + " | --- |"]
    rows = []
    for (task, dyn), rs in cell_runs:
        never = [r.held[-1] / r.held.min() - 1 for r in rs]
        row = dict(task=task, dynamics=dyn, seeds=[r.rec["seed"] for r in rs],
                   never_stop_regret=float(np.mean(never)))
        cols = []
        for n in names:
            c = _cell_scores(rs, n, patience)
            row[n] = c
            cols.append(_triple(c))
        ref = HEADLINE_REFERENCE["mse" if task in REG_TASKS else "ce"]
        sc = [x for x in ref_runs if x["task"] == task and x["dynamics"] == dyn
              and x["reference"] == ref]
        if sc:
            c = dict(spearman=float(np.nanmean([x["spearman"] for x in sc])),
                     regret=float(np.mean([x["es_regret"] for x in sc])),
                     worst=float(max(x["es_vs_end"] for x in sc)))
            row["reference"] = dict(name=ref, seeds=sorted(x["seed"] for x in sc), **c)
            cols.append(f"`{ref}`: {_triple(c)}")
        else:
            cols.append("–")
        rows.append(row)
        lines.append(f"| {task} | {dyn} | {fmt(never, pct=True)} | " + " | ".join(cols) + " |")
    return "\n".join(lines), rows


def agreement_section(cell_runs):
    """The library's logged values vs the offline replica, per cell (max
    over seeds). Returns (markdown, per-run rows, overall maxima)."""
    lines = ["| task | dyn | max abs diff of `pop_risk` | max rel diff of `pop_risk` | "
             "max rel diff of `pop_risk_estimate` | max rel diff of gap_decayed / gap_calibrated | "
             "epochs with different reliability flags | same EarlyStopping epoch (P=20) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    per_run = []
    for (task, dyn), rs in cell_runs:
        ag = [PE.agreement(r) for r in rs]
        for r, a in zip(rs, ag):
            per_run.append(dict(task=task, dynamics=dyn, seed=r.rec["seed"], **a))
        lines.append(
            f"| {task} | {dyn} | {max(a['pop_risk_max_abs'] for a in ag):.1e} | "
            f"{max(a['pop_risk_max_rel'] for a in ag):.1e} | {max(a['estimate_max_rel'] for a in ag):.1e} | "
            f"{max(a['gap_decayed_max_rel'] for a in ag):.1e} / "
            f"{max(a['gap_calibrated_max_rel'] for a in ag):.1e} | "
            f"{sum(a['reliable_mismatch_epochs'] for a in ag)} | "
            f"{sum(a['same_es_epoch'] for a in ag)}/{len(ag)} |")
    keys = ("pop_risk_max_abs", "pop_risk_max_rel", "estimate_max_abs", "estimate_max_rel",
            "gap_decayed_max_rel", "gap_calibrated_max_rel")
    overall = {k: max(a[k] for a in per_run) for k in keys} if per_run else {}
    if per_run:
        for k in ("reliable_mismatch_epochs", "epochs_C_zero", "epochs_C_zero_reliable"):
            overall[k] = sum(a[k] for a in per_run)
        overall["runs_C_zero"] = sorted({f"{a['task']}/{a['dynamics']}" for a in per_run
                                         if a["epochs_C_zero"]})
        overall["gap_calibrated_max"] = max(a["gap_calibrated_max"] for a in per_run)
        overall["same_es_epoch_runs"] = sum(a["same_es_epoch"] for a in per_run)
        overall["runs"] = len(per_run)
    return "\n".join(lines), per_run, overall


def es_check_table(rows):
    lines = ["| task | dyn | seed | P | replay on the recorded `pop_risk`: restored epoch / epochs run | "
             "Keras: restored / run | held-out replay | held-out Keras | "
             "max rel. diff of `pop_risk` vs the recorded run | vs the offline replica |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['dynamics']} | {r['seed']} | {r['patience']} | "
                     f"{r['replay_restored_epoch']} / {r['replay_epochs_run']} | "
                     f"{r['keras_restored_epoch']} / {r['keras_epochs_run']} | "
                     f"{r['replay_heldout']:.6f} | {r['keras_heldout']:.6f} | "
                     f"{r['max_rel_diff_recorded']:.1e} | {r['max_rel_diff_replica']:.1e} |")
    return "\n".join(lines)


def cost_table(rows):
    lines = ["| task | dyn | plain s/epoch | 1+K towers s/epoch | cost × | forward pass over the training set, s "
             "| `keras_snr.PopulationRiskEstimate` s/epoch added | legacy callback (`capped`) s/epoch added |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['dynamics']} | {r['plain_s_per_epoch']:.3f} | "
                     f"{r['shadow_s_per_epoch']:.3f} | {r['cost_ratio']:.2f} | {r['plain_forward_train_s']:.3f} | "
                     f"{r['library_callback_s_per_epoch'] - r['plain_s_per_epoch']:+.3f} | "
                     f"{r['legacy_callback_s_per_epoch'] - r['plain_s_per_epoch']:+.3f} |")
    return "\n".join(lines)


def anchor_table(cell_runs):
    lines = ["| task | dyn | L1 (epoch-1 mean train loss) | held-out at the end of epoch 1 | "
             "library estimate after epoch 1 − L1 |",
             "| --- | --- | --- | --- | --- |"]
    for (task, dyn), rs in cell_runs:
        est = [PE.evaluate(r, PE.LIBRARY)[0][0] - r.L[0] for r in rs]
        lines.append(f"| {task} | {dyn} | {fmt([r.L[0] for r in rs])} | {fmt([r.held[0] for r in rs])} | "
                     f"{fmt(est)} |")
    return "\n".join(lines)


def _dates(recs):
    dates = sorted(r.get("date", "?") for r in recs)
    return f"{dates[0][:10]}" if dates[0][:10] == dates[-1][:10] else f"{dates[0][:10]} – {dates[-1][:10]}"


def report(runs, args, command):
    patience = args.patience or DEFAULT_PATIENCE
    seeds = args.seed_list
    dev_seeds = [s for s in seeds if s < 3]
    val_seeds = [s for s in seeds if s >= 3]
    cell_dev = cells(runs, dev_seeds)
    cell_all = cells(runs, seeds)
    names = [n for n in HIGHLIGHT if n in PE.CANDIDATES]
    backend = next(iter(runs.values()))["backend"] if runs else "?"
    mains = [r for k, r in runs.items() if k[0] == "main"]
    shadows = [r for k, r in runs.items() if k[0] == "shadow"]
    ref_table, ref_runs = reference_section(runs, patience)
    head_table, head_rows = headline(cell_all, ref_runs, patience)
    agree_table, agree_runs, agree = agreement_section(cell_all)
    text = ["# Population-risk estimators vs held-out loss\n",
            f"Command: `{command}`. The per-run records it reads (`--raw`) are written by the same "
            f"script, in one process or in several with `--record-only --shard i/k`; "
            f"`python benchmarks/population_risk_verify.py` and "
            f"`python benchmarks/population_risk_cost.py` add the checks below.  ",
            f"Backend {backend}, CPU, 1 intra-op thread per process on a shared 2-core machine. "
            f"Main runs: {len(mains)} ({_dates(mains) if mains else '–'}), "
            f"training wall time {sum(r['wall'] for r in mains) / 60:.0f} min; "
            f"shadow runs (covariance-penalty reference, seeds < 3): {len(shadows)}"
            + (f" ({_dates(shadows)}, {sum(r['wall'] for r in shadows) / 60:.0f} min; they do not involve "
               f"the estimators, so they were recorded once and reused)" if shadows else "")
            + f". Seeds {seeds}: {dev_seeds} were used to design the candidates, "
            f"{val_seeds} were run afterwards and held back; spread = ± std over seeds. "
            f"Raw per-epoch records: `population_risk_raw.json.gz`; per-run scores: `population_risk.json`.\n",
            "**Targets**, per task × dynamics (means over seeds): Spearman(estimate, held-out loss over "
            "epochs) ≥ 0.9 and ES regret vs the best epoch ≤ 5 %. **Safety**, per task × dynamics and "
            "for every seed: EarlyStopping(monitor, mode=\"min\", patience "
            f"{patience}, restore_best_weights=True), replayed on the logged series (checked against "
            "a real Keras run below), ends at most 2 % above never stopping: held-out(restored "
            "epoch) / held-out(last epoch) − 1 ≤ +2 %.\n",
            f"\n## Headline: the library vs the legacy default, TIC, the training loss and the reference "
            f"(seeds {seeds}; reference: seeds with shadow runs)\n",
            "Each cell: Spearman (mean over seeds) / ES regret vs the best epoch (mean) / worst seed's "
            "ES vs never stopping; ✓ = both targets met, ⚠ = unsafe (worst seed > +2 %). `library` = "
            "the values `keras_snr.PopulationRiskEstimate` logged during the runs. Reference: "
            "covariance penalty with 4 shadow copies (`cov_gini_now` for classification, "
            "`cov_frozen` for regression; no shadow runs on modular_addition and grokking).\n",
            head_table]
    hits = {n: sum(1 for r in head_rows if r[n]["spearman"] >= SPEARMAN_TARGET
                   and r[n]["regret"] <= REGRET_TARGET) for n in HEADLINE if head_rows and n in head_rows[0]}
    safe = {n: sum(1 for r in head_rows if r[n]["worst"] <= SAFE) for n in hits}
    text.append("\n" + "; ".join(f"`{n}`: safe in {safe[n]}/{len(head_rows)} cells, targets met in "
                                  f"{hits[n]}/{len(head_rows)}" for n in hits) + ".\n")
    if agree:
        text.append(f"\n## The library's logged values vs the offline replica `{PE.REPLICA}`\n")
        text.append(f"Over all {agree['runs']} main runs: max |library `pop_risk` − replica| = "
                    f"{agree['pop_risk_max_abs']:.1e} (max relative {agree['pop_risk_max_rel']:.1e}); "
                    f"`pop_risk_estimate` max relative {agree['estimate_max_rel']:.1e}; the two gaps max "
                    f"relative {agree['gap_decayed_max_rel']:.1e} (decayed) and "
                    f"{agree['gap_calibrated_max_rel']:.1e} (calibrated; relative to max(|replica|, "
                    f"1e-6 L1)); reliability flags differ in {agree['reliable_mismatch_epochs']} epochs; "
                    f"EarlyStopping (P=20) restores the same epoch in "
                    f"{agree['same_es_epoch_runs']}/{agree['runs']} runs. The library reduces in float32 "
                    "on the device, the replica in float64 on the host from the same optimizer states: "
                    "differences of ~1e-7 relative are float32 rounding.\n")
        if agree["epochs_C_zero"]:
            text.append(f"In {agree['epochs_C_zero']} epochs ({', '.join(agree['runs_C_zero'])}; "
                        f"{agree['epochs_C_zero_reliable']} of them while the estimate was reliable) "
                        "C = sum q P g2 was exactly 0 (every coordinate's g2 clipped to 0), in float32 "
                        "and in float64 alike; there the library (and the replica) count the whole drop "
                        "of the training loss as gap (B / C taken as 1). Where C is tiny but not 0, B / C "
                        "is large: `pop_risk_gap_calibrated` reached "
                        f"{agree['gap_calibrated_max']:.1e} in these runs, decayed only by weight decay "
                        "afterwards, and the min() takes the decayed gap from then on.\n")
        text.append(agree_table)
    text.append(HEADER.format(replica=PE.REPLICA, pat=patience))
    notes = getattr(args, "notes", None)
    if notes and os.path.exists(notes):
        with open(notes) as f:
            text.append(f.read())
    if val_seeds:
        text.append(f"\n## Summary, all seeds {seeds}, patience {patience}\n")
        text.append(summary_table(summary_rows(cell_all, list(PE.CANDIDATES), patience), patience))
        text.append(f"\n## Held-back seeds {val_seeds} only (candidates defined before these seeds were run; "
                    "the choice among them was made after, see the selection caveat)\n")
        text.append(summary_table(summary_rows(cells(runs, val_seeds), names, patience), patience))
    text.append(f"\n## Design seeds {dev_seeds} only\n")
    text.append(summary_table(summary_rows(cell_dev, list(PE.CANDIDATES), patience), patience))
    text.append(f"\n## `{PE.LIBRARY}`: patience (seeds {seeds})\n")
    text.append("EarlyStopping replayed on the library's logged `pop_risk` with other patiences.\n")
    text.append(sensitivity(cell_all))
    text.append(f"\n## Reliability threshold kappa (patience {patience}, seeds {seeds})\n")
    text.append(f"The library ran with its default 0.05 only, so this table is the offline replica "
                f"`{PE.REPLICA}` with other thresholds (its 0.05 row is the replica's summary row).\n")
    text.append(kappa_sensitivity(cell_all, patience))
    table, per_run = main_table(cell_all, names, patience)
    text.append(f"\n## Per task and dynamics (seeds {seeds}), patience {patience}\n")
    text.append("MARE = mean over epochs of |estimate − held-out| / held-out (raw estimate, all "
                "epochs). Spearman is of the raw estimate (`library`: `pop_risk_estimate`). "
                "⚠ = unsafe for some seed.\n")
    text.append(table)
    text.append("\n## Anchoring: the estimate after epoch 1\n")
    text.append(anchor_table(cell_all))
    text.append("\n## Covariance-penalty reference (shadow runs, K = "
                f"{args.shadows} perturbed copies, seeds with shadow runs)\n")
    text.append(ref_table)
    cost = load_json(getattr(args, "cost_json", None))
    if cost:
        text.append("\n### Cost of the reference and of the callbacks (`benchmarks/population_risk_cost.py`)\n")
        text.append(cost_table(cost))
    es = load_json(getattr(args, "es_json", None))
    if es:
        text.append("\n## EarlyStopping replay vs a real Keras run (`benchmarks/population_risk_verify.py`)\n")
        text.append("Each case is trained again with `keras_snr.PopulationRiskEstimate` and "
                    "`keras.callbacks.EarlyStopping(monitor=\"pop_risk\", mode=\"min\", "
                    "restore_best_weights=True)`; the held-out loss of the restored model is compared "
                    "with the replay on the recorded run.\n")
        text.append(es_check_table(es))
    md = "\n".join(text) + "\n"
    print(md)
    if args.out:
        with open(args.out + ".md", "w") as f:
            f.write(md)
        with open(args.out + ".json", "w") as f:
            json.dump({"command": command, "patience": patience, "seeds": seeds, "backend": backend,
                       "formulas": {k: v[1] for k, v in PE.CANDIDATES.items()},
                       "recommended": PE.RECOMMENDED, "replica": PE.REPLICA,
                       "targets": {"spearman": SPEARMAN_TARGET, "es_regret": REGRET_TARGET,
                                   "safe_es_vs_never_stopping": SAFE},
                       "headline": head_rows, "agreement": {"overall": agree, "runs": agree_runs},
                       "scores": per_run, "reference_scores": ref_runs, "es_check": es,
                       "cost": cost}, f, indent=0)
        # Everything the scores are computed from; the per-variable
        # breakdown and per-step losses (diagnosis only) stay in --raw.
        raw = {"|".join(map(str, k)): _slim(v) for k, v in runs.items()}
        with gzip.open(args.out + "_raw.json.gz", "wt") as f:
            json.dump(raw, f)
        print(f"wrote {args.out}.md, {args.out}.json, {args.out}_raw.json.gz")


def _slim(record):
    if not isinstance(record, dict) or not record.get("epochs"):
        return record
    drop = ("per_var", "batch_losses")
    epochs = [{k: v for k, v in e.items() if k not in drop} for e in record["epochs"]]
    return dict(record, epochs=epochs)
