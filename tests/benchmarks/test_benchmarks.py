"""The long benchmarks behind the README's results still run.

Each runs once, at a toy size, on JAX (the backend all of them use for their
jitted training loops), writing its outputs to a temporary directory, never
to `benchmarks/results/`. The checks are that every requested arm finished
and recorded a finite result (the mean gate too, for SNRAdam arms); the
numbers themselves mean nothing at this size. The population-risk benchmark
(`population_risk_benchmark.py`) is run the same way on two tasks (a
generated noisy-label classifier and a real regression dataset), both
dynamics, one seed and five epochs: every stopping rule must be scored, the
1.0 rule replayed from the signals the library logged, and the earlier
scorings (v3, v4) must still read the runs.

A static check: no benchmark edits `sys.path` (code they share lives in the
packages `benchmarks/tasks/` and `benchmarks/pop_risk/`) or reads
`SNRAdam`'s private state (they use `statistics()` / `gate_summary()`).
"""

import glob
import gzip
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import TESTS_DIR, only_on

BENCHMARKS = os.path.join(os.path.dirname(TESTS_DIR), "benchmarks")

# name: (arguments, arms expected, metric of a record, mean gate of a record)
CASES = {
    "grokking": (
        ["--task", "add_mlp", "--fraction", "0.5", "--cap", "200", "--seeds", "0",
         "--arms", "adamw:lr=1e-3,wd=1", "snr:lr=1e-3,wd=1,alpha=fin",
         "grokfast:lr=1e-3,wd=1,a=0.98,lamb=2"],
        {"adamw:lr=1e-3,wd=1", "snr:lr=1e-3,wd=1,alpha=fin",
         "grokfast:lr=1e-3,wd=1,a=0.98,lamb=2"},
        lambda r: r["history"][-1][1],  # [step, held-out accuracy, ...]
        lambda r: r["history"][-1][4],  # [..., mean gate q]
    ),
    "inr_denoising": (
        ["--size", "16", "--sigmas", "0.1", "--seeds", "0", "--lrs", "1e-3",
         "--steps", "20", "--eval-every", "10", "--batch", "64"],
        {"adam", "snr_alpha1", "snr_finite"},
        lambda r: r["final_clean"],
        lambda r: r["curve"]["gate"][-1],
    ),
    "pinn_convection": (
        ["--steps", "20", "--eval-every", "10", "--seeds", "0", "--n-col", "64",
         "--adamw-lrs", "1e-3", "--snr-lrs", "1e-3"],
        {"adamw@0.001", "snr1@0.001", "snrf@0.001"},
        lambda r: r["final_rel_l2"],
        lambda r: r["mean_gate"],
    ),
    "dpo": (
        ["--seeds", "0", "--flips", "0.3", "--epochs", "1", "--lrs", "1e-3",
         "--pretrain-seqs", "128", "--pretrain-epochs", "1", "--arms", "adam", "snr_a1"],
        {"adam", "snr_a1"},
        lambda r: r["final"]["test_acc"],
        lambda r: r["final"].get("gate_q"),
    ),
}
SNR_ARMS = re.compile(r"^snr")  # every arm name of an SNRAdam run starts so


@only_on("jax")
@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_at_toy_size(name, tmp_path):
    args, arms, metric, gate = CASES[name]
    out = tmp_path / f"{name}.jsonl"
    results = os.path.join(BENCHMARKS, "results")
    before = _snapshot(results)
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, f"{name}.py"), *args, "--out", str(out)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _snapshot(results) == before, "a run with --out elsewhere wrote to benchmarks/results/"
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert {r["arm"] for r in records} == arms
    for record in records:
        value = metric(record)
        assert isinstance(value, (int, float)) and math.isfinite(value), (record["arm"], value)
        q = gate(record)
        if SNR_ARMS.match(record["arm"]):
            assert isinstance(q, float) and 0 <= q <= 1, (record["arm"], q)
        else:
            assert q is None, (record["arm"], q)


