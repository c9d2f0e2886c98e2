"""The DPO losses of `benchmarks/tasks/dpo.py` against hand-computed NumPy
values, on the current backend: sigmoid DPO, conservative (label-smoothed)
DPO, IPO, the implicit reward and the completion log-probability they are
built on."""

import keras
import numpy as np
import pytest
from keras import ops
from tasks import dpo  # benchmarks/ is on pytest's pythonpath

H = np.array([-30.0, -2.5, -0.4, 0.0, 0.7, 3.0, 25.0], dtype="float32")
Y = np.array([1, 0, 1, 0, 1, 1, 0], dtype="float32")


def np_log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def as_np(x):
    return ops.convert_to_numpy(x).astype("float64")


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_sigmoid_dpo(beta):
    # Winner's margin: h when a is preferred (y = 1), -h when b is.
    h_w = np.where(Y == 1, H, -H).astype("float64")
    expected = -np_log_sigmoid(beta * h_w)
    got = as_np(dpo.dpo_loss(ops.convert_to_tensor(Y), ops.convert_to_tensor(H), beta))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # At h = 0 every pair costs log 2.
    assert got[3] == pytest.approx(np.log(2.0), rel=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_conservative_dpo_label_smoothing(eps):
    beta = 0.1
    h_w = np.where(Y == 1, H, -H).astype("float64")
    expected = (-(1 - eps) * np_log_sigmoid(beta * h_w)
                - eps * np_log_sigmoid(-beta * h_w))
    got = as_np(dpo.dpo_loss(ops.convert_to_tensor(Y), ops.convert_to_tensor(H),
                              beta, label_smoothing=eps))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Unlike plain DPO, cDPO's loss has a finite minimiser: beta*h_w = log((1-eps)/eps).
    z = np.log((1 - eps) / eps)
    grid = np.linspace(z - 1, z + 1, 201).astype("float32") / beta
    ones = np.ones_like(grid)
    losses = as_np(dpo.dpo_loss(ops.convert_to_tensor(ones), ops.convert_to_tensor(grid),
                                 beta, label_smoothing=eps))
    assert grid[np.argmin(losses)] * beta == pytest.approx(z, abs=0.02)


def test_ipo():
    beta = 0.1
    h_w = np.where(Y == 1, H, -H).astype("float64")
    expected = (h_w - 1.0 / (2 * beta)) ** 2
    got = as_np(dpo.ipo_loss(ops.convert_to_tensor(Y), ops.convert_to_tensor(H), beta))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Hand values: y = 1, h = 0 -> 25; y = 0, h = 0 -> 25; y = 1, h = 5 -> 0.
    pair = dpo.ipo_loss(ops.convert_to_tensor(np.array([1.0, 0.0, 1.0], "float32")),
                         ops.convert_to_tensor(np.array([0.0, 0.0, 5.0], "float32")), beta)
    np.testing.assert_allclose(as_np(pair), [25.0, 25.0, 0.0], atol=1e-5)


def test_make_loss_is_the_mean_and_checks_kind():
    y, h = ops.convert_to_tensor(Y), ops.convert_to_tensor(H)
    for kind, per_pair in (("dpo", dpo.dpo_loss(y, h, 0.1, 0.2)),
                           ("ipo", dpo.ipo_loss(y, h, 0.1))):
        fn = dpo.make_loss(kind, beta=0.1, label_smoothing=0.2)
        assert float(as_np(fn(y, h))) == pytest.approx(as_np(per_pair).mean(), rel=1e-6)
    with pytest.raises(ValueError, match="kind"):
        dpo.make_loss("kto")


def test_implicit_reward():
    logp = np.array([-3.0, -10.0, -0.5], "float32")
    ref = np.array([-4.0, -8.0, -0.5], "float32")
    got = as_np(dpo.implicit_reward(ops.convert_to_tensor(logp), ops.convert_to_tensor(ref), 0.1))
    np.testing.assert_allclose(got, [0.1, -0.2, 0.0], atol=1e-6)


def test_sequence_logp_sums_completion_tokens_only():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6, 5)).astype("float32")
    tokens = rng.integers(0, 5, size=(3, 6)).astype("int32")
    prompt_len = 2
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = [sum(lp[i, t - 1, tokens[i, t]] for t in range(prompt_len, 6)) for i in range(3)]
    got = as_np(dpo.sequence_logp(ops.convert_to_tensor(logits),
                                   ops.convert_to_tensor(tokens), prompt_len))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_pair_model_margin_and_policy_at_reference():
    keras.utils.set_random_seed(0)
    lang = dpo.Language(vocab=6, prompt_len=2, completion_len=3, seed=0)
    lm = dpo.causal_lm(lang.vocab, lang.seq_len, dim=8, heads=2)
    pairs, logp = dpo.pair_model(lm, lang.prompt_len, lang.seq_len)
    rng = np.random.default_rng(0)
    a, b = lang.sample(4, rng), lang.sample(4, rng)
    la, lb = (ops.convert_to_numpy(logp(x)) for x in (a, b))
    # The reference is the policy itself: zero margin, zero implicit reward.
    h0 = ops.convert_to_numpy(pairs([a, b, la, lb]))
    np.testing.assert_allclose(h0, 0.0, atol=1e-5)
    h = ops.convert_to_numpy(pairs([a, b, np.zeros(4, "float32"), np.ones(4, "float32")]))
    np.testing.assert_allclose(h, la - lb + 1.0, rtol=1e-5, atol=1e-5)


def test_reward_accuracy_and_flips():
    acc = dpo.reward_accuracy(np.array([1.0, 0.0, 2.0, -1.0]), np.array([0.0, 1.0, 3.0, 0.0]),
                               np.array([1.0, 0.0, 1.0, 1.0]))
    assert acc == 0.5
    pairs = {"y": np.ones(10000, "float32"), "flipped": np.zeros(10000, bool)}
    noisy = dpo.flip_labels(pairs, 0.3, np.random.default_rng(0))
    assert 0.28 < 1 - noisy["y"].mean() < 0.32
    # Flipping again restarts from the Bradley-Terry labels, not the noisy ones.
    again = dpo.flip_labels(noisy, 0.0, np.random.default_rng(1))
    np.testing.assert_array_equal(again["y"], 1.0)
