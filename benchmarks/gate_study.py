"""Does the SNR gate change what a model learns, beyond a smaller step?
(issue 21, step 1: the gate study on the design tasks).

Every arm trains the same task from the same initial weights (same seed),
at the task's learning rate (or schedule) and decoupled weight decay, to
the task's last epoch, and records per epoch the held-out quality: clean
test accuracy for classification, held-out loss (same noise as training)
for regression. Reported per group, mean over cells (a cell is a task,
mean over seeds): trained to the end, and at the best epoch (an oracle).

Arms (the task's lr is `lr`):

- `adamw`: `keras.optimizers.AdamW` (Keras defaults except lr and decay);
- `adamw_lr0.3`, `adamw_lr0.1`: the same at 0.3 lr and 0.1 lr, the
  smaller-step control;
- `snr_a1`: `SNRAdam()`'s defaults (gate "snr", alpha 1);
- `snr_finite`: alpha = `finite_dataset_alpha(batch, n)` (mostly open);
- `soft_a1`, `soft_a1_s0.25`: the paper's gate at alpha 1, softness 1 and
  0.25 (for "snr", softness only rescales alpha, so it has no arm);
- `hard_a1`: the hard threshold at alpha 1;
- `snr_a1_per_tensor`: `reduction="per_tensor"`;
- `grokfast`: AdamW on Grokfast-EMA gradients (alpha 0.98, lamb 2), the
  peer that does speed up grokking (benchmarks/tasks/grokking.py).

Tasks (`DESIGN`): the generator's design seeds whose runs are cheapest
(all 11 MLPs, both regression CNNs, five of the 11 transformers, two of
them noise-free)
and the seven tasks of `pop_risk/tasks.py`; two of those are grokking-like
(modular arithmetic). Groups: label-noise classification, noise-free
classification, regression, grokking-like.

Declared before the first run (what "a gate effect survives the
smaller-step control" means here): an arm's effect survives in a group when
its mean, trained to the end, is better than the best of the three AdamW
arms' means in that group, and it is at least as good as that best control
on more than half of the group's cells. Design tasks only: this picks no
default; candidates are judged later on fresh generator seeds >= 3000.

Step 2 (issue 21), pre-registered before any run of its held-out set:

- Candidates: the prototypes of `CANDIDATES` (a relative gate, a
  normalised gate, the weight decay gated too), next to the study's SNRAdam
  arms. `choose(design records)` picks one mechanically from the design
  runs: with dC and dLN the arm's mean end quality minus `adamw`'s on the
  noise-free and the label-noise classification cells (points), the arms
  with dC >= -0.5 are eligible and the one with the largest dLN wins (ties:
  the first in `ARMS` order); if none is eligible, the largest dLN + dC.
- Held-out set (`--set heldout`): generator seeds 3000-3023 (the v4
  distribution: n up to 20,000, 30-120 epochs, schedules, dropout), 3
  seeds, arms `HELDOUT_ARMS` plus the chosen one: AdamW, AdamW with the
  README's validation-free stopping (`adamw_recipe`), `SNRAdam()` as
  shipped (`snr_a1`) and the finite-dataset alpha.
- Deviation, committed before any held-out result was looked at (only
  the first runs' wall times were): the 24 tasks would not finish within
  the session, so the held-out set is the 18 of them whose run time,
  estimated from the spec alone (`generator.v4_run_seconds`), is at most
  45 s (`heldout_tasks`; dropped: 3008, 3009, 3011, 3012, 3013, 3020).
- Targets (`targets`): (T1) `SNRAdam()` with its defaults trained to the
  end is on noise-free classification cells no more than 0.5 points below
  AdamW on average and on >= 80 % of cells, and on label-noise cells at
  least AdamW on average; (T2) the chosen setting trained to the end is at
  least `adamw_recipe` on label-noise cells on average, while meeting T1's
  noise-free part. Both are also reported for every held-out arm.

Round 3 (issue 21's lead "an alpha raised when the callback's signals say
memorisation has begun"), pre-registered before any of its runs:

- Candidates (`SWITCHED`): SNRAdam starting at the finite-dataset alpha
  (AdamW, in effect) whose alpha a callback listed after the README's
  `PopulationRiskEstimate` raises to 1 (the shipped default) at the first
  epoch end whose logs hold `pop_risk_ready` = 1 (`guard_ready`: after the
  first minimum of prediction changes, Label Wave's point) or
  `pop_risk_wave` = 1 (`guard_wave`: once a strong wave confirmed it).
  (keras_snr 1.0 names these keys `memorization_ready`, a diagnostic key,
  and `memorization`; the code reads those, which hold the same values.
  The recorded study ran keras_snr 0.2, whose `adamw_recipe` arm was 0.2's
  `ValidationFreeStopping`: a run made now uses 1.0's rule there.)
  Both train to the end; nothing is restored. For regression (no
  prediction changes) both triggers fire at epoch 1.
- Matched control, run with the chosen candidate on the held-out set: the
  gate off (`SNRAdam(gate=None)`, Adam's math) and the step multiplied by
  0.1 from the same trigger, read on its own run (`adamw_ready_lr0.1`,
  `adamw_wave_lr0.1`); the decoupled decay is not scaled in either arm.
- Choice (`choose(summary, round3=True)`), on the design tasks and seeds
  (2), against the design runs of `adamw`: the rule of step 2 over the two
  candidates.
- Held-out set (`--set heldout3`), fresh generator seeds, 3 seeds per
  cell: from seed 3024 upwards, the first 8 label-noise and the first 6
  noise-free classification tasks whose estimated run time
  (`generator.v4_run_seconds`) is at most 40 s (`heldout3_tasks`); arms
  `adamw`, `adamw_recipe`, the chosen candidate and its control.
- Targets: T1 and T2 as above for the chosen candidate; and whether it
  beats its control on label-noise cells on average and on more than half
  of them (the gate doing more than a smaller step would).

Scored afterwards on step 2's held-out set, with nothing chosen from it:
the relative gate (`snr_a1_rel`, the runner-up under step 2's rule on the design
tasks), at its design setting (`gate_study_heldout_extra`).

Usage (JAX, one thread per process, resumable: one JSON per run):
    python benchmarks/gate_study.py --raw /tmp/gate/raw --seeds 2 --shard 0/2  # and 1/2
    python benchmarks/gate_study.py --raw /tmp/gate/raw --seeds 2 --score-only \\
        --out benchmarks/results/gate_study_design
    python benchmarks/gate_study.py --quick --tasks gen:0 seven:grokking --raw /tmp/g
    # step 2: the candidates on the design tasks, then the held-out set
    python benchmarks/gate_study.py --raw /tmp/gate/raw --seeds 2 \\
        --arms snr_a1_rel snr_a1_norm snr_a1_gated_decay
    python benchmarks/gate_study.py --set heldout --raw /tmp/gate/raw --design-raw \\
        /tmp/gate/raw --seeds 3 --shard 0/2   # and 1/2; then --score-only --out ...
    # the committed reports, rescored from their run bundles (ARMS: every arm
    # but adamw_recipe, as named in the report's command line)
    python benchmarks/gate_study.py --raw benchmarks/results/gate_study_design_runs.json.gz \\
        --seeds 2 --arms ARMS --out benchmarks/results/gate_study_design
    python benchmarks/gate_study.py --set heldout --seeds 3 \\
        --raw benchmarks/results/gate_study_heldout_runs.json.gz \\
        --design-raw benchmarks/results/gate_study_design_runs.json.gz \\
        --out benchmarks/results/gate_study_heldout
    # step 2's held-out set, one more arm (and the baselines, for the report)
    python benchmarks/gate_study.py --set heldout --raw /tmp/gate/raw --seeds 3 \\
        --arms adamw adamw_recipe snr_a1 snr_finite snr_a1_rel \\
        --out benchmarks/results/gate_study_heldout_extra
    # round 3: the two candidates on the design tasks, then the held-out set
    python benchmarks/gate_study.py --raw /tmp/gate/raw --seeds 2 \\
        --arms adamw guard_ready guard_wave --shard 0/2   # and 1/2
    python benchmarks/gate_study.py --set heldout3 --raw /tmp/gate/raw3 \\
        --design-raw /tmp/gate/raw --seeds 3 --shard 0/2   # and 1/2
    # round 3's held-out report, rescored from the committed bundles
    python benchmarks/gate_study.py --set heldout3 --seeds 3 \\
        --raw benchmarks/results/gate_study_round3_heldout_runs.json.gz \\
        --design-raw benchmarks/results/gate_study_round3_design_runs.json.gz \\
        --out benchmarks/results/gate_study_round3_heldout
"""

