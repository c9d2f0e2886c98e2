"""Stopping without a validation set, judged on a task distribution and real
data: does early stopping on `keras_snr.PopulationRiskEstimate` with 100 %
of the training data beat what a user would otherwise do (hold out 20 %,
or a published validation-free rule)?

Task sets (see `--set`):

- `design`: generated tasks with generator seeds 0-23
  (`pop_risk/generator.py`) and the seven tasks of the previous benchmark
  (`pop_risk/tasks.py`). The estimator was designed on these.
- `heldout`: generated tasks with generator seeds 1000-1023 and the real
  datasets of `pop_risk/real.py` (MNIST-1D, breast cancer, diabetes). Their
  first run was made after the estimator, its constants and this scoring
  were committed (the commit named in README.md).

Pre-registered before the first held-out run (this file, pop_risk/score.py
and keras_snr/callbacks.py as committed; one deviation, committed before any
held-out result was looked at: `sample_size` 2048 -> 512, see
results/population_risk_design_notes.md):

- the recipe: `keras_snr.PopulationRiskEstimate(dataset_size=n,
  batch_size=b, x_train=x_train)` with its defaults (`sample_size=512`,
  `label_wave_window=5`, `reliability_threshold=0.05`), followed by
  `keras_snr.ValidationFreeStopping()` (patience 10, restore best weights),
  replayed from the library's own logs (`pop_risk`, `pop_risk_ready`);
- held-out runs: seeds 0-2, both dynamics, every held-out task;
- anchors: 20 % holdout with EarlyStopping(patience 10) on val_accuracy
  (classification) and on val_loss; retrain on all data for the holdout's
  epoch count; Label Wave (window 3, training-set prediction changes);
  EB criterion; the old `capped` estimate with EarlyStopping(patience 20);
  never stopping; the oracle;
- targets (issue 16): on label-noise classification cells the recipe's
  mean clean accuracy is at least the holdout's (val_accuracy) on >= 80 %
  of cells and on average, and at least Label Wave's on average; on every
  cell and seed it is never more than 2 % (relative) worse than training
  to the end; Spearman(pop_risk_estimate, held-out loss) >= 0.9 on >= 70 %
  of cells, with the mean absolute relative error reported.

Per task, seed and dynamics (Adam: `SNRAdam(gate=None)`; the SNR gate:
`SNRAdam(alpha=finite_dataset_alpha(b, n))`) there are two runs
(`pop_risk/runs.py`): one on 100 % of the training set, from whose record
every validation-free rule, the oracle and retrain-on-all are replayed,
and one on 80 % with the other 20 % held out (the holdout anchor).
Scoring is in `pop_risk/score.py`.

v4 (issue 20; `--set v4`, scored by `pop_risk/score_v4.py`, whose
docstring holds the rule, the targets and what was fixed before the first
v4 held-out run): generator seeds 2000-2029 (a wider distribution, see
`pop_risk/generator.py`) and the real datasets fair_sym25, randhie and
mnist1d_sym40; seeds 0-2, both dynamics. Its design set is everything above.

    python benchmarks/population_risk_benchmark.py --set v4 --seeds 3 \\
        --raw /tmp/poprisk4/raw --record-only --shard 0/2   # and 1/2
    python benchmarks/population_risk_benchmark.py --set v4 --seeds 3 --score-only \\
        --raw /tmp/poprisk4/raw --bundle benchmarks/results/population_risk_v4_runs.json.gz
    # what benchmarks/results/population_risk_v4.md is (from the committed runs):
    python benchmarks/population_risk_benchmark.py --set v4all --seeds 3 --score-only \\
        --raw benchmarks/results/population_risk_design_runs.json.gz \\
        benchmarks/results/population_risk_heldout_runs.json.gz \\
        benchmarks/results/population_risk_v4_runs.json.gz \\
        --out benchmarks/results/population_risk_v4

Usage (JAX, one thread per process; resumable, one JSON per run):
    python benchmarks/population_risk_benchmark.py --set design --seeds 2 \\
        --raw /tmp/poprisk3/raw --record-only --shard 0/2   # and 1/2
    python benchmarks/population_risk_benchmark.py --set heldout --seeds 3 \\
        --raw /tmp/poprisk3/raw --out benchmarks/results/population_risk
    # the committed runs: benchmarks/results/population_risk_{design,heldout}_runs.json.gz
    python benchmarks/population_risk_benchmark.py --set heldout --seeds 3 --score-only \\
        --raw benchmarks/results/population_risk_heldout_runs.json.gz --out /tmp/pr
    # both sets in one report (what benchmarks/results/population_risk.md is):
    python benchmarks/population_risk_benchmark.py --set all --seeds 3 --score-only \\
        --raw benchmarks/results/population_risk_design_runs.json.gz \\
        benchmarks/results/population_risk_heldout_runs.json.gz --out /tmp/pr
    python benchmarks/population_risk_benchmark.py --quick --tasks gen:0 \\
        --raw /tmp/x --out /tmp/x/pr     # toy size, ~30 s
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
SEVEN = ("noisy_digits", "teacher_student", "modular_addition", "noisy_image",
         "digits_cnn", "markov_lm", "grokking")
REAL = ("mnist1d_sym30", "mnist1d_pair20", "breast_cancer_sym20", "diabetes")
V4_REAL = ("fair_sym25", "randhie", "mnist1d_sym40")
V5_REAL = ("mnist5k_sym30", "mnist5k", "autompg")
SETS = {
    "design": [f"gen:{i}" for i in range(24)] + [f"seven:{t}" for t in SEVEN],
    "heldout": [f"gen:{i}" for i in range(1000, 1024)] + [f"real:{t}" for t in REAL],
    # v4 (issue 20): fresh generator seeds from a widened distribution and
    # real datasets v3 did not use; scored by pop_risk/score_v4.py
    "v4": [f"gen:{i}" for i in range(2000, 2030)] + [f"real:{t}" for t in V4_REAL],
    # v5 (keras_snr 1.0): fresh generator seeds with runs up to 150 epochs and
    # real data never used before; scored by pop_risk/score_v5.py
    "v5": [f"gen:{i}" for i in range(4000, 4040)] + [f"real:{t}" for t in V5_REAL],
}
SETS["all"] = SETS["design"] + SETS["heldout"]
SETS["v4all"] = SETS["all"] + SETS["v4"]
SETS["v5all"] = SETS["v4all"] + SETS["v5"]


def make_task(name, seed, quick):
    """The task dict of task `name` (`gen:SEED`, `seven:NAME`, `real:NAME`)."""
    family, key = name.split(":")
    if family == "gen":
        from pop_risk.generator import draw_spec
        from pop_risk.generator import make_task as make

        return make(draw_spec(int(key)), seed, quick)
    if family == "seven":
        from pop_risk.tasks import TASKS

        task = TASKS[key](seed, quick)
        if quick:
            task["epochs"] = max(5, task["epochs"] // 5)
        return task
    from pop_risk.real import REAL as real

    return real[key](seed, quick)


def task_info(name):
    """JSON-able description of a task (its spec for generated ones)."""
    family, key = name.split(":")
    if family == "gen":
        from pop_risk.generator import draw_spec

        return draw_spec(int(key))
    return {"family": family, "name": key}


def raw_path(raw, kind, task, dyn, seed, quick):
    tag = "quick__" if quick else ""
    return os.path.join(raw, f"{tag}{kind}__{task.replace(':', '-')}__{dyn}__{seed}.json")


def run_list(tasks, dynamics, seeds):
    return [(kind, t, d, s) for t in tasks for s in seeds for d in dynamics
            for kind in ("full", "holdout")]


def collect(args):
    import keras
    import numpy as np

    from pop_risk import runs as R

    raw = args.raw[0]
    os.makedirs(raw, exist_ok=True)
    todo = run_list(args.tasks, args.dynamics, args.seed_list)
    i, k = (int(x) for x in args.shard.split("/"))
    # shard by (task, seed, dynamics), so that each shard gets full and holdout runs
    for kind, task, dyn, seed in [r for j, r in enumerate(todo) if (j // 2) % k == i]:
        path = raw_path(raw, kind, task, dyn, seed, args.quick)
        if os.path.exists(path):
            continue
        t0 = time.time()
        spec = make_task(task, seed, args.quick)
        if kind == "full":
            rec, arrays = R.run_full(spec, DYNAMICS[dyn], seed, arrays=args.arrays)
            if arrays is not None:
                np.savez_compressed(path[:-5] + ".npz", **arrays)
        else:
            rec = R.run_holdout(spec, DYNAMICS[dyn], seed)
        rec.update(kind=kind, task=task, dynamics=dyn, seed=seed, quick=args.quick,
                   info=task_info(task), loss=spec["loss"], weight_decay=spec["weight_decay"],
                   backend=keras.backend.backend(), date=time.strftime("%Y-%m-%d %H:%M:%S"))
        with open(path + ".tmp", "w") as f:
            json.dump(rec, f)
        os.replace(path + ".tmp", path)
        print(f"# {kind:7s} {task:26s} {dyn:4s} seed {seed}: {len(rec['epochs'])} epochs, "
              f"{time.time() - t0:.1f}s", flush=True)


def load_runs(raws, tasks, dynamics, seeds, quick):
    """The recorded runs, from the per-run JSON files under each of `raws`
    or from bundles of them (a path ending in .json.gz, written by
    --bundle); a run found in several sources is taken from the first."""
    out = {}
    for raw in reversed(raws):
        out.update(_load_runs(raw, tasks, dynamics, seeds, quick))
    return out


def _load_runs(raw, tasks, dynamics, seeds, quick):
    out = {}
    if raw.endswith(".json.gz"):
        import gzip

        with gzip.open(raw, "rt") as f:
            bundle = json.load(f)
        wanted = set(run_list(tasks, dynamics, seeds))
        for key, rec in bundle.items():
            kind, t, d, s = key.split("|")
            if (kind, t, d, int(s)) in wanted:
                out[(kind, t, d, int(s))] = rec
        return out
    for kind, t, d, s in run_list(tasks, dynamics, seeds):
        path = raw_path(raw, kind, t, d, s, quick)
        if os.path.exists(path):
            with open(path) as f:
                out[(kind, t, d, s)] = json.load(f)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=list(SETS), default=None)
    parser.add_argument("--tasks", nargs="*", default=None, help="task names (overrides --set)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dynamics", nargs="*", default=list(DYNAMICS), choices=list(DYNAMICS))
    parser.add_argument("--quick", action="store_true", help="toy size: few examples and epochs")
    parser.add_argument("--raw", nargs="+", default=["/tmp/poprisk3/raw"],
                        help="per-run JSON records: a folder (the first one is where runs "
                        "are recorded) or a bundle (.json.gz); several are merged for scoring")
    parser.add_argument("--arrays", action="store_true",
                        help="also save per-example predictions and losses (design)")
    parser.add_argument("--shard", default="0/1", help="i/k: run every k-th run from i")
    parser.add_argument("--record-only", action="store_true")
    parser.add_argument("--score-only", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="prefix of the outputs: OUT.md, OUT.json")
    parser.add_argument("--bundle", help="also write the loaded runs to this .json.gz "
                        "(score it again with --raw BUNDLE --score-only)")
    parser.add_argument("--scoring", choices=("v3", "v4", "v5"), default=None,
                        help="pop_risk/score.py (v3), score_v4.py (v4) or score_v5.py (v5); "
                        "default: v5 for --set v5 / v5all, v4 for v4 / v4all, else v3")
    args = parser.parse_args()
    if args.tasks is None:
        args.tasks = SETS[args.set or "design"]
    args.seed_list = list(range(1 if args.quick else args.seeds))
    set_threads(args.threads)
    if not args.score_only:
        collect(args)
    if args.record_only:
        return
    from pop_risk import score
    from pop_risk import score_v4
    from pop_risk import score_v5

    runs = load_runs(args.raw, args.tasks, args.dynamics, args.seed_list, args.quick)
    if args.bundle:
        import gzip

        with gzip.open(args.bundle, "wt") as f:
            json.dump({"|".join(map(str, key)): rec for key, rec in runs.items()}, f)
    scoring = args.scoring or {"v4": "v4", "v4all": "v4", "v5": "v5", "v5all": "v5"}.get(
        args.set, "v3")
    {"v3": score, "v4": score_v4, "v5": score_v5}[scoring].report(
        runs, args, command=" ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
