"""The population-risk estimate and validation-free stopping, as small pure
functions: Python numbers in, numbers out.

`keras_snr.PopulationRiskEstimate` and `keras_snr.ValidationFreeStopping`
are thin Keras shells around these; the tests check each function against
its definition. Notation, per epoch: `loss` the epoch-average training loss
Keras logs, `end_loss` the training loss at the epoch's end (on the
callback's sample of the training set, or `loss` when it has no labels),
`first_loss` the first epoch's `loss`, `gap` the accumulated first-order
optimism `G` read from `SNRAdam`'s statistics.
"""

import math

# The estimate is trusted while the end-of-epoch training loss is at least
# this fraction of the first epoch's loss ...
RELIABLE_LOSS_FRACTION = 0.2
# ... and the upper end of its interval, `end_loss + gap`, at most this
# multiple of it.
RELIABLE_GAP_MULTIPLE = 2.0
# Below this fraction of the first epoch's loss the stop score no longer
# ranks epochs: every such epoch counts as the best so far.
RANKED_LOSS_FRACTION = 0.05


def gap_update(gap, learning_rate, weight_decay, updates, rate):
    """One epoch of the accumulated optimism `G`.

    `G <- exp(-lr * weight_decay * updates) * G + lr * updates * rate`: the
    decoupled weight decay shrinks what was accumulated, and each of the
    epoch's `updates` adds `lr * rate`, where `rate = sum q P alpha s_hat
    min(1, sqrt(g**2 / (alpha s_hat)))` over all coordinates (see
    `PopulationRiskEstimate`)."""
    return math.exp(-learning_rate * weight_decay * updates) * gap + learning_rate * updates * rate


def loss_estimate(loss, end_loss, first_loss, gap):
    """`(pop_risk, low, high)`: the held-out loss (labels drawn like the
    training labels) and an interval for it.

    - `low = min(end_loss, loss)`: a model does not do better on unseen data
      than on its training data;
    - `high = max(first_loss, end_loss + gap)`: the first epoch's loss was
      measured mostly on examples the model had not yet trained on, and
      `end_loss + gap` adds the first-order optimism;
    - `pop_risk = (end_loss + min(first_loss, end_loss + gap)) / 2`.
    """
    estimate = 0.5 * (end_loss + min(first_loss, end_loss + gap))
    return estimate, min(end_loss, loss), max(first_loss, end_loss + gap)


def is_reliable(end_loss, first_loss, gap):
    """Whether the logged quantities can tell the held-out loss: the
    training loss has not collapsed (`end_loss >= RELIABLE_LOSS_FRACTION *
    first_loss`) and the optimism stays moderate (`end_loss + gap <=
    RELIABLE_GAP_MULTIPLE * first_loss`). Non-finite inputs are unreliable."""
    values = (end_loss, first_loss, gap)
    if not all(math.isfinite(v) for v in values) or first_loss <= 0:
        return False
    return (end_loss >= RELIABLE_LOSS_FRACTION * first_loss
            and end_loss + gap <= RELIABLE_GAP_MULTIPLE * first_loss)


def accuracy_estimate(accuracy, first_accuracy):
    """`(pop_accuracy, low, high)`: the accuracy on unseen data labelled
    like the training data, from the accuracy `a` on the training sample
    and its value `a_1` after the first epoch: `high = a`, `low = min(a_1,
    a)`, estimate their mean."""
    low = min(first_accuracy, accuracy)
    return 0.5 * (low + accuracy), low, accuracy


def stop_score(loss, gap):
    """What `ValidationFreeStopping` ranks epochs by: `loss + gap`, the
    training loss plus the accumulated optimism (an overestimate of the
    held-out loss whose minimum after Label Wave's minimum marks the epoch
    to keep)."""
    return loss + gap


# ------------------------------------------------------------ Label Wave


def new_wave():
    """The state of `wave_update` before the first epoch (JSON-able)."""
    return {"changes": [], "ready": False, "wave": False, "low_epoch": None, "low": None}


