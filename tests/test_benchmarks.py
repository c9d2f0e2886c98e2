"""The long benchmarks behind the README's results still run.

Each runs once, at a toy size, on JAX (the backend all of them use for their
jitted training loops), writing its outputs to a temporary directory, never
to `benchmarks/results/`. The checks are that every requested arm finished
and recorded a finite result (the mean gate too, for SNRAdam arms); the
numbers themselves mean nothing at this size. The population-risk benchmark
(`population_risk_benchmark.py`) is run the same way on two tasks (a
generated noisy-label classifier and a real regression dataset), both
dynamics, one seed and five epochs: every stopping rule must be scored and
the library's logged estimate must agree with its offline replica.

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
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "population_risk_benchmark.py"), "--quick",
         "--tasks", "gen:0", "real:diabetes", "--raw", str(tmp_path / "raw"),
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
        assert cell["recipe_source"] == "library"  # replayed from the library's own logs
        (seed,) = cell["seeds"]
        rules = {"never", "oracle", "recipe", "replica", "holdout_loss", "retrain", "eb",
                 "capped"} | ({"label_wave", "holdout_acc"} if cell["classification"] else set())
        assert rules <= set(seed["rules"]), sorted(seed["rules"])
        for rule in rules:
            assert math.isfinite(seed["rules"][rule]["quality"]), rule
        # the library's logged estimate vs its offline float64 replica
        assert seed["estimate"]["agreement_max_rel"] < 1e-5, seed["estimate"]
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
            [sys.executable, os.path.join(BENCHMARKS, "population_risk_benchmark.py"),
             "--quick", "--tasks", "gen:0", "real:diabetes", "--raw", *map(str, sources),
             "--score-only", "--out", str(tmp_path / name)],
            cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300,
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads((tmp_path / f"{name}.json").read_text())["cells"] == report["cells"]
    # the v4 scoring (issue 20) of the same runs: every rule, the number
    v4 = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "population_risk_benchmark.py"), "--quick",
         "--tasks", "gen:0", "real:diabetes", "--raw", str(bundle), "--score-only",
         "--scoring", "v4", "--out", str(tmp_path / "v4")],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300,
    )
    assert v4.returncode == 0, v4.stderr[-3000:]
    report = json.loads((tmp_path / "v4.json").read_text())
    for cell in report["cells"]:
        assert cell["recipe_source"] == "library"
        (seed,) = cell["seeds"]
        rules = {"never", "oracle", "recipe", "recipe_v3", "holdout_loss", "retrain",
                 "gradient_disparity"} | ({"label_wave", "holdout_acc"}
                                          if cell["classification"] else set())
        assert rules <= set(seed["rules"]), sorted(seed["rules"])
        for where in ("kept", "end"):
            number = seed["number"][where]
            assert math.isfinite(number["rel_error"]) and number["heldout"] > 0
            assert ("acc_error" in number) == cell["classification"]


PRIVATE_STATE = re.compile(
    r"\._(momentums|velocities|noise_variances|gate|gate_of|gate_sums|statistics_of)\b"
)


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
        assert not PRIVATE_STATE.search(source), (name, PRIVATE_STATE.search(source).group())


def _snapshot(folder):
    if not os.path.isdir(folder):
        return {}
    return {
        name: os.stat(os.path.join(folder, name)).st_mtime_ns
        for name in sorted(os.listdir(folder))
    }
