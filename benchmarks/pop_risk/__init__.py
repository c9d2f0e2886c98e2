"""Helpers of the population-risk benchmark (not API).

The runnable script is `benchmarks/population_risk_benchmark.py` (record the
runs, replay every stopping rule, write the report); run it as `python
benchmarks/population_risk_benchmark.py`, which puts `benchmarks/` on
`sys.path` so that this package imports as `pop_risk`.

- `generator`: tasks drawn at random (architecture, classes or regression,
  label noise, size, optimizer settings; from seed 2000 a wider
  distribution: larger n, longer runs, learning-rate schedules, dropout);
- `tasks`: the seven tasks of the previous benchmark;
- `real`: real datasets that install offline (MNIST-1D, scikit-learn's
  breast cancer and diabetes; statsmodels' fair and randhie for v4);
- `runs`: the full-data and holdout runs and their per-epoch recorder
  (including gradient disparity);
- `rules`: the stopping rules replayed on recorded runs (Keras
  EarlyStopping, Label Wave, EB, gradient disparity);
- `score`: v3's anchors, recipe, offline replica, targets and report;
- `score_v4`: v4's (issue 20): the recipe with the wave, gradient
  disparity, the readable number, the targets and the report.
"""
