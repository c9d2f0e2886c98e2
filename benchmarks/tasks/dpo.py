"""DPO losses in `keras.ops` and a tiny synthetic-language setup, used by
`benchmarks/dpo.py` and tested in `tests/benchmarks/test_dpo_losses.py`
(`guides/dpo_with_noisy_preferences.py` has its own copy of what it uses).

Everything here is backend-agnostic Keras 3 except the samplers, which take
any `logits_fn(tokens) -> numpy array` and draw with NumPy.

Conventions. A preference pair is two completions `a`, `b` of one prompt and
a label `y` (1: `a` preferred, 0: `b` preferred). With `logp` the summed
completion log-probability under the policy and `ref` under the frozen
reference, the log-ratio margin is

    h = (logp(a) - ref(a)) - (logp(b) - ref(b)),

and the implicit reward of a completion is `beta * (logp - ref)`.
"""

import numpy as np

import keras
from keras import layers
from keras import ops

# ------------------------------------------------------------------ losses


def dpo_loss(y_true, h, beta=0.1, label_smoothing=0.0):
    """Sigmoid DPO (Rafailov et al. 2023), per pair.

    `-(1 - eps) * log sigmoid(beta * h_w) - eps * log sigmoid(-beta * h_w)`
    with `h_w` the margin of the labelled winner over the loser. With
    `label_smoothing = eps > 0` this is conservative DPO (cDPO, Mitchell
    2023): it assumes a fraction `eps` of labels is flipped. It equals binary
    cross-entropy on the logit `beta * h` with smoothed labels.
    """
    y = ops.reshape(ops.cast(y_true, h.dtype), (-1,))
    z = beta * ops.reshape(h, (-1,))
    y = y * (1.0 - label_smoothing) + (1.0 - y) * label_smoothing
    return y * ops.softplus(-z) + (1.0 - y) * ops.softplus(z)


def ipo_loss(y_true, h, beta=0.1):
    """IPO (Azar et al. 2023), per pair: `(h_w - 1 / (2 * beta))**2`."""
    y = ops.reshape(ops.cast(y_true, h.dtype), (-1,))
    target = (2.0 * y - 1.0) / (2.0 * beta)
    return ops.square(ops.reshape(h, (-1,)) - target)


def implicit_reward(logp, ref_logp, beta=0.1):
    """DPO's implicit reward `beta * (log pi(y|x) - log pi_ref(y|x))`."""
    return beta * (logp - ref_logp)


def make_loss(kind="dpo", beta=0.1, label_smoothing=0.0):
    """A Keras loss `fn(y_true, y_pred)` (mean over pairs); `y_pred` = h."""
    if kind == "dpo":
        def loss(y_true, y_pred):
            return ops.mean(dpo_loss(y_true, y_pred, beta, label_smoothing))
    elif kind == "ipo":
        def loss(y_true, y_pred):
            return ops.mean(ipo_loss(y_true, y_pred, beta))
    else:
        raise ValueError(f"kind must be 'dpo' or 'ipo'; received {kind!r}")
    return loss


# ------------------------------------------------------- the tiny language


class Language:
    """A random Markov chain over `vocab` tokens (the synthetic language) and
    a known reward: a fixed score per token, summed over the completion."""

    def __init__(self, vocab=12, prompt_len=4, completion_len=8, seed=0,
                 concentration=0.5):
        rng = np.random.default_rng(seed)
        self.vocab, self.prompt_len, self.completion_len = vocab, prompt_len, completion_len
        self.seq_len = prompt_len + completion_len
        self.transition = rng.dirichlet(np.full(vocab, concentration), size=vocab)
        self.token_reward = rng.normal(size=vocab)

    def sample(self, n, rng):
        """`n` sequences of `seq_len` tokens from the chain."""
        seq = np.empty((n, self.seq_len), dtype="int32")
        seq[:, 0] = rng.integers(0, self.vocab, n)
        cum = np.cumsum(self.transition, axis=1)
        for t in range(1, self.seq_len):
            u = rng.random((n, 1))
            seq[:, t] = np.minimum((u > cum[seq[:, t - 1]]).sum(1), self.vocab - 1)
        return seq

    def reward(self, seq):
        """True reward of the completion part of each sequence."""
        return self.token_reward[seq[:, self.prompt_len:]].sum(axis=1)


# ------------------------------------------------------------------ the LM


class TokenAndPosition(layers.Layer):
    def __init__(self, vocab, max_len, dim, **kwargs):
        super().__init__(**kwargs)
        self.token = layers.Embedding(vocab, dim)
        self.position = layers.Embedding(max_len, dim)

    def call(self, tokens):
        positions = ops.arange(ops.shape(tokens)[1])
        return self.token(tokens) + self.position(positions)[None]