import argparse
import gzip
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _common import set_threads  # noqa: E402  (benchmarks/ is on sys.path)

ARMS = {
    "adamw": dict(kind="adamw"),
    "adamw_lr0.3": dict(kind="adamw", lr_scale=0.3),
    "adamw_lr0.1": dict(kind="adamw", lr_scale=0.1),
    "snr_a1": dict(kind="snr"),
    "snr_finite": dict(kind="snr", alpha="finite"),
    "soft_a1": dict(kind="snr", gate="soft"),
    "soft_a1_s0.25": dict(kind="snr", gate="soft", softness=0.25),
    "hard_a1": dict(kind="snr", gate="hard"),
    "snr_a1_per_tensor": dict(kind="snr", reduction="per_tensor"),
    "grokfast": dict(kind="grokfast"),
}
# Issue 21, step 2: candidates, prototyped here as subclasses of SNRAdam
# (its per-variable update path; tests/benchmarks/test_benchmarks.py checks them against
# NumPy) before any of them goes into SNRAdam. Not in the default arms.
CANDIDATES = {
    # q / mean(q) per tensor, capped at 1: coordinates at or above the
    # tensor's mean gate take Adam's step, the others a share of it
    "snr_a1_rel": dict(kind="candidate", variant="relative"),
    # q / mean(q) per tensor, capped at 10: the tensor's mean step is Adam's
    "snr_a1_norm": dict(kind="candidate", variant="normalised"),
    # the decoupled weight decay gated by the same q
    "snr_a1_gated_decay": dict(kind="candidate", variant="gated_decay"),
}
# Round 3 (see the docstring): alpha (or, for the control, the step)
# switched by a callback at the first epoch end whose logs hold TRIGGER = 1.
SWITCHED = {
    "guard_ready": dict(kind="switched", trigger="memorization_ready", gated=True, after=1.0),
    "guard_wave": dict(kind="switched", trigger="memorization", gated=True, after=1.0),
    "adamw_ready_lr0.1": dict(kind="switched", trigger="memorization_ready", gated=False,
                              after=0.1),
    "adamw_wave_lr0.1": dict(kind="switched", trigger="memorization", gated=False,
                             after=0.1),
}
ROUND3 = ("guard_ready", "guard_wave")
STUDY = list(ARMS)
ARMS.update(CANDIDATES)
ARMS.update(SWITCHED)
# AdamW dynamics (`SNRAdam(gate=None)`) with the README's validation-free
# stopping (`PopulationRiskEstimate` + `ValidationFreeStopping`); its "end" is
# the weights the recipe kept. Issue 21's second target compares with it.
ARMS["adamw_recipe"] = dict(kind="adamw_recipe")
CONTROLS = ("adamw", "adamw_lr0.3", "adamw_lr0.1")
GEN = (0, 6, 7, 8, 9, 11, 16, 17, 19, 21, 22,  # MLPs
       1, 18,  # CNNs (regression)
       10, 12, 23, 5, 13)  # transformers (5, 13: noise-free)