def smoothed(changes, index, window):
    """Trailing mean of `window` prediction-change fractions ending at
    `index` (NaN until that many are known)."""
    values = changes[max(index - window + 1, 0):index + 1]
    if index < 0 or len(values) < window or any(v is None for v in values):
        return math.nan
    return sum(values) / window


def wave_update(state, changed, size, window, rise, horizon):
    """Add one epoch's fraction of changed predictions (`changed`, None at
    the first epoch) on a sample of `size` label entries.

    - `ready` turns on at the first epoch whose smoothed count is above the
      previous epoch's: that previous epoch is the first local minimum of
      the smoothed prediction changes (Label Wave: Yuan, Feng & Liu, ICLR
      2024), where a network has fitted the clean part of noisy labels;
    - `wave` turns on once, within `horizon` epochs of that minimum, the
      smoothed count rises above it by `rise` standard errors of a mean of
      `window` Poisson counts, `sqrt((count at the minimum + 1) / window)`:
      a strong wave, the sign that memorisation began.

    Returns the new state (a new dict)."""
    state = {**state, "changes": state["changes"] + [changed]}
    last = len(state["changes"]) - 1
    before = smoothed(state["changes"], last - 1, window)
    now = smoothed(state["changes"], last, window)
    if not state["ready"] and math.isfinite(before) and now > before:
        state.update(ready=True, low_epoch=last - 1, low=before)
    if (state["ready"] and not state["wave"] and last - state["low_epoch"] <= horizon
            and math.isfinite(now)):
        noise = math.sqrt((state["low"] * size + 1.0) / window)
        state["wave"] = (now - state["low"]) * size >= rise * noise
    return state


# ------------------------------------------------------------ stopping


def new_stopping():
    """The state of `stopping_update` before the first epoch (JSON-able)."""
    return {"best_epoch": None, "best_score": None, "best_end_loss": None, "wait": 0,
            "wave": False}


def stopping_update(state, epoch, signals, patience, memorization_ratio):
    """One epoch of validation-free stopping. `signals` holds the epoch's
    `finite`, `ready`, `wave`, `ranked`, `score` (`stop_score`) and
    `end_loss` (None without labels).

    Epochs count from `ready` on. The best is the counted epoch with the
    lowest score; once `ranked` is false (the training loss collapsed) each
    epoch becomes the best. Training stops when the score has not improved
    for `patience` counted epochs, a wave has been seen, and the end-of-epoch
    training loss has fallen to `memorization_ratio` times its value at the
    best epoch or below (evidence that the model memorised since). A
    non-finite epoch stops training at once and is never the best.

    Returns `(new state, stop now)`."""
    state = dict(state)
    if not signals["finite"]:
        return state, True
    if not signals["ready"]:
        return state, False
    state["wave"] = state["wave"] or signals["wave"]
    state["wait"] += 1
    if (not signals["ranked"] or state["best_epoch"] is None
            or signals["score"] < state["best_score"]):
        state.update(best_epoch=epoch, best_score=signals["score"],
                     best_end_loss=signals["end_loss"], wait=0)
        return state, False
    stop = (signals["wave"] and state["wait"] >= patience
            and memorized(state, signals["end_loss"], memorization_ratio))
    return state, stop


def memorized(state, end_loss, memorization_ratio):
    """Whether the end-of-epoch training loss `end_loss` is at most
    `memorization_ratio` times its value at the state's best epoch."""
    best = state["best_end_loss"]
    if end_loss is None or best is None:
        return False
    return end_loss <= memorization_ratio * best


def kept_epoch(state, last_epoch, last_end_loss, last_finite, memorization_ratio):
    """The epoch whose weights to keep when training ends (at `last_epoch`):
    the best epoch if a wave was seen and the model memorised since (see
    `stopping_update`), or if the last epoch is non-finite; otherwise the
    last epoch. Returns `(epoch, restore)`."""
    best = state["best_epoch"]
    if best is None or best == last_epoch:
        return last_epoch, False
    if not last_finite:
        return best, True
    if state["wave"] and memorized(state, last_end_loss, memorization_ratio):
        return best, True
    return last_epoch, False
