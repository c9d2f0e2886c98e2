"""How keras_snr 1.0's stopping rule and reliability flag were chosen, on the
design set only (a benchmark helper, not API): the tables of
`benchmarks/results/population_risk_v5_design_notes.md`, recomputed from the
committed run bundles.

    python -m pop_risk.design_v5   # from benchmarks/, about 2 minutes

1. The stopping rule (`ValidationFreeStopping`): its memorisation ratio and
   patience on a grid, scored per design subset (v3 design, v3 held-out, v4
   held-out) by the label-noise gain over training to the end and the
   share of safe cells in the worst group.
2. The number's reliability flag: `population_risk.RELIABLE_LOSS_FRACTION`
   and `RELIABLE_GAP_MULTIPLE` on a grid, scored over every epoch.
"""

import gzip
import json
import os

import numpy as np

from keras_snr import population_risk as PR

from . import score_v5 as S5

RESULTS = os.path.join(os.path.dirname(__file__), "..", "results")
BUNDLES = {"v3 design": "population_risk_design_runs.json.gz",
           "v3 held-out": "population_risk_heldout_runs.json.gz",
           "v4 held-out": "population_risk_v4_runs.json.gz"}
RATIOS = (0.1, 0.15, 0.2, 0.25, 0.3)
PATIENCES = (5, 10, 20)
LOSS_FRACTIONS = (0.15, 0.2, 0.3)
GAP_MULTIPLES = (1.5, 2.0, 3.0)


def load(name):
    with gzip.open(os.path.join(RESULTS, name), "rt") as f:
        bundle = json.load(f)
    out = {}
    for key, rec in bundle.items():
        kind, task, dyn, seed = key.split("|")
        out[(kind, task, dyn, int(seed))] = rec
    return out


def stopping_grid(subsets):
    print("## Stopping rule: label-noise gain over training to the end (points), "
          "safe share of the worst group, worst cell\n")
    print("| ratio | patience | " + " | ".join(subsets) + " | all |")
    print("| --- | --- |" + " --- |" * (len(subsets) + 1))
    for ratio in RATIOS:
        for patience in PATIENCES:
            row, cells_all = [], []
            for runs in subsets.values():
                cells = list(S5.collect_cells(runs, patience, ratio).values())
                cells_all += cells
                row.append(_rule_cell(cells))
            row.append(_rule_cell(cells_all))
            print(f"| {ratio} | {patience} | " + " | ".join(row) + " |")
    print()


def _rule_cell(cells):
    summ = S5.summarise(cells)
    m = summ["label_noise_mean"]
    safe = min(s["recipe"]["safe_share"] for s in summ["safety"].values())
    worst = min(s["recipe"]["worst"] for s in summ["safety"].values())
    return f"{100 * (m['recipe'] - m['never']):+.2f}, {100 * safe:.0f} %, {100 * worst:.1f} %"


def flag_grid(runs):
    print("## Reliability flag, every epoch of every design run: reliable share, within 25 % "
          "and in the interval where reliable, worst factor where reliable\n")
    print("| loss fraction | gap multiple | all | LN | C | R |")
    print("| --- | --- | --- | --- | --- | --- |")
    saved = PR.RELIABLE_LOSS_FRACTION, PR.RELIABLE_GAP_MULTIPLE
    try:
        for fraction in LOSS_FRACTIONS:
            for multiple in GAP_MULTIPLES:
                PR.RELIABLE_LOSS_FRACTION, PR.RELIABLE_GAP_MULTIPLE = fraction, multiple
                cells = list(S5.collect_cells(runs).values())
                row = []
                for group in ("all",) + S5.GROUPS:
                    part = cells if group == "all" else [c for c in cells if c["group"] == group]
                    n = S5.number_summary(part)
                    row.append(f"{100 * n['reliable_share']:.0f} / {100 * n['within_share']:.0f}"
                               f" / {100 * n['covered_share']:.0f} % / {n['max_factor']:.1f}x")
                print(f"| {fraction} | {multiple} | " + " | ".join(row) + " |")
    finally:
        PR.RELIABLE_LOSS_FRACTION, PR.RELIABLE_GAP_MULTIPLE = saved
    print()


def main():
    subsets = {name: load(path) for name, path in BUNDLES.items()}
    stopping_grid(subsets)
    merged = {}
    for runs in subsets.values():
        merged.update(runs)
    flag_grid(merged)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