SEVEN = ("noisy_digits", "digits_cnn", "teacher_student", "noisy_image", "markov_lm",
         "modular_addition", "grokking")
DESIGN = [f"gen:{i}" for i in GEN] + [f"seven:{t}" for t in SEVEN]
HELDOUT_SEEDS = range(3000, 3024)
HELDOUT_SECONDS = 45.0  # deviation (see the docstring): tasks estimated slower are dropped


def heldout_tasks():
    """The held-out tasks: generator seeds 3000-3023 whose estimated run time
    (`generator.v4_run_seconds`, from the spec alone) is at most 45 s."""
    from pop_risk.generator import draw_spec
    from pop_risk.generator import v4_run_seconds

    return [f"gen:{i}" for i in HELDOUT_SEEDS if v4_run_seconds(draw_spec(i)) <= HELDOUT_SECONDS]


HELDOUT3_SECONDS = 40.0
HELDOUT3_COUNTS = {"LN": 8, "C": 6}


def heldout3_tasks():
    """Round 3's held-out tasks: from generator seed 3024 up, the first 8
    label-noise and 6 noise-free classification tasks estimated at <= 40 s."""
    from pop_risk.generator import draw_spec
    from pop_risk.generator import v4_run_seconds

    picked = {"LN": [], "C": []}
    seed = 3024
    while any(len(picked[g]) < k for g, k in HELDOUT3_COUNTS.items()):
        spec = draw_spec(seed)
        if spec["kind"] == "classification" and v4_run_seconds(spec) <= HELDOUT3_SECONDS:
            g = "LN" if spec["noise_rate"] > 0 else "C"
            if len(picked[g]) < HELDOUT3_COUNTS[g]:
                picked[g].append(seed)
        seed += 1
    return [f"gen:{i}" for i in sorted(picked["LN"] + picked["C"])]


HELDOUT_ARMS = ("adamw", "adamw_recipe", "snr_a1", "snr_finite")
NOISE_FREE_MARGIN = 0.005  # T1: at most 0.5 points below AdamW
NOISE_FREE_SHARE = 0.8  # T1: on >= 80 % of noise-free cells
GROKKING_LIKE = ("seven:modular_addition", "seven:grokking")
GROUPS = (("LN", "label-noise classification (clean accuracy %)"),
          ("C", "noise-free classification (clean accuracy %)"),
          ("R", "regression (held-out loss)"),
          ("G", "grokking-like (clean accuracy %)"))


