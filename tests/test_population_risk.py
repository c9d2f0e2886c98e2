"""keras_snr.population_risk: each pure function against its definition,
written out independently here; and the callbacks' state backup."""

import math
import os

import numpy as np
import pytest

from keras_snr import population_risk as PR
from keras_snr._backup import KEEP
from keras_snr._backup import EpochBackup


def test_gap_update_is_decay_plus_accumulation():
    gap = 0.0
    for lr, wd, updates, rate in [(0.1, 0.0, 5, 2.0), (0.05, 0.5, 3, 1.0), (0.01, 1.0, 10, 0.0)]:
        want = np.exp(-lr * wd * updates) * gap + lr * updates * rate
        gap = PR.gap_update(gap, lr, wd, updates, rate)
        assert gap == pytest.approx(want, rel=1e-12)
    assert PR.gap_update(1.0, 0.1, 0.0, 0, 5.0) == 1.0  # no update, no change


@pytest.mark.parametrize("loss, end, first, gap", [
    (1.0, 0.8, 2.0, 0.5),  # end + gap below the first loss
    (1.0, 0.8, 1.0, 0.5),  # above it: the middle uses the first loss
    (0.3, 0.4, 1.0, 0.0),  # the end-of-epoch loss above the epoch average
])
def test_loss_estimate(loss, end, first, gap):
    estimate, low, high = PR.loss_estimate(loss, end, first, gap)
    assert low == min(loss, end)
    assert high == max(first, end + gap)
    assert estimate == pytest.approx((end + min(first, end + gap)) / 2)
    assert low <= estimate <= high


def test_is_reliable_thresholds():
    f, k = PR.RELIABLE_LOSS_FRACTION, PR.RELIABLE_GAP_MULTIPLE
    assert PR.is_reliable(f * 2.0, 2.0, 0.0)
    assert not PR.is_reliable(0.99 * f * 2.0, 2.0, 0.0)  # the training loss collapsed
    assert PR.is_reliable(1.0, 2.0, k * 2.0 - 1.0)
    assert not PR.is_reliable(1.0, 2.0, k * 2.0 - 0.99)  # too much optimism
    for bad in ((math.nan, 1.0, 0.0), (1.0, math.inf, 0.0), (1.0, 1.0, math.nan),
                (0.5, 0.0, 0.0), (-1.0, -2.0, 0.0)):
        assert not PR.is_reliable(*bad), bad


def test_accuracy_estimate():
    assert PR.accuracy_estimate(0.9, 0.6) == pytest.approx((0.75, 0.6, 0.9))
    assert PR.accuracy_estimate(0.5, 0.6) == pytest.approx((0.5, 0.5, 0.5))


def wave_definition(fractions, size, window, rise, horizon):
    """Label Wave and its confirmation, written out: per epoch e (0-based),
    c[e] the fraction of changes (None at e = 0); s[e] the mean of c[e -
    window + 1 .. e] once all are known; ready from the first e with
    s[e] > s[e - 1] (the minimum is e - 1); wave from the first e within
    `horizon` epochs of the minimum with (s[e] - s[min]) * size >= rise *
    sqrt((s[min] * size + 1) / window)."""
    def s(e):
        values = fractions[max(e - window + 1, 0):e + 1]
        if e < 0 or len(values) < window or any(v is None for v in values):
            return math.nan
        return sum(values) / window

    ready, wave, low = [], [], None
    for e in range(len(fractions)):
        if low is None and s(e - 1) == s(e - 1) and s(e) > s(e - 1):
            low = e - 1
        on = bool(wave and wave[-1])
        if low is not None and not on and e - low <= horizon and s(e) == s(e):
            on = (s(e) - s(low)) * size >= rise * math.sqrt((s(low) * size + 1) / window)
        ready.append(low is not None)
        wave.append(on)
    return ready, wave


@pytest.mark.parametrize("window, rise, horizon", [(1, 0.0, 10), (3, 2.0, 10), (5, 2.0, 3),
                                                   (2, 1e6, 10)])
def test_wave_update_against_the_definition(window, rise, horizon):
    rng = np.random.default_rng(window)
    for trial in range(20):
        size = int(rng.integers(20, 300))
        # a dip then a rise of random depth, with sampling noise
        curve = np.concatenate([np.linspace(0.5, 0.05, 12), np.linspace(0.05, rng.uniform(0, 0.3), 15)])
        fractions = [None] + [float(rng.binomial(size, p) / size) for p in curve[1:]]
        state, ready, wave = PR.new_wave(), [], []
        for f in fractions:
            state = PR.wave_update(state, f, size, window, rise, horizon)
            ready.append(state["ready"])
            wave.append(state["wave"])
        assert (ready, wave) == wave_definition(fractions, size, window, rise, horizon), trial
    assert state["changes"] == fractions


