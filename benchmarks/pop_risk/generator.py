"""A generator of small supervised tasks for the population-risk benchmark
(a benchmark helper, not API).

`draw_spec(task_seed)` draws one task at random: the kind (classification
with 2-10 classes, or regression), the architecture (MLP on vectors, 1-D CNN
on signals, small transformer on token sequences), input size, training-set
size `n`, label noise (symmetric, class-dependent pair flips or none;
Gaussian target noise for regression), width, depth, learning rate, batch,
decoupled weight decay and epochs. `make_task(spec, seed)` builds its data
(the teacher, inputs and label noise are drawn from `seed`; the spec fixes
everything else) in the format of `pop_risk.tasks`, with in addition

- `test`: held-out examples with labels drawn like the training labels
  (same noise process, independent draws): the held-out loss the estimate
  is compared with;
- `clean_test`: the same held-out inputs with their clean labels (the
  teacher's argmax / noise-free target): clean accuracy and clean loss.

Specs are JSON dicts, so the task list of a benchmark run is recorded with
its results. Generator seeds below 1000 are the design set; seeds >= 1000
are held out (see benchmarks/population_risk_benchmark.py).
"""

import math

import keras
import numpy as np

from .tasks import _PositionEmbedding  # the learned position table the seven tasks use

N_TEST = 2000  # held-out examples per task (noisy and clean labels on the same inputs)


