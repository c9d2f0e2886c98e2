"""How well do estimates of the population (held-out) loss, computed from a
training run alone, track the held-out loss, and is it safe to early-stop
on them?

Trains small models on seven tasks under two optimizer dynamics, Adam
(`SNRAdam(gate=None)`) and the SNR gate (`SNRAdam(gate="snr",
alpha=finite_dataset_alpha(b, n))`), and records per epoch, through the
public API only (`optimizer.statistics()`, `optimizer.iterations`,
`optimizer.learning_rate`, `logs["loss"]`), scalar reductions of the
optimizer state, the logs of the library's
`keras_snr.PopulationRiskEstimate(diagnostics=True)` and of the legacy
estimators (`pop_risk/legacy.py`, keys `legacy_*`), and the held-out loss
(computed by a recorder from data no estimator sees). The library's own
logged `pop_risk` is scored as candidate `library`; the other candidates are
evaluated OFFLINE from the recorded series (`pop_risk/estimators.py`), among
them `min_dec_cal+rel`, an offline float64 replica of the library's
estimator (the report gives their agreement per run). The
covariance-penalty reference (Efron 2004) is estimated with shadow runs
(`pop_risk.record.run_shadows`).

Tasks (`pop_risk/tasks.py`): noisy_digits (MLP, 30 % flipped labels),
teacher_student (regression, noisy targets), modular_addition (one-hot MLP,
noise-free labels, no decay), noisy_image (Fourier-feature INR), digits_cnn
(CNN, 25 % flipped labels), markov_lm (1-block transformer on an order-2
Markov language), grokking ((a + b) mod 47, embedding MLP, weight decay 1).

Metrics per task x dynamics, mean +- std over seeds: Spearman(estimate,
held-out) over epochs; mean |estimate - held-out| / held-out; argmin regret
(held-out at the estimate's argmin vs the best epoch); Keras EarlyStopping
(mode="min", restore_best_weights=True, patience P) replayed on the
recorded series: its held-out loss vs the best epoch and vs training to
the end; the regret of never stopping. Targets: Spearman >= 0.9 and ES
regret vs the best epoch <= 5 % per task x dynamics (means over seeds);
safety: ES within +2 % of never stopping for every task, dynamics and seed.

Usage (JAX, one intra-op thread per process):
    # record (resumable; one JSON per run under --raw), then score
    python benchmarks/population_risk_validation.py --seeds 6 \\
        --raw /tmp/poprisk2/raw --out benchmarks/results/population_risk
    # parallel: start k processes with --record-only --shard i/k, then --score-only
    python benchmarks/population_risk_validation.py --quick   # smoke test, ~2 min
    python benchmarks/population_risk_validation.py --quick --tasks noisy_digits \\
        --epochs 3 --raw /tmp/x/raw --out /tmp/x/pr     # toy size, ~30 s
    # options: --tasks T ..., --dynamics adam snr, --shard i/k, --score-only,
    # --record-only, --shadows K, --patience P (default 20), --epochs E
    # seeds 0-2 are reported as design seeds, seeds >= 3 as held back; the
    # shadow runs (covariance-penalty reference) are made for seeds < 3 only.
    python benchmarks/population_risk_verify.py --raw /tmp/poprisk2/raw \\
        --out benchmarks/results/population_risk_es_check.json
    python benchmarks/population_risk_cost.py --out benchmarks/results/population_risk_cost.json
    # then --score-only again, to include both in the report

The report includes OUT_notes.md (hand-written findings), OUT_es_check.json
and OUT_cost.json when they exist (OUT = --out). Files: pop_risk/tasks.py
(tasks), pop_risk/record.py (runs, recorder, shadow runs),
pop_risk/estimators.py (candidates, EarlyStopping replay, metrics,
reference), pop_risk/report.py (tables), pop_risk/legacy.py (the legacy
estimators' callback). --quick is a smoke test: with its few epochs
patience 20 never stops.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _common import set_threads  # noqa: E402  (benchmarks/ is on sys.path)

DYNAMICS = {"adam": None, "snr": "snr"}
SHADOW_TASKS = ("noisy_digits", "teacher_student", "noisy_image", "digits_cnn", "markov_lm")


def run_list(tasks, dynamics, seeds, shadows):
    runs = [("main", t, d, s) for t in tasks for d in dynamics for s in seeds]
    if shadows:
        runs += [("shadow", t, d, s) for t in tasks if t in SHADOW_TASKS
                 for d in dynamics for s in seeds if s < 3]
    return runs


def raw_path(raw, kind, task, dyn, seed, quick, epochs=None):
    tag = ("quick__" if quick else "") + (f"e{epochs}__" if epochs else "")
    return os.path.join(raw, f"{tag}{kind}__{task}__{dyn}__{seed}.json")


def collect(args):
    import keras

    from pop_risk import record as R
    from pop_risk.tasks import TASKS

    os.makedirs(args.raw, exist_ok=True)
    runs = run_list(args.tasks, args.dynamics, args.seed_list, args.shadows)
    i, k = (int(x) for x in args.shard.split("/"))
    runs = runs[i::k]
    for kind, task, dyn, seed in runs:
        path = raw_path(args.raw, kind, task, dyn, seed, args.quick, args.epochs)
        if os.path.exists(path):
            continue
        t0 = time.time()
        if kind == "main":
            rec, _, _ = R.run_main(TASKS[task], DYNAMICS[dyn], seed, args.quick,
                                   epochs=args.epochs)
        else:
            rec = R.run_shadows(TASKS[task], DYNAMICS[dyn], seed, args.quick,
                                shadows=args.shadows, epochs=args.epochs)
        rec.update(kind=kind, task=task, dynamics=dyn, seed=seed, quick=args.quick,
                   backend=keras.backend.backend(),
                   date=time.strftime("%Y-%m-%d %H:%M:%S"))
        with open(path + ".tmp", "w") as f:
            json.dump(rec, f)
        os.replace(path + ".tmp", path)
        print(f"# {kind:6s} {task:17s} {dyn:4s} seed {seed}: {len(rec['epochs'])} epochs, "
              f"{time.time() - t0:.1f}s", flush=True)


def load_runs(raw, tasks, dynamics, seeds, quick, epochs=None):
    runs = {}
    for kind in ("main", "shadow"):
        for t in tasks:
            for d in dynamics:
                for s in seeds:
                    path = raw_path(raw, kind, t, d, s, quick, epochs)
                    if os.path.exists(path):
                        with open(path) as f:
                            runs[(kind, t, d, s)] = json.load(f)
    return runs


TASK_NAMES = ("noisy_digits", "teacher_student", "modular_addition", "noisy_image",
              "digits_cnn", "markov_lm", "grokking")  # = pop_risk.tasks.TASKS (imports keras)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, few epochs, 2 shadows")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", nargs="*", default=list(TASK_NAMES), choices=TASK_NAMES)
    parser.add_argument("--dynamics", nargs="*", default=list(DYNAMICS), choices=list(DYNAMICS))
    parser.add_argument("--shadows", type=int, default=4,
                        help="shadow runs per reference run (0: no reference)")
    parser.add_argument("--patience", type=int, default=None,
                        help="EarlyStopping patience (default: the recommended one)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of every run (default: the task's; --quick: a fifth, >= 5)")
    parser.add_argument("--raw", default="/tmp/poprisk2/raw", help="per-run JSON records")
    parser.add_argument("--shard", default="0/1", help="i/k: run every k-th run from i")
    parser.add_argument("--score-only", action="store_true")
    parser.add_argument("--record-only", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--es-json", default=None,
                        help="output of population_risk_verify.py (default OUT_es_check.json), "
                             "included in the report if present")
    parser.add_argument("--notes", default=None,
                        help="hand-written findings (default OUT_notes.md), included if present")
    parser.add_argument("--cost-json", default=None,
                        help="output of population_risk_cost.py (default OUT_cost.json), "
                             "included in the report if present")
    parser.add_argument("--out", help="prefix of the outputs: OUT.md, OUT.json, OUT_raw.json.gz")
    args = parser.parse_args()
    if args.quick:
        args.seeds = 1
        args.shadows = min(args.shadows, 2)
    args.seed_list = list(range(args.seeds))
    for key, suffix in (("es_json", "_es_check.json"), ("notes", "_notes.md"),
                        ("cost_json", "_cost.json")):
        if getattr(args, key) is None and args.out:
            setattr(args, key, args.out + suffix)
    set_threads(args.threads)
    if not args.score_only:
        collect(args)
    if args.record_only:
        return
    from pop_risk import report

    runs = load_runs(args.raw, args.tasks, args.dynamics, args.seed_list, args.quick, args.epochs)
    report.report(runs, args, command=" ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