def reference_stopping(signals, patience, ratio):
    """ValidationFreeStopping's rule written out: count epochs from `ready`;
    best = lowest score, or the current epoch while the score is unranked;
    stop when `wait >= patience`, a wave, and end_loss <= ratio * its value
    at the best; a non-finite epoch stops at once. At the end keep the best
    if the last epoch is non-finite, or if a wave was seen and the last
    end_loss <= ratio * the best's; else the last epoch."""
    best, wait, wave_seen, last = None, 0, False, len(signals) - 1
    for e, s in enumerate(signals):
        if not s["finite"]:
            last = e
            break
        if not s["ready"]:
            continue
        wave_seen |= s["wave"]
        wait += 1
        if not s["ranked"] or best is None or s["score"] < signals[best]["score"]:
            best, wait = e, 0
            continue
        if s["wave"] and wait >= patience and s["end_loss"] <= ratio * signals[best]["end_loss"]:
            last = e
            break
    if best is None or best == last:
        return last, last
    if not signals[last]["finite"]:
        return best, last
    if wave_seen and signals[last]["end_loss"] <= ratio * signals[best]["end_loss"]:
        return best, last
    return last, last


def random_signals(rng, epochs):
    ready_from = int(rng.integers(0, epochs))
    wave_from = ready_from + int(rng.integers(0, epochs))
    unranked_from = int(rng.integers(epochs // 2, 2 * epochs))
    nan_at = int(rng.integers(0, 3 * epochs))
    end_loss = np.exp(-np.cumsum(rng.uniform(0, 0.3, epochs)))
    score = np.cumsum(rng.normal(0, 0.1, epochs)) + 1
    return [{"finite": e != nan_at, "ready": e >= ready_from, "wave": e >= wave_from,
             "ranked": e < unranked_from, "score": float(score[e]),
             "end_loss": float(end_loss[e]) if e != nan_at else math.nan}
            for e in range(epochs)]


@pytest.mark.parametrize("patience, ratio", [(1, 0.5), (3, 0.15), (10, 0.15), (2, 0.9)])
def test_stopping_against_the_definition(patience, ratio):
    rng = np.random.default_rng(patience)
    for trial in range(200):
        signals = random_signals(rng, int(rng.integers(1, 40)))
        state, last = PR.new_stopping(), len(signals) - 1
        for e, s in enumerate(signals):
            state, stop = PR.stopping_update(state, e, s, patience, ratio)
            if stop:
                last = e
                break
        kept, _ = PR.kept_epoch(state, last, signals[last]["end_loss"], signals[last]["finite"],
                                ratio)
        assert (kept, last) == reference_stopping(signals, patience, ratio), trial
        assert kept == last or signals[kept]["finite"]  # never a non-finite epoch


def test_stopping_needs_end_losses_to_restore():
    signals = [{"finite": True, "ready": True, "wave": True, "ranked": True, "score": s,
                "end_loss": None} for s in (1.0, 2.0, 3.0, 4.0)]
    state = PR.new_stopping()
    for e, s in enumerate(signals):
        state, stop = PR.stopping_update(state, e, s, 1, 0.5)
        assert not stop  # without labels there is no evidence of memorisation
    assert PR.kept_epoch(state, 3, None, True, 0.5) == (3, False)
    assert PR.kept_epoch(state, 3, None, False, 0.5) == (0, True)  # but never NaN weights


def test_epoch_backup_finds_the_state_of_the_restored_checkpoint(tmp_path):
    backup = EpochBackup(str(tmp_path), "x")
    for epoch, iterations in enumerate([6, 12, 18, 24, 30], start=1):
        backup.save({"iterations": iterations, "next_epoch": epoch, "v": epoch},
                    {"a": np.full(3, epoch)})
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 * KEEP and files[0] == "x-000000000018.json"
    state, arrays = backup.load(24, 4)  # an epoch-end checkpoint
    assert state["v"] == 4 and arrays["a"].tolist() == [4, 4, 4]
    assert backup.load(21, 3)[0]["v"] == 3  # mid-epoch checkpoint: epoch 4 runs again
    assert backup.load(21, 4) is None  # states saved after the restored checkpoint ...
    assert not os.path.exists(tmp_path / "x-000000000030.json")  # ... were removed
    assert backup.load(12, 2) is None  # older than the states kept
    assert EpochBackup(str(tmp_path / "none"), "x").load(5, 1) is None