def candidate_class(keras_snr, variant):
    """A prototype `SNRAdam` subclass for a candidate of `CANDIDATES`."""
    from keras import ops

    class Candidate(keras_snr.SNRAdam):
        def _gate_of(self, m, s, c1, cs):
            q = super()._gate_of(m, s, c1, cs)
            if variant in ("relative", "normalised"):
                cap = 1.0 if variant == "relative" else 10.0
                q = ops.minimum(q / (ops.mean(q) + 1e-12), cap)
            return q

        def _apply_weight_decay(self, variables):
            if variant != "gated_decay":
                super()._apply_weight_decay(variables)

        def update_step(self, gradient, variable, learning_rate):
            use = variant == "gated_decay" and self.weight_decay is not None
            self._decay_now = self.weight_decay if use and self._use_weight_decay(
                variable) else 0.0
            super().update_step(gradient, variable, learning_rate)

        def _update(self, g, w, m, v, s, lr, t):
            new_w, new_m, new_v, new_s = super()._update(g, w, m, v, s, lr, t)
            if variant == "gated_decay" and self._decay_now:
                dtype = w.dtype
                c1 = ops.cast(keras_snr.snr_adam.bias_correction(self.beta_1, t), dtype)
                cs = ops.cast(keras_snr.snr_adam.bias_correction(self.rho, t), dtype)
                q = self._gate_of(new_m, new_s, c1, cs)
                q = ops.where(ops.equal(t, 1.0), ops.ones((), dtype), q)
                new_w = new_w - w * (lr * self._decay_now) * q
            return new_w, new_m, new_v, new_s

    return Candidate


def switched_class(keras_snr, gated):
    """A prototype `SNRAdam` subclass whose alpha (`gated`) or step factor
    (the gate off) is an optimizer variable, `switch`, that a callback sets
    during `fit()` (round 3)."""
    import keras
    from keras import ops

    class Switched(keras_snr.SNRAdam):
        def build(self, var_list):
            if self.built:
                return
            super().build(var_list)
            start = self.alpha if gated else 1.0  # the step factor starts at 1
            self.switch = self.add_variable(
                shape=(), dtype="float32", name="switch",
                initializer=keras.initializers.Constant(start))

        def _gate_of(self, m, s, c1, cs):
            if not gated:
                return super()._gate_of(m, s, c1, cs)
            alpha, self.alpha = self.alpha, ops.cast(self.switch, m.dtype)
            try:  # the variable, read where the update is traced
                return super()._gate_of(m, s, c1, cs)
            finally:
                self.alpha = alpha

        def _update(self, g, w, m, v, s, lr, t):
            if not gated:
                lr = lr * ops.cast(self.switch, lr.dtype)
            return super()._update(g, w, m, v, s, lr, t)

    return Switched


def switch_callback(keras, trigger, after):
    """Sets the optimizer's `switch` to `after` at the first epoch end whose
    logs hold `trigger` = 1 (at epoch 1 for a model without predicted
    classes, whose logs have no `memorization`, as 0.2's flags were then);
    `epoch` is that epoch (1-based) or None."""

    class Switch(keras.callbacks.Callback):
        epoch = None

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            fired = "memorization" not in logs or logs.get(trigger, 0.0) >= 0.5
            if self.epoch is None and fired:
                self.epoch = epoch + 1
                opt = self.model.optimizer
                opt.switch.assign(after)
                if opt.gate is not None:  # the float `gate_summary` compares with
                    opt.alpha = float(after)

    return Switch()


def make_optimizer(arm, task, n, keras, keras_snr, runs):
    """The optimizer of `arm` for `task` fitted on `n` examples."""
    spec = ARMS[arm]
    scaled = dict(task, lr=task["lr"] * spec.get("lr_scale", 1.0))
    lr = runs.learning_rate(scaled, n)
    wd, beta_2 = task["weight_decay"], task.get("beta_2", 0.999)
    if spec["kind"] == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=wd or 0.0, beta_2=beta_2)
    if spec["kind"] == "adamw_recipe":
        return keras_snr.SNRAdam(gate=None, learning_rate=lr, weight_decay=wd, beta_2=beta_2)
    if spec["kind"] == "grokfast":
        from tasks.grokking import GrokfastAdamW

        return GrokfastAdamW(learning_rate=lr, weight_decay=wd or 0.0, beta_2=beta_2,
                             grokfast_alpha=0.98, grokfast_lamb=2.0)
    if spec["kind"] == "switched":  # fused=False on torch, as the candidates
        gated = spec["gated"]
        return switched_class(keras_snr, gated)(
            learning_rate=lr, weight_decay=wd, beta_2=beta_2, gate="snr" if gated else None,
            alpha=keras_snr.finite_dataset_alpha(task["batch"], n) if gated else 1.0,
            fused=keras.backend.backend() != "torch")
    if spec["kind"] == "candidate":
        # fused=False on torch: its fast path would bypass the overridden hooks
        return candidate_class(keras_snr, spec["variant"])(
            learning_rate=lr, weight_decay=wd, beta_2=beta_2,
            fused=keras.backend.backend() != "torch")
    alpha = spec.get("alpha", 1.0)
    if alpha == "finite":
        alpha = keras_snr.finite_dataset_alpha(task["batch"], n)
    return keras_snr.SNRAdam(learning_rate=lr, weight_decay=wd, beta_2=beta_2,
                             gate=spec.get("gate", "snr"), alpha=alpha,
                             softness=spec.get("softness", 1.0),
                             reduction=spec.get("reduction", "elementwise"))