def _log_uniform(rng, low, high):
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def draw_spec(task_seed):
    """The task drawn by generator seed `task_seed` (a JSON-able dict)."""
    rng = np.random.default_rng([task_seed, 20261203])
    arch = str(rng.choice(["mlp", "cnn", "transformer"], p=[0.5, 0.25, 0.25]))
    regression = bool(rng.random() < 0.2)
    spec = {"generator_seed": int(task_seed), "arch": arch}
    if regression:
        spec.update(kind="regression", classes=0, noise_type="gaussian" if rng.random() < 0.8
                    else "none")
        spec["noise_rate"] = (round(_log_uniform(rng, 0.1, 1.0), 3)
                              if spec["noise_type"] == "gaussian" else 0.0)
    else:
        classes = int(rng.choice([2, 3, 5, 10], p=[0.2, 0.2, 0.25, 0.35]))
        noise_type = str(rng.choice(["symmetric", "pair", "none"], p=[0.5, 0.3, 0.2]))
        if noise_type == "symmetric":
            rate = rng.uniform(0.05, 0.5)
        elif noise_type == "pair":
            rate = rng.uniform(0.05, 0.4)
        else:
            rate = 0.0
        spec.update(kind="classification", classes=classes, noise_type=noise_type,
                    noise_rate=round(float(rate), 3))
    spec["n"] = int(round(_log_uniform(rng, 500, 4000)))
    spec["batch"] = int(rng.choice([16, 32, 64, 128], p=[0.15, 0.4, 0.3, 0.15]))
    spec["lr"] = round(_log_uniform(rng, 3e-4, 3e-3), 6)
    spec["weight_decay"] = float(rng.choice([0.0, 0.01, 0.1, 0.5], p=[0.4, 0.2, 0.25, 0.15]))
    spec["depth"] = int(rng.integers(1, 4))
    if arch == "mlp":
        spec["input_dim"] = int(rng.choice([8, 16, 32, 64]))
        spec["width"] = int(rng.choice([64, 128, 256, 512]))
        spec["teacher_width"] = int(rng.choice([8, 16, 32]))
        spec["input_decay"] = round(float(rng.uniform(0.0, 1.5)), 3)  # input spectrum
    elif arch == "cnn":
        spec["length"] = int(rng.choice([32, 48, 64]))
        spec["width"] = int(rng.choice([16, 32, 64]))
        spec["background"] = round(float(rng.uniform(0.2, 1.0)), 3)
    else:
        spec["length"] = int(rng.choice([8, 12, 16]))
        spec["vocab"] = int(rng.integers(6, 17))
        spec["width"] = int(rng.choice([32, 64]))
        spec["depth"] = int(rng.integers(1, 3))
    # epochs: enough to overfit, few enough for tens of seconds per run
    steps_per_epoch = math.ceil(spec["n"] / spec["batch"])
    budget = {"mlp": 6000, "cnn": 3000, "transformer": 2500}[arch]
    spec["epochs"] = int(np.clip(budget // steps_per_epoch, 20, 80))
    return spec


# ------------------------------------------------------------------ data


def _mlp_inputs(rng, spec, k):
    d = spec["input_dim"]
    scales = np.arange(1, d + 1, dtype="float64") ** (-spec["input_decay"] / 2)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    mix = (basis * scales) @ basis.T
    mix *= math.sqrt(d) / np.linalg.norm(mix)

    def sample(m):
        return (rng.normal(size=(m, d)) @ mix).astype("float32")

    return sample


def _teacher_mlp(rng, d_in, width, out):
    w1 = rng.normal(size=(d_in, width)) / math.sqrt(d_in)
    b1 = 0.3 * rng.normal(size=width)
    w2 = rng.normal(size=(width, out)) / math.sqrt(width)
    return lambda x: np.tanh(2.0 * (x @ w1 + b1)) @ w2


def _signals(rng, spec):
    """1-D signals: a class template (random smooth shape of 8-12 steps)
    placed at a random offset with a random scale, on smooth background
    noise. Returns `sample(m, classes) -> (x, latent)` with latent the
    class (classification) or the template's scale (regression)."""
    length = spec["length"]
    k = max(spec["classes"], 1)
    size = 10
    templates = np.cumsum(rng.normal(size=(k, size)), axis=1)
    templates -= templates.mean(1, keepdims=True)
    templates /= templates.std(1, keepdims=True)
    kernel = np.exp(-0.5 * (np.arange(-4, 5) / 2.0) ** 2)
    kernel /= kernel.sum()

    def sample(m):
        x = np.zeros((m, length))
        label = rng.integers(0, k, m)
        scale = rng.uniform(0.5, 1.5, m)
        offset = rng.integers(0, length - size + 1, m)
        for i in range(m):
            x[i, offset[i]:offset[i] + size] += scale[i] * templates[label[i]]
        noise = rng.normal(size=(m, length + 8))
        smooth = np.stack([np.convolve(row, kernel, mode="valid") for row in noise])
        x += spec["background"] * smooth[:, :length] / smooth.std()
        x += 0.05 * rng.normal(size=x.shape)
        return x[..., None].astype("float32"), label, scale

    return sample


def _clean_targets(rng, spec):
    """`sample(m) -> (x, clean)`: inputs and clean labels (int) or targets."""
    kind, arch, k = spec["kind"], spec["arch"], spec["classes"]
    out = 1 if kind == "regression" else k
    if arch == "mlp":
        draw = _mlp_inputs(rng, spec, out)
        teacher = _teacher_mlp(rng, spec["input_dim"], spec["teacher_width"], out)

        def sample(m):
            x = draw(m)
            return x, teacher(x)
    elif arch == "cnn":
        draw = _signals(rng, spec)

        def sample(m):
            x, label, scale = draw(m)
            if kind == "regression":
                return x, scale[:, None]
            return x, np.eye(k)[label] * 10.0  # logits whose argmax is the class
    else:
        length, vocab = spec["length"], spec["vocab"]
        embed = rng.normal(size=(vocab, 8))
        position = rng.normal(size=(length, 8)) * 0.5
        teacher = _teacher_mlp(rng, 8, 16, out)

        def sample(m):
            tokens = rng.integers(0, vocab, (m, length)).astype("int32")
            pooled = (embed[tokens] * (1.0 + position)).mean(1) * math.sqrt(length) / 2
            return tokens, teacher(pooled)

    if kind == "regression":
        def draw_regression(m):
            x, f = sample(m)
            return x, f

        return draw_regression

    def draw_classes(m):
        x, logits = sample(m)
        # balance the classes: centre each logit on its median over a reference draw
        return x, logits

    # centre the teacher's logits so that no class dominates
    x_ref, logits_ref = sample(4000)
    centre = np.median(logits_ref, axis=0)

    def balanced(m):
        x, logits = draw_classes(m)
        return x, np.argmax(logits - centre, axis=-1).astype("int32")

    return balanced


def _noisy_labels(rng, spec, clean):
    """Apply the spec's label noise to `clean` (independent draw per call)."""
    kind, rate = spec["kind"], spec["noise_rate"]
    if kind == "regression":
        return (clean + rate * rng.normal(size=clean.shape)).astype("float32")
    k = spec["classes"]
    hit = rng.random(len(clean)) < rate
    if spec["noise_type"] == "symmetric":  # replaced by a uniform draw over all classes
        other = rng.integers(0, k, len(clean))
    elif spec["noise_type"] == "pair":  # c -> c + 1 (mod K)
        other = (clean + 1) % k
    else:
        other = clean
    return np.where(hit, other, clean).astype("int32")


# ------------------------------------------------------------------ models


def _build(spec, input_shape):
    arch, depth, width = spec["arch"], spec["depth"], spec["width"]
    out = 1 if spec["kind"] == "regression" else spec["classes"]
    if arch == "mlp":
        layers = [keras.Input(input_shape)]
        layers += [keras.layers.Dense(width, activation="relu") for _ in range(depth)]
        return keras.Sequential(layers + [keras.layers.Dense(out)])
    if arch == "cnn":
        layers = [keras.Input(input_shape)]
        for i in range(depth):
            layers.append(keras.layers.Conv1D(width * 2**i, 5, padding="same",
                                              activation="relu"))
            layers.append(keras.layers.MaxPooling1D(2))
        layers += [keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
                   keras.layers.Dense(out)]
        return keras.Sequential(layers)
    tokens = keras.Input(input_shape, dtype="int32")
    x = _PositionEmbedding()(keras.layers.Embedding(spec["vocab"], width)(tokens))
    for _ in range(depth):
        h = keras.layers.LayerNormalization()(x)
        h = keras.layers.MultiHeadAttention(2, width // 2)(h, h)
        x = x + h
        h = keras.layers.LayerNormalization()(x)
        h = keras.layers.Dense(2 * width, activation="relu")(h)
        x = x + keras.layers.Dense(width)(h)
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.LayerNormalization()(x))
    return keras.Model(tokens, keras.layers.Dense(out)(x))


def make_task(spec, seed, quick=False):
    """Data and model builder of `spec` for run seed `seed` (the task dict of
    `pop_risk.tasks`, with `clean_test` and `spec` added)."""
    rng = np.random.default_rng([spec["generator_seed"], seed, 7])
    sample = _clean_targets(rng, spec)
    n = spec["n"] if not quick else min(spec["n"], 400)
    x, clean = sample(n + N_TEST)
    if spec["kind"] == "regression":
        scale = float(np.std(clean[:n]))
        clean = (clean - float(np.mean(clean[:n]))) / scale
        clean = clean.astype("float32")
    noisy = _noisy_labels(rng, spec, clean)
    train = (x[:n], noisy[:n])
    test = (x[n:], noisy[n:])
    clean_test = (x[n:], clean[n:])
    epochs = spec["epochs"] if not quick else 5
    task = dict(build=lambda: _build(spec, x.shape[1:]),
                loss="mse" if spec["kind"] == "regression" else "sparse_ce",
                train=train, test=test, clean_test=clean_test, clean_train=clean[:n],
                epochs=epochs, batch=spec["batch"], lr=spec["lr"],
                weight_decay=spec["weight_decay"] or None, spec=spec)
    if spec["kind"] != "regression":
        task["classes"] = spec["classes"]
    return task
