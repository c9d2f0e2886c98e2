"""Cost of the covariance-penalty reference of `population_risk_validation.py`
and of the estimating callbacks (a benchmark helper, not API).

Per task and dynamics: wall time per epoch of the 1 + K tower shadow model
vs the plain model (same task, batches, epochs), no callbacks; of the plain
model with the library's `keras_snr.PopulationRiskEstimate` and with the
legacy callback (`pop_risk/legacy.py`, its `capped` default without
diagnostics, i.e. what the library ran before); epochs after the first
(compilation) only, medians, the arms interleaved over --repeats rounds;
plus the df read-out, one forward pass of the towers over the training set.

    python benchmarks/population_risk_cost.py --out benchmarks/results/population_risk_cost.json
"""

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _common import set_threads  # noqa: E402  (benchmarks/ is on sys.path)

set_threads(1)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_snr  # noqa: E402
from pop_risk import record as R  # noqa: E402
from pop_risk.legacy import LegacyPopulationRiskEstimate  # noqa: E402
from pop_risk.tasks import TASKS  # noqa: E402


def plain(task, gate, seed, epochs, callbacks=()):
    t = TASKS[task](seed, False)
    keras.utils.set_random_seed(seed)
    model = t["build"]()
    n = len(t["train"][0])
    model.compile(optimizer=R.make_optimizer(t, gate, n), loss=R.keras_loss(t["loss"]))
    timer = R.EpochTimer()  # last, so that the callbacks' epoch-end work is timed
    model.fit(*t["train"], batch_size=t["batch"], epochs=epochs, shuffle=True, verbose=0,
              callbacks=[*callbacks, timer])
    return timer.times, model, t


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="*", default=["noisy_digits", "teacher_student", "digits_cnn",
                                                   "markov_lm"])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--shadows", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out")
    a = p.parse_args()
    out = []
    for task in a.tasks:
        for gate in (None, "snr"):
            base, shad, library, legacy = [], [], [], []
            for _ in range(a.repeats):  # interleaved, to share the machine's load
                tb, _, t = plain(task, gate, 0, a.epochs)
                base.append(np.median(tb[1:]))
                sh = R.run_shadows(TASKS[task], gate, 0, False, shadows=a.shadows,
                                   epochs=a.epochs, timing_only=True)
                shad.append(np.median(sh["epoch_times"][1:]))
                n, b = len(t["train"][0]), t["batch"]
                cb = keras_snr.PopulationRiskEstimate(dataset_size=n, batch_size=b)
                tl, _, _ = plain(task, gate, 0, a.epochs, callbacks=[cb])
                library.append(np.median(tl[1:]))
                cb = LegacyPopulationRiskEstimate(dataset_size=n, batch_size=b)
                tg, _, _ = plain(task, gate, 0, a.epochs, callbacks=[cb])
                legacy.append(np.median(tg[1:]))
            # df read-out: one forward pass of the 1 + K towers over the training set per epoch
            towers = R.run_shadows(TASKS[task], gate, 0, False, shadows=a.shadows, epochs=1,
                                   timing_only=True, return_model=True)["model"]
            towers.predict(t["train"][0], batch_size=4096, verbose=0)  # compile
            t0 = time.perf_counter()
            towers.predict(t["train"][0], batch_size=4096, verbose=0)
            fwd = time.perf_counter() - t0
            r = dict(task=task, dynamics="adam" if gate is None else "snr", shadows=a.shadows,
                     epochs=a.epochs, repeats=a.repeats,
                     plain_s_per_epoch=float(np.median(base)),
                     shadow_s_per_epoch=float(np.median(shad)),
                     cost_ratio=float(np.median(shad) / np.median(base)),
                     library_callback_s_per_epoch=float(np.median(library)),
                     library_overhead=float(np.median(library) / np.median(base) - 1),
                     legacy_callback_s_per_epoch=float(np.median(legacy)),
                     legacy_overhead=float(np.median(legacy) / np.median(base) - 1),
                     plain_forward_train_s=fwd)
            print(json.dumps(r), flush=True)
            out.append(r)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