def group(name, task):
    if name in GROKKING_LIKE:
        return "G"
    if task["loss"] == "mse":
        return "R"
    from pop_risk import score

    info = {"name": name.split(":")[1]}
    if name.startswith("gen:"):
        from pop_risk.generator import draw_spec

        info = {"noise_rate": draw_spec(int(name[4:]))["noise_rate"]}
    return "LN" if score.label_noise_classification({"loss": "sparse_ce", "info": info}) else "C"


def run(name, arm, seed, quick):
    """Train `name` with `arm` from seed `seed`; the per-epoch record."""
    import keras
    import numpy as np
    from population_risk_benchmark import make_task
    from pop_risk import runs

    import keras_snr

    task = make_task(name, seed, quick)
    (x, y), n = task["train"], len(task["train"][0])
    kind = task["loss"]
    xt, yt = task["test"]
    xc, yc = task["clean_test"]
    history = []

    def evaluate(model):  # held-out loss (noisy labels), clean loss and accuracy
        out = runs.metrics(kind, yt, runs.predict(model, xt), "heldout_")
        out.update(runs.metrics(kind, yc, runs.predict(model, xc), "clean_"))
        return out

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            rec = dict(evaluate(self.model), loss=float(logs["loss"]))
            opt = self.model.optimizer
            if isinstance(opt, keras_snr.SNRAdam) and opt.gate is not None:
                rec["mean_gate"] = float(np.asarray(opt.gate_summary()["gate_mean"]))
            history.append(rec)

    keras.utils.set_random_seed(seed)
    model = task["build"]()
    model.compile(optimizer=make_optimizer(arm, task, n, keras, keras_snr, runs),
                  loss=runs.keras_loss(kind))
    callbacks = [Record()]
    recipe = ARMS[arm]["kind"] == "adamw_recipe"
    switch = None
    if recipe:
        estimate = runs.library_callbacks(task, task["train"])
        stopping = keras_snr.ValidationFreeStopping(estimate[0])
        callbacks = estimate + callbacks + [stopping]
    elif ARMS[arm]["kind"] == "switched":
        switch = switch_callback(keras, ARMS[arm]["trigger"], ARMS[arm]["after"])
        callbacks = runs.library_callbacks(task, task["train"]) + [switch] + callbacks
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=task["batch"], epochs=task["epochs"], shuffle=True, verbose=0,
              callbacks=callbacks)
    out = dict(task=name, arm=arm, seed=seed, quick=quick, group=group(name, task), n=n,
               batch=task["batch"], epochs=history, wall=time.perf_counter() - t0,
               backend=keras.backend.backend())
    if recipe:  # the weights the recipe kept (restored at the end of training)
        out["kept"] = dict(evaluate(model), epoch=int(stopping.best_epoch) + 1)
    if switch is not None:
        out["switched_at"] = switch.epoch
    return out


def quality_key(rec):
    return "heldout_loss" if rec["group"] == "R" else "clean_acc"


def quality(rec, epoch):
    return rec["epochs"][epoch][quality_key(rec)]


def end_quality(rec):
    """Quality of the weights the run ends with: the last epoch's, or for the
    recipe arm the weights it kept."""
    if "kept" in rec:
        return rec["kept"][quality_key(rec)]
    return quality(rec, len(rec["epochs"]) - 1)


def better(group_name, a, b):
    """Is quality `a` at least as good as `b`?"""
    return a <= b if group_name == "R" else a >= b


