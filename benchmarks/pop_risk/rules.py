"""Stopping rules of the population-risk benchmark, replayed on recorded runs
(a benchmark helper, not API).

Each rule maps the record of one run to the epoch whose weights the user
keeps (0-based index into the run's epochs) and the number of epochs it
trained. Validation-free rules read only what a callback could see during
training (the epoch logs, training-set predictions, optimizer statistics);
the holdout rules read the holdout run's validation metrics; the oracles
read held-out data (upper bounds, unreachable in practice).

`gradient_disparity` reads a quantity the recorder computes on the
training set (batch gradients), which a callback could also compute.
"""

import numpy as np


def keras_early_stopping(values, patience, mode="min", restore_best_weights=True):
    """Replay `keras.callbacks.EarlyStopping(mode=mode, min_delta=0,
    patience=patience, restore_best_weights=restore_best_weights,
    baseline=None, start_from_epoch=0)` on the monitored values of each
    epoch (None: key missing that epoch). Returns `(kept epoch, epochs run)`:
    the best epoch if it stopped and restores, else the last epoch run."""
    sign = 1.0 if mode == "min" else -1.0
    best, best_epoch, wait = None, 0, 0
    for epoch, current in enumerate(values):
        if current is None:
            continue
        current = sign * current
        wait += 1
        if best is None or current < best:  # NaN < x is False
            best, best_epoch, wait = current, epoch, 0
            continue
        if wait >= patience and epoch > 0:
            return (best_epoch if restore_best_weights else epoch), epoch + 1
    if best is None or not restore_best_weights:
        return len(values) - 1, len(values)
    return best_epoch, len(values)


def moving_average(x, window):
    """Trailing moving average; entry i averages x[i - window + 1 .. i]
    (NaN until `window` values are available)."""
    x = np.asarray(x, float)
    out = np.full(len(x), np.nan)
    for i in range(window - 1, len(x)):
        out[i] = x[i - window + 1:i + 1].mean()
    return out


def label_wave(flips, window=3):
    """Label Wave (Yuan, Feng & Liu, ICLR 2024): `flips[e]` is the number of
    training examples whose predicted class changed between epochs e-1 and
    e (NaN at e = 0); smooth it with a trailing moving average of `window`
    epochs and stop at its first local minimum, the first epoch e whose
    smoothed value is below the next one's. Keeps epoch e (training stops
    at e + 1, when the rise is seen). Returns `(kept, epochs run)`; runs to
    the end when there is no such minimum."""
    f = np.asarray(flips, float)
    ma = moving_average(f[1:], window)  # ma[j] smooths flips of epochs 1..j+1
    for j in range(len(ma) - 1):
        if np.isfinite(ma[j]) and np.isfinite(ma[j + 1]) and ma[j + 1] > ma[j]:
            return j + 1, j + 3
    return len(f) - 1, len(f)


def first_true(flags):
    """EB-style rule: keep (and stop at) the first epoch where `flags` holds."""
    for i, flag in enumerate(flags):
        if flag:
            return i, i + 1
    return len(flags) - 1, len(flags)


def gradient_disparity(gd, patience=5):
    """Early stopping on the gradient disparity (Forouzesh & Thiran,
    "Disparity Between Batches as a Signal for Early Stopping",
    arXiv:2107.06665), replayed on the per-epoch values `gd[e]`
    recorded by `pop_risk.runs.Recorder`.

    The paper's (its abstract: "the l2 norm distance between the gradient
    vectors of two mini-batches drawn from the training set"; the rest as
    we recall it, unchecked): GD averaged over the pairs of s batches
    (s = 5 in its experiments) at the end of each epoch, and training
    stopped once GD has increased for `patience` consecutive epochs (5 in
    its experiments).

    Ours: s = 5 batches of the task's batch size, gradients of the training
    loss with the model in inference mode (no dropout) and without weight
    decay (see `runs.gradient_function`); an increase is a value strictly
    above the previous epoch's (a tie, or a missing / NaN value, ends a
    run of increases); and the kept weights are those of the epoch where
    the run of increases began, i.e. the last epoch before the first of
    the `patience` increases (the lowest GD of that stretch; whether the
    paper restores earlier weights we do not recall). Stopping at the
    `patience`-th increase, at epoch e, trains e + 1 epochs. Without such a
    run, training goes to the end and keeps the last epoch. Returns
    `(kept epoch, epochs run)` (0-based kept epoch)."""
    values = [np.nan if v is None else float(v) for v in gd]
    rises = 0
    for epoch in range(1, len(values)):
        rises = rises + 1 if values[epoch] > values[epoch - 1] else 0  # NaN: False
        if rises >= patience:
            return epoch - patience, epoch + 1
    return len(values) - 1, len(values)
