"""Helpers of the population-risk benchmark (not API).

The runnable scripts are `benchmarks/population_risk_validation.py` (record
the runs, score the estimators, write the report),
`benchmarks/population_risk_verify.py` (EarlyStopping replay vs a real Keras
run) and `benchmarks/population_risk_cost.py` (cost of the reference and of
the callbacks); run them as `python benchmarks/NAME.py`, which puts
`benchmarks/` on `sys.path` so that this package imports as `pop_risk`.

- `tasks`: the seven tasks;
- `record`: training runs, the per-epoch `Recorder`, the covariance-penalty
  shadow runs;
- `estimators`: candidate estimators evaluated offline on the recorded
  series, the EarlyStopping replay, metrics, the reference;
- `report`: the tables of `benchmarks/results/population_risk.md`;
- `legacy`: the estimators keras_snr shipped before (`capped`, ...), as a
  callback writing `legacy_`-prefixed keys, recorded beside the library's
  `keras_snr.PopulationRiskEstimate` on every main run.
"""
