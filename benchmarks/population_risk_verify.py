"""Check the offline EarlyStopping replay of `population_risk_validation.py`
against a real `keras.callbacks.EarlyStopping` run on the library's
`keras_snr.PopulationRiskEstimate` (a benchmark helper, not API).

For a few (task, dynamics, seed) whose main run is recorded under --raw,
trains again, with the same seed, with `keras_snr.PopulationRiskEstimate`
and `EarlyStopping(monitor="pop_risk", mode="min", patience=P,
restore_best_weights=True)` (no recorder, no legacy callback), then compares
(a) the logged `pop_risk` with the one the library logged in the recorded run
and with the offline replica (`min_dec_cal+rel`), epoch by epoch, (b) the
restored epoch and the number of epochs run with the replay on the recorded
`pop_risk`, and (c) the held-out loss of the restored model with the
recorded held-out loss of the replay's epoch.

    python benchmarks/population_risk_verify.py --raw /tmp/poprisk2/raw \\
        --out benchmarks/results/population_risk_es_check.json
"""

import argparse
import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _common import set_threads  # noqa: E402  (benchmarks/ is on sys.path)

set_threads(1)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_snr  # noqa: E402
from pop_risk import estimators as PE  # noqa: E402
from pop_risk import record as R  # noqa: E402
from pop_risk.tasks import TASKS  # noqa: E402

DYN = {"adam": None, "snr": "snr"}


class Values(keras.callbacks.Callback):
    """The logged `pop_risk` of every epoch (listed after the estimator)."""

    def __init__(self):
        super().__init__()
        self.values = []

    def on_epoch_end(self, epoch, logs=None):
        self.values.append(float(logs["pop_risk"]))


def check(task, dyn, seed, patience, raw):
    with open(os.path.join(raw, f"main__{task}__{dyn}__{seed}.json")) as f:
        rec = json.load(f)
    run = PE.Run(rec, {"weight_decay": TASKS[task](seed, True).get("weight_decay")})
    recorded = np.asarray(PE.evaluate(run, PE.LIBRARY)[2], float)
    replica = np.asarray(PE.evaluate(run, PE.REPLICA)[2], float)
    es_epoch, ran = PE.keras_early_stopping([float(x) for x in recorded], patience)
    t = TASKS[task](seed, False)
    n, b = len(t["train"][0]), t["batch"]
    online = keras_snr.PopulationRiskEstimate(dataset_size=n, batch_size=b)
    values = Values()
    stop = keras.callbacks.EarlyStopping(monitor="pop_risk", mode="min", patience=patience,
                                         restore_best_weights=True)
    _, model, t = R.run_main(TASKS[task], DYN[dyn], seed, False, estimators=False,
                             extra_callbacks=[online, values, stop], batch_losses=False,
                             record=False)
    pred = model.predict(t["test"][0], batch_size=4096, verbose=0)
    held_final = R.np_loss(t["loss"], t["test"][1], pred)
    vals = np.array(values.values)
    k = len(vals)
    return dict(task=task, dynamics=dyn, seed=seed, patience=patience,
                replay_restored_epoch=es_epoch + 1, replay_epochs_run=ran,
                keras_restored_epoch=int(stop.best_epoch) + 1, keras_epochs_run=k,
                replay_heldout=float(run.held[es_epoch]), keras_heldout=held_final,
                max_rel_diff_recorded=float(np.max(np.abs(vals - recorded[:k]) / np.abs(recorded[:k]))),
                max_rel_diff_replica=float(np.max(np.abs(vals - replica[:k]) / np.abs(replica[:k]))))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raw", default="/tmp/poprisk2/raw",
                   help="per-run records of population_risk_validation.py")
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--cases", nargs="*", default=["noisy_digits:adam:0", "markov_lm:snr:0",
                                                   "teacher_student:adam:0", "grokking:adam:0"],
                   help="task:dynamics:seed")
    p.add_argument("--out", help="JSON file (population_risk_validation.py includes it)")
    a = p.parse_args()
    out = []
    for case in a.cases:
        task, dyn, seed = case.split(":")
        r = check(task, dyn, int(seed), a.patience, a.raw)
        print(json.dumps(r), flush=True)
        out.append(r)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