def summarise(records):
    """{group: {arm: {end, best, cells: {task: (end, best)}}}}."""
    import numpy as np

    cells = {}
    for r in records:
        q = [quality(r, i) for i in range(len(r["epochs"]))]
        best = min(q) if r["group"] == "R" else max(q)
        gates = [e.get("mean_gate") for e in r["epochs"] if e.get("mean_gate") is not None]
        cells.setdefault((r["group"], r["arm"], r["task"]), []).append(
            (end_quality(r), best, float(np.mean(gates)) if gates else None))
    out = {}
    for (g, arm, task), vals in cells.items():
        end, best = float(np.mean([v[0] for v in vals])), float(np.mean([v[1] for v in vals]))
        gate = [v[2] for v in vals if v[2] is not None]
        arm_out = out.setdefault(g, {}).setdefault(arm, {"cells": {}, "gate": []})
        arm_out["cells"][task] = (end, best)
        arm_out["gate"] += gate
    for g, arms in out.items():
        for arm, a in arms.items():
            a["end"] = float(np.mean([v[0] for v in a["cells"].values()]))
            a["best"] = float(np.mean([v[1] for v in a["cells"].values()]))
            a["mean_gate"] = float(np.mean(a["gate"])) if a["gate"] else None
            del a["gate"]
        controls = [c for c in CONTROLS if c in arms]
        if not controls:
            continue
        best_control = (min if g == "R" else max)(controls, key=lambda c: arms[c]["end"])
        for arm, a in arms.items():
            tasks = [t for t in a["cells"] if t in arms[best_control]["cells"]]
            wins = [better(g, a["cells"][t][0], arms[best_control]["cells"][t][0])
                    for t in tasks]
            a["vs_best_control"] = {
                "control": best_control, "cells": len(tasks),
                "share_at_least": float(np.mean(wins)) if wins else None,
                "mean_difference": a["end"] - arms[best_control]["end"]}
            a["survives"] = bool(arm not in CONTROLS and wins
                                 and better(g, a["end"], arms[best_control]["end"])
                                 and a["end"] != arms[best_control]["end"]
                                 and np.mean(wins) > 0.5)
    return out


def paired(arms, arm, other):
    """Mean over the cells both arms have of `arm`'s end minus `other`'s,
    and those cells' per-cell differences."""
    a, b = arms[arm]["cells"], arms[other]["cells"]
    diffs = [a[t][0] - b[t][0] for t in a if t in b]
    return (sum(diffs) / len(diffs) if diffs else float("nan")), diffs


def in_pool(arm, round3):
    """Is `arm` one the choice picks from: step 2's SNRAdam arms and
    candidates, or round 3's `ROUND3`?"""
    return arm in ROUND3 if round3 else ARMS[arm]["kind"] in ("snr", "candidate")


def choose(summary, round3=False):
    """The arm picked from the design summary (see the docstring), among
    `in_pool(arm, round3)`."""
    ln, c = summary.get("LN", {}), summary.get("C", {})
    scored = []
    for arm in ARMS:
        if not in_pool(arm, round3) or arm not in ln or arm not in c:
            continue
        scored.append((arm, paired(ln, arm, "adamw")[0], paired(c, arm, "adamw")[0]))
    if not scored:  # no label-noise and noise-free cells to choose on
        return None
    eligible = [x for x in scored if x[2] >= -NOISE_FREE_MARGIN]
    if eligible:
        return max(eligible, key=lambda x: x[1])[0]  # max keeps the first of ties
    return max(scored, key=lambda x: x[1] + x[2])[0]


def control_of(arm):
    """Round 3: the matched control of a candidate (same trigger, the gate
    off, the step times 0.1)."""
    trigger = ARMS[arm]["trigger"]
    return next(a for a, spec in SWITCHED.items()
                if not spec["gated"] and spec["trigger"] == trigger)


def targets(summary, chosen, round3=False):
    """[(target, arm, measured, met)] of issue 21 on a (held-out) summary;
    in round 3 also the chosen candidate against its matched control."""
    ln, c = summary.get("LN", {}), summary.get("C", {})
    rows = []
    control = control_of(chosen) if round3 else None
    if control in ln and chosen in ln:
        d, diffs = paired(ln, chosen, control)
        share = sum(x > 0 for x in diffs) / len(diffs)
        rows.append(("T3: label noise above its matched control (same trigger, step x 0.1) "
                     "on average and on more than half of the cells", chosen,
                     f"{100 * d:+.1f} points, above on {100 * share:.0f} % of cells",
                     d > 0 and share > 0.5))
    for arm in [a for a in ARMS if a in ln and a in c and a != "adamw"]:
        d_c, diffs = paired(c, arm, "adamw")
        share = sum(d >= -NOISE_FREE_MARGIN for d in diffs) / len(diffs)
        noise_free = d_c >= -NOISE_FREE_MARGIN and share >= NOISE_FREE_SHARE
        d_ln = paired(ln, arm, "adamw")[0]
        tag = " (shipped default)" if arm == "snr_a1" else (" (chosen)" if arm == chosen
                                                            else "")
        rows.append(("T1: noise-free >= AdamW - 0.5 on average and on >= 80 % of cells; "
                     "label noise >= AdamW", arm + tag,
                     f"noise-free {100 * d_c:+.1f} points, {100 * share:.0f} % of cells; "
                     f"label noise {100 * d_ln:+.1f}", noise_free and d_ln >= 0))
        if "adamw_recipe" in ln and arm != "adamw_recipe":
            d_r = paired(ln, arm, "adamw_recipe")[0]
            rows.append(("T2: label noise >= AdamW + validation-free stopping, and T1's "
                         "noise-free part", arm + tag, f"label noise {100 * d_r:+.1f} points",
                         noise_free and d_r >= 0))
    return rows