@only_on("jax")
def test_population_risk_benchmark_runs_at_toy_size(tmp_path):
    results = os.path.join(BENCHMARKS, "results")
    before = _snapshot(results)
    out = tmp_path / "population_risk"
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    script = os.path.join(BENCHMARKS, "population_risk_benchmark.py")
    tasks = ["--quick", "--tasks", "gen:0", "real:diabetes"]
    proc = subprocess.run(
        [sys.executable, script, *tasks, "--raw", str(tmp_path / "raw"), "--scoring", "v5",
         "--out", str(out), "--bundle", str(tmp_path / "runs.json.gz")],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _snapshot(results) == before, "a run with --out elsewhere wrote to benchmarks/results/"
    assert len(list((tmp_path / "raw").glob("*.json"))) == 8  # 2 tasks x 2 dynamics x 2 runs
    assert (tmp_path / "population_risk.md").read_text().startswith("# Stopping without")
    report = json.loads((tmp_path / "population_risk.json").read_text())
    cells = {(c["task"], c["dynamics"]): c for c in report["cells"]}
    assert set(cells) == {("gen:0", "adam"), ("gen:0", "snr"), ("real:diabetes", "adam"),
                          ("real:diabetes", "snr")}
    for cell in cells.values():
        # the 1.0 rule replayed on the signals the library itself logged
        assert cell["source"] == "library", cell["source"]
        (seed,) = cell["seeds"]
        rules = {"never", "oracle", "recipe", "recipe_v01", "recipe_v02", "holdout_loss",
                 "retrain"} | ({"label_wave", "holdout_acc"} if cell["classification"] else set())
        assert rules <= set(seed["rules"]), sorted(seed["rules"])
        for rule in rules:
            assert math.isfinite(seed["rules"][rule]["quality"]), rule
        assert 1 <= seed["rules"]["recipe"]["epoch"] <= seed["recipe_ran"] <= seed["epochs"]
    assert report["summaries"]["design"]["cells"] == 4
    # scoring the bundle again gives the same report, and so does scoring
    # half the runs from the folder merged with the other half from a bundle
    bundle = tmp_path / "runs.json.gz"
    with gzip.open(bundle, "rt") as f:
        runs = json.load(f)
    half = tmp_path / "half.json.gz"
    with gzip.open(half, "wt") as f:
        json.dump({k: v for k, v in runs.items() if "gen:0" in k}, f)
    only_diabetes = tmp_path / "only_diabetes"
    only_diabetes.mkdir()
    for path in (tmp_path / "raw").glob("*diabetes*.json"):
        shutil.copy(path, only_diabetes)
    for name, sources in (("again", [bundle]), ("merged", [only_diabetes, half])):
        again = subprocess.run(
            [sys.executable, script, *tasks, "--raw", *map(str, sources), "--score-only",
             "--scoring", "v5", "--out", str(tmp_path / name)],
            cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300,
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads((tmp_path / f"{name}.json").read_text())["cells"] == report["cells"]
    # the earlier scorings still read runs recorded with 1.0, from the offline
    # replica of the estimates they scored (1.0 no longer logs those)
    for scoring, keys in (("v3", {"replica", "capped", "eb"}),
                          ("v4", {"recipe_v3", "gradient_disparity"})):
        old = subprocess.run(
            [sys.executable, script, *tasks, "--raw", str(bundle), "--score-only",
             "--scoring", scoring, "--out", str(tmp_path / scoring)],
            cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300,
        )
        assert old.returncode == 0, old.stderr[-3000:]
        for cell in json.loads((tmp_path / f"{scoring}.json").read_text())["cells"]:
            assert cell["recipe_source"] == "replica"
            (seed,) = cell["seeds"]
            rules = {"never", "oracle", "recipe", "holdout_loss", "retrain"} | keys
            assert rules <= set(seed["rules"]), (scoring, sorted(seed["rules"]))
            for rule in rules:
                assert math.isfinite(seed["rules"][rule]["quality"]), (scoring, rule)


@only_on("jax")
def test_gate_study_runs_at_toy_size(tmp_path):
    results = os.path.join(BENCHMARKS, "results")
    before = _snapshot(results)
    # one arm per code path (the others differ in settings only, checked below)
    arms = ["adamw", "adamw_lr0.1", "snr_a1", "grokfast", "adamw_recipe", "snr_a1_rel",
            "guard_wave"]
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "gate_study.py"), "--quick", "--tasks",
         "gen:9", "seven:modular_addition", "--arms", *arms, "--seeds", "1",
         "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "gate")],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _snapshot(results) == before, "a run with --out elsewhere wrote to benchmarks/results/"
    report = json.loads((tmp_path / "gate.json").read_text())
    with gzip.open(tmp_path / "gate_runs.json.gz", "rt") as f:
        runs = {(r["task"], r["arm"]): r for r in json.load(f)}
    assert set(runs) == {(t, a) for t in ("gen:9", "seven:modular_addition") for a in arms}
    for (task, arm), r in runs.items():
        assert r["group"] == {"gen:9": "R", "seven:modular_addition": "G"}[task]
        key = "heldout_loss" if r["group"] == "R" else "clean_acc"
        assert r["epochs"] and all(math.isfinite(e[key]) for e in r["epochs"])
        gates = [e.get("mean_gate") for e in r["epochs"]]
        if arm.startswith(("snr", "soft", "hard", "guard")):
            assert all(0 <= q <= 1 for q in gates), (arm, gates)
        else:
            assert gates == [None] * len(gates), arm
        # the recipe arm ends with the weights ValidationFreeStopping kept
        assert ("kept" in r) == (arm == "adamw_recipe"), arm
        # no prediction changes for regression: the trigger fires at epoch 1
        assert ("switched_at" in r) == (arm == "guard_wave"), arm
        if task == "gen:9" and arm == "guard_wave":
            assert r["switched_at"] == 1
        if "kept" in r:
            assert 1 <= r["kept"]["epoch"] <= len(r["epochs"]) and math.isfinite(r["kept"][key])
    for g in ("R", "G"):
        summary = report["summary"][g]
        assert set(summary) == set(arms)
        assert not any(summary[a]["survives"] for a in ("adamw", "adamw_lr0.1"))


def test_gate_study_arms_and_the_smaller_step_control():
    import gate_study
    import keras
    from pop_risk import runs as pr_runs
    from tasks.grokking import GrokfastAdamW

    import keras_snr

    task = dict(lr=1e-3, batch=32, weight_decay=0.1, epochs=10, loss="sparse_ce")

    def config(arm):
        opt = gate_study.make_optimizer(arm, task, 320, keras, keras_snr, pr_runs)
        return type(opt), opt.get_config()

    kind, c = config("adamw")
    assert issubclass(kind, keras.optimizers.AdamW)  # torch: Keras's torch subclass of it
    assert not issubclass(kind, (keras_snr.SNRAdam, GrokfastAdamW))
    assert (c["learning_rate"], c["weight_decay"]) == (pytest.approx(1e-3), 0.1)
    assert config("adamw_lr0.3")[1]["learning_rate"] == pytest.approx(3e-4)
    assert config("adamw_lr0.1")[1]["learning_rate"] == pytest.approx(1e-4)
    assert config("grokfast")[0] is GrokfastAdamW
    expect = {"snr_a1": ("snr", 1.0, 1.0, "elementwise"),
              "snr_finite": ("snr", keras_snr.finite_dataset_alpha(32, 320), 1.0,
                             "elementwise"),
              "soft_a1": ("soft", 1.0, 1.0, "elementwise"),
              "soft_a1_s0.25": ("soft", 1.0, 0.25, "elementwise"),
              "hard_a1": ("hard", 1.0, 1.0, "elementwise"),
              "snr_a1_per_tensor": ("snr", 1.0, 1.0, "per_tensor")}
    for arm, (gate, alpha, softness, reduction) in expect.items():
        kind, c = config(arm)
        assert kind is keras_snr.SNRAdam, arm
        assert (c["gate"], c["softness"], c["reduction"]) == (gate, softness, reduction), arm
        assert c["alpha"] == pytest.approx(alpha) and c["weight_decay"] == 0.1, arm
        assert c["learning_rate"] == pytest.approx(1e-3), arm

    # "survives the control": better than the best control's mean, and at
    # least it on more than half of the cells (accuracy: higher is better)
    def rec(task_name, arm, acc):
        return {"task": task_name, "arm": arm, "group": "LN",
                "epochs": [{"clean_acc": 0.1}, {"clean_acc": acc}]}

    ends = {"adamw": (0.5, 0.6), "adamw_lr0.3": (0.6, 0.6), "adamw_lr0.1": (0.4, 0.5),
            "snr_a1": (0.7, 0.61), "hard_a1": (0.8, 0.5), "soft_a1": (0.6, 0.6)}
    records = [rec(t, arm, e[i]) for arm, e in ends.items() for i, t in enumerate("ab")]
    summary = gate_study.summarise(records)["LN"]
    assert summary["snr_a1"]["vs_best_control"]["control"] == "adamw_lr0.3"
    assert summary["snr_a1"]["survives"]  # 0.655 > 0.6, 2 of 2 cells
    assert not summary["hard_a1"]["survives"]  # 0.65 > 0.6, but 1 of 2 cells
    assert not summary["soft_a1"]["survives"]  # level with the control
    assert summary["snr_a1"]["best"] == pytest.approx(0.655)
    assert summary["hard_a1"]["vs_best_control"]["share_at_least"] == 0.5


PRIVATE_STATE = re.compile(
    r"\._(momentums|velocities|noise_variances|gate|gate_of|gate_sums|statistics_of)\b"
)


# The gate study's candidates (issue 21) are prototyped as SNRAdam subclasses
# that override the gate hook and call the one they override.
PROTOTYPE_HOOKS = {"gate_study.py": r"(super\(\)|self)\._gate_of\("}


def test_benchmarks_share_code_through_tasks_and_read_public_state():
    files = sorted(glob.glob(os.path.join(BENCHMARKS, "**", "*.py"), recursive=True))
    assert os.path.join(BENCHMARKS, "tasks", "__init__.py") in files
    for path in files:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        name = os.path.relpath(path, BENCHMARKS)
        assert "sys.path.insert" not in source and "sys.path.append" not in source, (
            f"{name} edits sys.path: `python benchmarks/NAME.py` already has benchmarks/ "
            "on it, and shared code is imported from the packages benchmarks/tasks/ and "
            "benchmarks/pop_risk/"
        )
        if name in PROTOTYPE_HOOKS:  # overriding a hook of SNRAdam is not reading its state
            source = re.sub(PROTOTYPE_HOOKS[name], "", source)
        assert not PRIVATE_STATE.search(source), (name, PRIVATE_STATE.search(source).group())


def _snapshot(folder):
    if not os.path.isdir(folder):
        return {}
    return {
        name: os.stat(os.path.join(folder, name)).st_mtime_ns
        for name in sorted(os.listdir(folder))
    }


@pytest.mark.parametrize("arm", ["snr_a1_rel", "snr_a1_norm", "snr_a1_gated_decay"])
def test_gate_study_candidates_against_numpy(arm):
    """The prototypes of issue 21's candidates, three steps on two variables
    (one excluded from weight decay), against NumPy on the reference's
    moments: the relative / normalised gate q' = min(q / mean(q), cap) per
    tensor; the gated decay w - lr * wd * q * w instead of w - lr * wd * w."""
    import gate_study
    import keras
    import numpy as np
    from pop_risk import runs as pr_runs
    from reference import ReferenceSNRAdam

    import keras_snr

    task = dict(lr=1e-2, batch=8, weight_decay=0.5, epochs=1)
    opt = gate_study.make_optimizer(arm, task, 64, keras, keras_snr, pr_runs)
    rng = np.random.default_rng(0)
    w0 = [rng.normal(size=(4, 3)), rng.normal(size=(5,))]
    variables = [keras.Variable(w.astype("float32")) for w in w0]
    opt.exclude_from_weight_decay(var_list=[variables[1]])
    variant = gate_study.CANDIDATES[arm]["variant"]

    class Reference(ReferenceSNRAdam):  # the candidate's gate and decay
        def gate_value(self, signal, noise):
            q = super().gate_value(signal, noise)
            if variant != "gated_decay":
                q = np.minimum(q / q.mean(), 1.0 if variant == "relative" else 10.0)
            return q

    ref = Reference(learning_rate=1e-2, weight_decay=0.0)
    expected = [w.copy() for w in w0]
    for _ in range(3):
        grads = [rng.normal(size=w.shape) for w in w0]
        opt.apply_gradients(zip([keras.ops.convert_to_tensor(g.astype("float32"))
                                 for g in grads], variables))
        before = [w.copy() for w in expected]
        expected = ref.step(expected, grads)
        for i, (b, q) in enumerate(zip(before, ref.last_q)):
            decay = 0.5 * (i == 0)  # the second variable is excluded
            expected[i] = expected[i] - 1e-2 * decay * (q if variant == "gated_decay" else 1) * b
    for v, e in zip(variables, expected):
        np.testing.assert_allclose(np.asarray(v), e, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("arm", ["guard_wave", "adamw_wave_lr0.1"])
def test_gate_study_switched_arms_against_numpy(arm):
    """Round 3's prototypes: alpha (the gated arm, from the finite-dataset
    value) or the step factor (the control, gate off, from 1) is an optimizer
    variable that the switch callback sets; two steps before it, two after,
    against NumPy. The callback switches once, at the first epoch end whose
    logs hold the trigger."""
    import gate_study
    import keras
    import numpy as np
    from pop_risk import runs as pr_runs
    from reference import ReferenceSNRAdam

    import keras_snr

    spec = gate_study.ARMS[arm]
    task = dict(lr=1e-2, batch=8, weight_decay=0.5, epochs=1)
    opt = gate_study.make_optimizer(arm, task, 64, keras, keras_snr, pr_runs)
    start = keras_snr.finite_dataset_alpha(8, 64) if spec["gated"] else 1.0

    class Reference(ReferenceSNRAdam):  # the step factor multiplies q
        factor = 1.0

        def gate_value(self, signal, noise):
            return super().gate_value(signal, noise) * self.factor

    ref = Reference(learning_rate=1e-2, weight_decay=0.5, alpha=start,
                    gate="snr" if spec["gated"] else None)
    rng = np.random.default_rng(1)
    expected = [rng.normal(size=(4, 3)), rng.normal(size=(5,))]
    variables = [keras.Variable(w.astype("float32")) for w in expected]
    model = type("Model", (), {"optimizer": opt})()
    switch = gate_study.switch_callback(keras, spec["trigger"], spec["after"])
    switch.set_model(model)
    for step in range(4):  # one update per "epoch"
        grads = [rng.normal(size=w.shape) for w in expected]
        opt.apply_gradients(zip([keras.ops.convert_to_tensor(g.astype("float32"))
                                 for g in grads], variables))
        expected = ref.step(expected, grads)
        # the trigger reads 1 at the second epoch end only: the switch stays
        switch.on_epoch_end(step, {spec["trigger"]: float(step == 1)})
        assert switch.epoch == (None if step == 0 else 2)
        if step == 1:
            if spec["gated"]:
                ref.alpha = spec["after"]
                assert opt.alpha == spec["after"]  # what gate_summary compares with
            else:
                ref.factor = spec["after"]
    assert float(np.asarray(opt.switch)) == pytest.approx(spec["after"])
    for v, e in zip(variables, expected):
        np.testing.assert_allclose(np.asarray(v), e, rtol=2e-5, atol=1e-6)


def test_gate_study_choice_and_targets():
    """Step 2's pre-registered choice (largest label-noise gain among the arms
    within 0.5 points of AdamW on noise-free cells) and issue 21's targets."""
    import gate_study

    def records(ends):  # {arm: {(group, task): end accuracy}}
        return [{"task": t, "arm": arm, "group": g, "epochs": [{"clean_acc": acc}]}
                for arm, cells in ends.items() for (g, t), acc in cells.items()]

    def cells(ln, c):  # two label-noise and two noise-free cells
        return {("LN", "a"): ln[0], ("LN", "b"): ln[1], ("C", "c"): c[0], ("C", "d"): c[1]}

    ends = {"adamw": cells((0.50, 0.60), (0.90, 0.80)),
            "snr_a1": cells((0.60, 0.70), (0.86, 0.80)),  # LN +10, C -2: not eligible
            "snr_finite": cells((0.51, 0.61), (0.90, 0.80)),  # LN +1, C 0
            "snr_a1_rel": cells((0.53, 0.63), (0.897, 0.80)),  # LN +3, C -0.15
            "adamw_recipe": cells((0.52, 0.62), (0.88, 0.80))}
    summary = gate_study.summarise(records(ends))
    assert gate_study.choose(summary) == "snr_a1_rel"
    rows = {(t[:2], arm.split()[0]): ok for t, arm, _, ok in gate_study.targets(summary,
                                                                               "snr_a1_rel")}
    assert rows[("T1", "snr_a1")] is False  # noise-free -2 points
    assert rows[("T1", "snr_finite")] and rows[("T1", "snr_a1_rel")]
    assert rows[("T2", "snr_a1_rel")]  # LN +1 point over the recipe
    assert not rows[("T2", "snr_finite")]  # LN -1 point
    # nobody within 0.5 points on noise-free cells: the largest LN + C gain
    del ends["snr_finite"], ends["snr_a1_rel"]
    ends["hard_a1"] = cells((0.55, 0.65), (0.87, 0.80))  # LN +5, C -1.5: sum 3.5 < 8
    assert gate_study.choose(gate_study.summarise(records(ends))) == "snr_a1"
    # round 3: the same rule over its two switched candidates only; T3, the
    # chosen one against its matched control on label-noise cells
    ends = {"adamw": cells((0.50, 0.60), (0.90, 0.80)),
            "snr_a1_rel": cells((0.70, 0.80), (0.90, 0.80)),  # not in round 3's pool
            "guard_ready": cells((0.56, 0.66), (0.85, 0.80)),  # C -2.5: not eligible
            "guard_wave": cells((0.52, 0.61), (0.90, 0.80)),
            "adamw_wave_lr0.1": cells((0.51, 0.62), (0.90, 0.80))}
    summary = gate_study.summarise(records(ends))
    assert gate_study.choose(summary, round3=True) == "guard_wave"
    assert gate_study.control_of("guard_wave") == "adamw_wave_lr0.1"

    def t3(summary):
        return [ok for t, _, _, ok in gate_study.targets(summary, "guard_wave", round3=True)
                if t.startswith("T3")]

    assert t3(summary) == [False]  # +1 and -1 point: not above it on more than half
    ends["adamw_wave_lr0.1"] = cells((0.50, 0.60), (0.90, 0.80))
    assert t3(gate_study.summarise(records(ends))) == [True]
