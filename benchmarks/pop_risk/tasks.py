"""Tasks of `benchmarks/population_risk_validation.py` (a benchmark helper,
not API).

Every task is a function `task(seed, quick) -> dict` with

- `build`: a function of no arguments returning a fresh (unbuilt-weights
  seeded by the caller) Keras model;
- `loss`: `"mse"` or `"sparse_ce"` (sparse categorical cross-entropy from
  logits; for sequences it is averaged over positions, as Keras does);
- `train`, `test`: `(x, y)` NumPy arrays; the held-out `test` set is drawn
  from the same distribution as `train` (same label noise) and only ever
  reaches the recorder, never an estimator;
- `clean_test`: the `test` inputs with clean labels (the digits' own
  labels, the teacher's noise-free output, the clean image, the Markov
  chain's most likely next token; the test labels themselves where they
  are noise-free);
- `epochs`, `batch`, `lr`, `weight_decay` (None or decoupled decay);
- `classes` (classification) and, for the INR, `clean` = (inputs, clean
  targets) of the whole image;
- `eps`: the label perturbation of the covariance-penalty shadow runs
  (fixed before training from the label scale, never from held-out data).
"""

import keras
import numpy as np


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int32")


def noisy_digits(seed, quick):
    """sklearn digits, 30 % of labels replaced by a uniform draw, MLP 256-256."""
    rng = np.random.default_rng(seed)
    x, clean = _digits()
    flip = rng.random(len(clean)) < 0.3
    y = np.where(flip, rng.integers(0, 10, len(clean)), clean).astype("int32")
    order = rng.permutation(len(y))
    n = 400 if quick else 600
    tr, te = order[:n], order[n:]

    def build():
        return keras.Sequential([
            keras.Input((64,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ])

    return dict(build=build, loss="sparse_ce", classes=10, train=(x[tr], y[tr]),
                test=(x[te], y[te]), clean_test=(x[te], clean[te]), epochs=40, batch=32,
                lr=1e-3, weight_decay=None, eps=0.1)


def teacher_student(seed, quick):
    """Random tanh teacher (d=20, 16 units) + N(0, 0.3^2) noise; MLP 256-256."""
    rng = np.random.default_rng(seed)
    d, n, n_test = 20, 500, 4000
    w1 = rng.normal(size=(d, 16)) / np.sqrt(d)
    w2 = rng.normal(size=(16, 1)) / 4.0

    def sample(k):
        x = rng.normal(size=(k, d)).astype("float32")
        f = np.tanh(x @ w1) @ w2
        return x, (f + 0.3 * rng.normal(size=f.shape)).astype("float32"), f.astype("float32")

    *train, _ = sample(n)
    x_test, y_test, f_test = sample(n_test)
    train, test = tuple(train), (x_test, y_test)

    def build():
        return keras.Sequential([
            keras.Input((d,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(1),
        ])

    return dict(build=build, loss="mse", train=train, test=test, clean_test=(x_test, f_test),
                epochs=60, batch=32, lr=1e-3, weight_decay=None,
                eps=float(np.std(train[1])) / 10)


def modular_addition(seed, quick):
    """(a + b) mod 23, one-hot inputs, 40 % of pairs, MLP 256, no decay:
    noise-free labels, the gap comes from which pairs were sampled."""
    rng = np.random.default_rng(seed)
    p = 23
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    x = np.concatenate([np.eye(p)[a], np.eye(p)[b]], axis=1).astype("float32")
    y = ((a + b) % p).astype("int32")
    order = rng.permutation(len(y))
    n = int(0.4 * len(y))
    tr, te = order[:n], order[n:]

    def build():
        return keras.Sequential([
            keras.Input((2 * p,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(p),
        ])

    return dict(build=build, loss="sparse_ce", classes=p, train=(x[tr], y[tr]),
                test=(x[te], y[te]), clean_test=(x[te], y[te]), epochs=80, batch=32, lr=1e-3,
                weight_decay=None, eps=0.1)


def noisy_image(seed, quick):
    """32x32 camera + N(0, 0.1^2) noise, Fourier-feature MLP on 60 % of the
    pixels; held-out = the other 40 % of noisy pixels."""
    from skimage import data
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    img = resize(data.camera().astype("float32") / 255.0, (32, 32), anti_aliasing=True)
    noisy = img + 0.1 * rng.normal(size=img.shape)
    yy, xx = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), indexing="ij")
    coords = np.stack([yy.ravel(), xx.ravel()], 1)
    freqs = rng.normal(size=(2, 64)) * 8.0
    feats = np.concatenate(
        [np.sin(np.pi * coords @ freqs), np.cos(np.pi * coords @ freqs)], 1
    ).astype("float32")
    target = noisy.reshape(-1, 1).astype("float32")
    order = rng.permutation(len(target))
    n = int(0.6 * len(target))
    tr, te = order[:n], order[n:]

    def build():
        return keras.Sequential([
            keras.Input((128,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(1),
        ])

    clean_target = img.reshape(-1, 1).astype("float32")
    return dict(build=build, loss="mse", train=(feats[tr], target[tr]),
                test=(feats[te], target[te]), clean_test=(feats[te], clean_target[te]),
                epochs=60, batch=32, lr=1e-3,
                weight_decay=None, eps=float(np.std(target[tr])) / 10,
                clean=(feats, img.reshape(-1, 1).astype("float32")))


def digits_cnn(seed, quick):
    """sklearn digits as 8x8 images, 25 % of labels replaced by a uniform
    draw; a small CNN (conv 16, conv 32, pool, dense 64)."""
    rng = np.random.default_rng(seed + 1000)
    x, clean = _digits()
    x = x.reshape(-1, 8, 8, 1)
    flip = rng.random(len(clean)) < 0.25
    y = np.where(flip, rng.integers(0, 10, len(clean)), clean).astype("int32")
    order = rng.permutation(len(y))
    n = 500 if quick else 800
    tr, te = order[:n], order[n:]

    def build():
        return keras.Sequential([
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ])

    return dict(build=build, loss="sparse_ce", classes=10, train=(x[tr], y[tr]),
                test=(x[te], y[te]), clean_test=(x[te], clean[te]), epochs=40, batch=32,
                lr=1e-3, weight_decay=None, eps=0.1)


class _PositionEmbedding(keras.layers.Layer):
    def build(self, input_shape):
        self.table = self.add_weight(shape=input_shape[1:], initializer="random_normal",
                                     name="table")

    def call(self, x):
        return x + self.table


def markov_lm(seed, quick):
    """Next-token prediction on a random order-2 Markov language (vocabulary
    10, sparse Dirichlet(0.2) transitions), 192 training sequences of 16
    tokens; a 1-block causal transformer (width 32, 2 heads). The loss is
    the mean next-token cross-entropy; its floor is the chain's entropy."""
    rng = np.random.default_rng(seed + 2000)
    vocab, length = 10, 16
    n = 128 if quick else 192
    trans = rng.dirichlet(np.full(vocab, 0.2), size=(vocab, vocab))

    def sample(k):
        seq = np.zeros((k, length + 1), "int32")
        seq[:, :2] = rng.integers(0, vocab, (k, 2))
        for t in range(2, length + 1):
            probs = trans[seq[:, t - 2], seq[:, t - 1]]
            cum = probs.cumsum(1)
            u = rng.random((k, 1))
            seq[:, t] = np.minimum((u > cum).sum(1), vocab - 1)
        return seq[:, :-1], seq[:, 1:]

    train, test = sample(n), sample(4000)
    # clean labels: the most likely next token given the two before (the
    # first position, with one token of context, keeps its sampled label)
    likely = trans.argmax(-1)
    clean = test[1].copy()
    clean[:, 1:] = likely[test[0][:, :-1], test[0][:, 1:]]

    def build():
        width = 32
        tokens = keras.Input((length,), dtype="int32")
        x = _PositionEmbedding()(keras.layers.Embedding(vocab, width)(tokens))
        h = keras.layers.LayerNormalization()(x)
        h = keras.layers.MultiHeadAttention(2, width // 2)(h, h, use_causal_mask=True)
        x = x + h
        h = keras.layers.LayerNormalization()(x)
        h = keras.layers.Dense(2 * width, activation="relu")(h)
        x = x + keras.layers.Dense(width)(h)
        x = keras.layers.LayerNormalization()(x)
        return keras.Model(tokens, keras.layers.Dense(vocab)(x))

    return dict(build=build, loss="sparse_ce", classes=vocab, train=train, test=test,
                clean_test=(test[0], clean), epochs=60, batch=16, lr=2e-3, weight_decay=None,
                eps=0.1)


def grokking(seed, quick):
    """(a + b) mod 47 with a token-embedding MLP (embedding 32, hidden 128),
    50 % of pairs, decoupled weight decay 1 (AdamW-style), lr 1e-2: the
    held-out loss first rises (memorisation), then falls to ~0 while the
    training loss is already small (generalisation); never stopping is best."""
    rng = np.random.default_rng(seed + 3000)
    p = 47
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    x = np.stack([a.ravel(), b.ravel()], 1).astype("int32")
    y = ((x[:, 0] + x[:, 1]) % p).astype("int32")
    order = rng.permutation(len(y))
    n = int(0.5 * len(y))
    tr, te = order[:n], order[n:]

    def build():
        tokens = keras.Input((2,), dtype="int32")
        h = keras.layers.Flatten()(keras.layers.Embedding(p, 32)(tokens))
        h = keras.layers.Dense(128, activation="relu")(h)
        return keras.Model(tokens, keras.layers.Dense(p)(h))

    return dict(build=build, loss="sparse_ce", classes=p, train=(x[tr], y[tr]),
                test=(x[te], y[te]), clean_test=(x[te], y[te]), epochs=150, batch=128, lr=1e-2,
                weight_decay=1.0, beta_2=0.98, eps=0.1)


TASKS = {
    "noisy_digits": noisy_digits,
    "teacher_student": teacher_student,
    "modular_addition": modular_addition,
    "noisy_image": noisy_image,
    "digits_cnn": digits_cnn,
    "markov_lm": markov_lm,
    "grokking": grokking,
}