def choice_table(summary, round3=False):
    """Markdown rows of the step-2 (or round-3) choice on a design summary."""
    ln, c = summary.get("LN", {}), summary.get("C", {})
    chosen = choose(summary, round3)
    lines = [f"## {'Round 3' if round3 else 'Step 2'}: the choice on these runs", "",
             "dLN, dC: end minus AdamW's, label-noise and noise-free classification cells "
             "(points); eligible: dC >= -0.5; chosen: the eligible arm with the largest dLN "
             "(if none is eligible, the arm with the largest dLN + dC).",
             "", "| arm | dLN | dC | eligible |", "| --- | --- | --- | --- |"]
    for arm in ARMS:
        if in_pool(arm, round3) and arm in ln and arm in c:
            d_ln, d_c = paired(ln, arm, "adamw")[0], paired(c, arm, "adamw")[0]
            lines.append(f"| {arm}{' (chosen)' if arm == chosen else ''} | {100 * d_ln:+.1f} | "
                         f"{100 * d_c:+.1f} | {'yes' if d_c >= -NOISE_FREE_MARGIN else 'no'} |")
    return lines + [""]


def markdown(summary, command, seeds, title="design tasks"):
    lines = [f"# Gate study (issue 21): {title}", "", f"Command: `{command}`", "",
             f"Seeds per cell: {seeds}. Quality: clean test accuracy (%) for classification, "
             "held-out loss (same noise as training) for regression; mean over cells (a cell: a "
             "task, mean over seeds). 'end': the last epoch; 'best': the best epoch (an "
             "oracle). 'vs best control': the arm's end minus the best AdamW arm's end in the "
             "group (lr, 0.3 lr, 0.1 lr; named), and the share of cells where the arm is at "
             "least that control. Mean gate: the mean over coordinates and epochs of the "
             "gate q (1 = Adam's step).", ""]
    for g, title in GROUPS:
        arms = summary.get(g)
        if not arms:
            continue
        cls = g != "R"
        fmt = (lambda v: f"{100 * v:.1f}") if cls else (lambda v: f"{v:.3f}")
        n_cells = len(next(iter(arms.values()))["cells"])
        lines += [f"## {title}: {n_cells} cells", "",
                  "| arm | end | best | vs best control (end) | cells at least it | mean gate "
                  "| survives the control |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for arm in ARMS:
            if arm not in arms:
                continue
            a, v = arms[arm], arms[arm].get("vs_best_control", {})
            diff = v.get("mean_difference")
            diff = "-" if diff is None else (f"{100 * diff:+.1f}" if cls else f"{diff:+.3f}")
            share = v.get("share_at_least")
            lines.append(
                f"| {arm} | {fmt(a['end'])} | {fmt(a['best'])} | {diff} ({v.get('control')}) | "
                + ("-" if share is None else f"{100 * share:.0f} %") + " | "
                + ("-" if a["mean_gate"] is None else f"{a['mean_gate']:.2f}") + " | "
                + ("-" if arm in CONTROLS else ("yes" if a.get("survives") else "no")) + " |")
        lines += ["", "Per cell, trained to the end:", "",
                  "| task | " + " | ".join(a for a in ARMS if a in arms) + " |",
                  "| --- |" + " --- |" * sum(a in arms for a in ARMS)]
        for task in sorted(next(iter(arms.values()))["cells"]):
            lines.append(f"| {task} | " + " | ".join(
                fmt(arms[a]["cells"][task][0]) if task in arms[a]["cells"] else "-"
                for a in ARMS if a in arms) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def raw_name(task, arm, seed, quick):
    return ("quick__" if quick else "") + f"{task.replace(':', '-')}__{arm}__{seed}.json"


def bundled(raw):
    """{file name: run} of a bundle of runs (`OUT_runs.json.gz`), or None
    when `raw` is a folder of one JSON per run."""
    if not raw.endswith(".json.gz"):
        return None
    with gzip.open(raw, "rt") as f:
        return {raw_name(r["task"], r["arm"], r["seed"], r["quick"]): r for r in json.load(f)}


def recorded(raw, bundle, name):
    """The run recorded as `name` in `raw` (a folder) or `bundle`, or None."""
    if bundle is not None:
        return bundle.get(name)
    path = os.path.join(raw, name)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def load(raw, tasks, arms, seeds, quick):
    """The recorded runs among `tasks` x `arms` x `range(seeds)` in `raw`
    (a folder or a bundle)."""
    bundle = bundled(raw)
    out = [recorded(raw, bundle, raw_name(t, a, s, quick))
           for t in tasks for a in arms for s in range(seeds)]
    return [r for r in out if r is not None]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", choices=("design", "heldout", "heldout3"), default="design")
    parser.add_argument("--tasks", nargs="*", default=None, help="overrides --set")
    parser.add_argument("--arms", nargs="*", default=None, choices=list(ARMS),
                        help="default: the study's (design), HELDOUT_ARMS + the chosen one")
    parser.add_argument("--design-raw", default=None,
                        help="the design runs the held-out set's chosen arm comes from")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="toy size")
    parser.add_argument("--raw", default="/tmp/gate/raw",
                        help="a folder of runs (one JSON each), or a bundle OUT_runs.json.gz")
    parser.add_argument("--shard", default="0/1", help="i/k: run every k-th run from i")
    parser.add_argument("--score-only", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="prefix of the outputs: OUT.md, OUT.json")
    args = parser.parse_args()
    set_threads(args.threads)
    bundle = bundled(args.raw)  # a bundle is only scored
    if bundle is None:
        os.makedirs(args.raw, exist_ok=True)
    chosen = None
    round3 = args.set == "heldout3"
    if args.set != "design":
        design = load(args.design_raw or args.raw, DESIGN, list(ARMS), 2, False)
        chosen = choose(summarise(design), round3=round3)
        if chosen is None:
            sys.exit("no design runs to choose from (--design-raw)")
        print(f"# chosen on the design runs: {chosen}", flush=True)
    if args.tasks is None:
        args.tasks = {"design": lambda: DESIGN, "heldout": heldout_tasks,
                      "heldout3": heldout3_tasks}[args.set]()
    if args.arms is None:
        if round3:
            args.arms = ["adamw", "adamw_recipe", chosen, control_of(chosen)]
        else:
            args.arms = (list(HELDOUT_ARMS) + [chosen] * (chosen not in HELDOUT_ARMS)
                         if args.set == "heldout" else STUDY)
    todo = [(t, a, s) for s in range(args.seeds) for t in args.tasks for a in args.arms]
    i, k = map(int, args.shard.split("/"))
    records = []
    for j, (task, arm, seed) in enumerate(todo):
        name = raw_name(task, arm, seed, args.quick)
        rec = recorded(args.raw, bundle, name)
        if rec is not None:
            records.append(rec)
            continue
        if args.score_only or bundle is not None or j % k != i:
            continue
        path = os.path.join(args.raw, name)
        rec = run(task, arm, seed, args.quick)
        with open(path, "w") as f:
            json.dump(rec, f)
        records.append(rec)
        print(f"# {task:24s} {arm:18s} seed {seed}: {len(rec['epochs'])} epochs, "
              f"{rec['wall']:.1f}s", flush=True)
    if not records:
        sys.exit("no runs recorded")
    summary = summarise(records)
    command = "python benchmarks/gate_study.py " + " ".join(sys.argv[1:])
    title = {"heldout": "held-out tasks (generator seeds 3000-3023, the 18 estimated at <= 45 s)",
             "heldout3": "round 3, held-out tasks (generator seeds from 3024: 8 label-noise "
                         "and 6 noise-free classification tasks estimated at <= 40 s)",
             "design": "design tasks"}[args.set]
    text = markdown(summary, command, args.seeds, title)
    if args.set == "design" and any(a in CANDIDATES for a in args.arms) and choose(summary):
        text += "\n" + "\n".join(choice_table(summary))
    if args.set == "design" and any(a in ROUND3 for a in args.arms) and choose(summary, True):
        text += "\n" + "\n".join(choice_table(summary, round3=True))
    if chosen is not None:
        rows = targets(summary, chosen, round3)
        text += ("\n## Targets (issue 21), this set\n\nChosen on the design runs: "
                 f"`{chosen}`.\n\n| target | arm | measured | met |\n| --- | --- | --- | --- |\n"
                 + "".join(f"| {t} | {a} | {m} | {'yes' if ok else 'no'} |\n"
                           for t, a, m, ok in rows))
    print(text)
    if args.out:
        with open(args.out + ".md", "w") as f:
            f.write(text)
        with open(args.out + ".json", "w") as f:
            json.dump({"command": command, "chosen": chosen, "summary": summary}, f, indent=1)
        with gzip.open(args.out + "_runs.json.gz", "wt") as f:  # every run, per epoch
            json.dump(records, f)


if __name__ == "__main__":
    main()