def causal_lm(vocab, seq_len, dim=32, heads=2, blocks=1, name="lm"):
    """A small causal transformer: tokens (B, T) -> next-token logits (B, T, V),
    for any T <= seq_len."""
    tokens = keras.Input((None,), dtype="int32")
    x = TokenAndPosition(vocab, seq_len, dim)(tokens)
    for _ in range(blocks):
        h = layers.LayerNormalization()(x)
        h = layers.MultiHeadAttention(heads, dim // heads)(h, h, use_causal_mask=True)
        x = x + h
        h = layers.LayerNormalization()(x)
        h = layers.Dense(2 * dim, activation="gelu")(h)
        x = x + layers.Dense(dim)(h)
    x = layers.LayerNormalization()(x)
    return keras.Model(tokens, layers.Dense(vocab)(x), name=name)


def sequence_logp(logits, tokens, prompt_len):
    """Sum of token log-probs of the completion (positions >= prompt_len)."""
    logp = ops.log_softmax(logits[:, prompt_len - 1:-1], axis=-1)
    target = ops.expand_dims(tokens[:, prompt_len:], -1)
    return ops.sum(ops.squeeze(ops.take_along_axis(logp, target, axis=-1), -1), axis=1)


class SequenceLogProb(layers.Layer):
    """Wraps the LM: tokens -> summed completion log-prob, shape (B,)."""

    def __init__(self, lm, prompt_len, **kwargs):
        super().__init__(**kwargs)
        self.lm, self.prompt_len = lm, prompt_len

    def call(self, tokens):
        return sequence_logp(self.lm(tokens), tokens, self.prompt_len)


def pair_model(lm, prompt_len, seq_len):
    """(tokens_a, tokens_b, ref_logp_a, ref_logp_b) -> log-ratio margin h.

    Train it with `make_loss(...)` and labels `y` (1: `a` preferred); the
    policy is `lm` itself, the reference enters as precomputed log-probs.
    Also returns the per-sequence log-prob model sharing the same `lm`.
    """
    logp_layer = SequenceLogProb(lm, prompt_len)
    tok_a = keras.Input((seq_len,), dtype="int32")
    tok_b = keras.Input((seq_len,), dtype="int32")
    ref_a, ref_b = keras.Input(()), keras.Input(())
    h = (logp_layer(tok_a) - ref_a) - (logp_layer(tok_b) - ref_b)
    tok = keras.Input((seq_len,), dtype="int32")
    return (keras.Model([tok_a, tok_b, ref_a, ref_b], h),
            keras.Model(tok, logp_layer(tok)))


# ------------------------------------------------------------- sampling


def sample_completions(logits_fn, prompts, completion_len, rng, temperature=1.0):
    """Autoregressively complete `prompts` (n, P) to (n, P + completion_len).

    `logits_fn(tokens)` returns next-token logits (n, T, V) as NumPy; the
    sequence is padded with zeros to full length (the model is causal, so
    the padding never influences earlier positions)."""
    n, p = prompts.shape
    seq = np.zeros((n, p + completion_len), dtype="int32")
    seq[:, :p] = prompts
    for t in range(p, p + completion_len):
        logits = np.asarray(logits_fn(seq), dtype="float64")[:, t - 1] / temperature
        gumbel = -np.log(-np.log(rng.random(logits.shape)))
        seq[:, t] = np.argmax(logits + gumbel, axis=-1)
    return seq


def token_kl(policy_logits, ref_logits, prompt_len):
    """Sequence KL(pi || pi_ref) estimated on sequences sampled from pi: the
    sum over completion positions of the exact next-token KL, mean over
    sequences (an unbiased estimator of the sequence-level KL)."""
    lp = _log_softmax(np.asarray(policy_logits, "float64")[:, prompt_len - 1:-1])
    lr = _log_softmax(np.asarray(ref_logits, "float64")[:, prompt_len - 1:-1])
    return float((np.exp(lp) * (lp - lr)).sum(axis=(1, 2)).mean())


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ------------------------------------------------------------ preferences


def preference_pairs(language, logits_fn, n, rng, flip=0.0):
    """`n` prompts from the language, two completions each sampled from the
    reference (`logits_fn`), labels by Bradley-Terry on the true reward, then
    a fraction `flip` of labels swapped. Returns a dict of NumPy arrays,
    including `clean`: the sign of the true reward difference (1: `a` better)."""
    prompts = language.sample(n, rng)[:, :language.prompt_len]
    a = sample_completions(logits_fn, prompts, language.completion_len, rng)
    b = sample_completions(logits_fn, prompts, language.completion_len, rng)
    diff = language.reward(a) - language.reward(b)
    bt = (rng.random(n) < 1.0 / (1.0 + np.exp(-diff))).astype("float32")
    flipped = rng.random(n) < flip
    y = np.where(flipped, 1.0 - bt, bt).astype("float32")
    return {"a": a, "b": b, "y": y, "clean": (diff > 0).astype("float32"),
            "diff": diff, "flipped": flipped}


def flip_labels(pairs, flip, rng):
    """Copy of `pairs` with a fraction `flip` of the Bradley-Terry labels
    swapped (recomputing from the unflipped labels)."""
    bt = np.where(pairs["flipped"], 1.0 - pairs["y"], pairs["y"])
    flipped = rng.random(len(bt)) < flip
    out = dict(pairs)
    out["y"] = np.where(flipped, 1.0 - bt, bt).astype("float32")
    out["flipped"] = flipped
    return out


def reward_accuracy(reward_a, reward_b, clean):
    """Fraction of pairs (with distinct true rewards) where the implicit
    reward margin has the sign of the true preference."""
    return float(np.mean((reward_a > reward_b) == (clean > 0.5)))
