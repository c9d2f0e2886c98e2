"""Helpers of the population-risk benchmark (not API).

The runnable script is `benchmarks/population_risk_benchmark.py` (record the
runs, replay every stopping rule, write the report); run it as `python
benchmarks/population_risk_benchmark.py`, which puts `benchmarks/` on
`sys.path` so that this package imports as `pop_risk`.

- `generator`: tasks drawn at random (architecture, classes or regression,
  label noise, size, optimizer settings);
- `tasks`: the seven tasks of the previous benchmark;
- `real`: real datasets that install offline (MNIST-1D, scikit-learn's
  breast cancer and diabetes);
- `runs`: the full-data and holdout runs and their per-epoch recorder;
- `rules`: the stopping rules replayed on recorded runs (Keras
  EarlyStopping, Label Wave, EB);
- `score`: the anchors, the library's recipe and its offline replica, the
  targets and the report.
"""
