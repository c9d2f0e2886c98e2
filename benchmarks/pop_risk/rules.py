"""Stopping rules of the population-risk benchmark, replayed on recorded runs
(a benchmark helper, not API).

Each rule maps the record of one run to the epoch whose weights the user
keeps (0-based index into the run's epochs) and the number of epochs it
trained. Validation-free rules read only what a callback could see during
training (the epoch logs, training-set predictions, optimizer statistics);
the holdout rules read the holdout run's validation metrics; the oracles
read held-out data (upper bounds, unreachable in practice).
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
