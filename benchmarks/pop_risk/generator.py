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
its results. Generator seeds below 1000 are the design set; seeds
1000-1999 are held out (see benchmarks/population_risk_benchmark.py).

Seeds >= 2000 are the v4 held-out set. They go through the same code, with
the same draws in the same order, so that the specs and data of seeds
below 2000 are exactly those of v3 (which the committed results depend
on); what differs:

- `n` is log-uniform in [500, 20000] (v3: [500, 4000]);
- longer runs: epochs = clip(V4_STEP_BUDGET[arch] // steps per epoch, 30,
  120) (v3: clip(budget // steps per epoch, 20, 80) with half those
  budgets), then capped so that the run's estimated time on one CPU
  thread under JAX, `v4_run_seconds(spec)`, is at most V4_SECONDS = 60 s:
  a cap on the run's total optimizer steps that depends on the model's
  size and the batch (see `v4_max_steps`). The cap binds for large `n`
  with small batches or the largest CNNs and transformers, which then
  run fewer than 30 epochs (8 % of seeds 2000-5999; median 90 epochs,
  1 % below 10). A floor of V4_MIN_EPOCHS = 3 would override the cap;
  it binds for no seed in 2000-11999. Measured (`run_full`, Adam, one
  thread, a 2-core machine shared with other work): 45, 48 and 64 s for
  the MLP, CNN and transformer of seeds 2000-2199 estimated slowest
  (2078, 2183, 2112: 60 s estimated each). The estimate's constants
  define the v4 specs: changing them changes the epochs of seeds >= 2000;
- `schedule`: the learning-rate schedule over the run, "constant",
  "cosine" (cosine decay from `lr` to 0 over the run's steps) or "step"
  (x0.1 at 50 % and again at 75 % of the run's steps), each with
  probability 1/3; `make_task` passes it on as `task["schedule"]`
  (`pop_risk.runs.make_optimizer` builds it);
- `dropout`: 0 (half the tasks), 0.1, 0.2 or 0.3 (1/6 each), applied by
  `_build` after every hidden layer: after each hidden Dense of the MLP;
  after each convolution block (after its pooling) and after the hidden
  Dense of the CNN; on the output of each attention and feed-forward
  sublayer of the transformer, before it is added to the residual stream
  (the usual residual dropout). No Dropout layer is built when it is 0.

Everything else (architectures, label noise, the other ranges) is v3's.

Seeds >= 4000 are the v5 held-out set (population risk 1.0): v4's
distribution with runs up to 150 epochs: epochs = clip(V5_STEP_BUDGET[arch]
// steps per epoch, 30, 150), V5_STEP_BUDGET being 1.25 times v4's, under the
same 60 s time cap. Everything else is v4's; specs of seeds below 4000 are
unchanged.
"""

import math

import keras
import numpy as np

from .tasks import _PositionEmbedding  # the learned position table the seven tasks use

N_TEST = 2000  # held-out examples per task (noisy and clean labels on the same inputs)
V4_FIRST_SEED = 2000  # generator seeds from here on draw from the v4 distribution
V4_STEP_BUDGET = {"mlp": 12000, "cnn": 6000, "transformer": 5000}  # v3's, doubled
V4_EPOCHS = (30, 120)  # clip of budget // steps per epoch, before the time cap
V4_MIN_EPOCHS = 3
V4_SECONDS = 60.0  # the cap on a run's estimated time (one CPU thread, JAX)
V4_SCHEDULES = ("constant", "cosine", "step")
V4_DROPOUT = ((0.0, 0.1, 0.2, 0.3), (0.5, 1 / 6, 1 / 6, 1 / 6))
V5_FIRST_SEED = 4000  # from here on: v5 (longer runs)
V5_STEP_BUDGET = {"mlp": 15000, "cnn": 7500, "transformer": 6250}  # v4's x 1.25
V5_EPOCHS = (30, 150)


def _log_uniform(rng, low, high):
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def draw_spec(task_seed):
    """The task drawn by generator seed `task_seed` (a JSON-able dict)."""
    rng = np.random.default_rng([task_seed, 20261203])
    v4 = task_seed >= V4_FIRST_SEED
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
    spec["n"] = int(round(_log_uniform(rng, 500, 20000 if v4 else 4000)))
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
    if v4:  # draws after all of v3's, which are unchanged
        spec["schedule"] = str(rng.choice(V4_SCHEDULES))
        spec["dropout"] = float(rng.choice(V4_DROPOUT[0], p=V4_DROPOUT[1]))
        if task_seed >= V5_FIRST_SEED:
            epochs = int(np.clip(V5_STEP_BUDGET[arch] // steps_per_epoch, *V5_EPOCHS))
        else:
            epochs = int(np.clip(V4_STEP_BUDGET[arch] // steps_per_epoch, *V4_EPOCHS))
        spec["epochs"] = max(V4_MIN_EPOCHS, min(epochs, v4_max_steps(spec) // steps_per_epoch))
        return spec
    budget = {"mlp": 6000, "cnn": 3000, "transformer": 2500}[arch]
    spec["epochs"] = int(np.clip(budget // steps_per_epoch, 20, 80))
    return spec


# ------------------------------------------------------- v4 run-time cap


def multiply_adds(spec):
    """Multiply-adds of one forward pass of one example through the model
    `_build(spec)` builds (weights layers only: the attention products are
    counted, softmax, pooling and normalisation are not)."""
    arch, depth, width = spec["arch"], spec["depth"], spec["width"]
    out = 1 if spec["kind"] == "regression" else spec["classes"]
    if arch == "mlp":
        return spec["input_dim"] * width + (depth - 1) * width**2 + width * out
    if arch == "cnn":
        length, channels, total = spec["length"], 1, 0
        for i in range(depth):
            total += length * 5 * channels * width * 2**i  # Conv1D, kernel 5, "same"
            length, channels = length // 2, width * 2**i
        return total + length * channels * 64 + 64 * out
    length = spec["length"]
    # per token and block: q, k, v and output projections (4 w^2), the feed-
    # forward (4 w^2), attention scores and their average (2 L w)
    return depth * length * (8 * width**2 + 2 * length * width) + width * out


def parameters(spec):
    """Trainable parameters of the model `_build(spec)` builds."""
    arch, depth, width = spec["arch"], spec["depth"], spec["width"]
    out = 1 if spec["kind"] == "regression" else spec["classes"]
    if arch == "mlp":
        d = spec["input_dim"]
        return d * width + width + (depth - 1) * (width**2 + width) + (width + 1) * out
    if arch == "cnn":
        length, channels, total = spec["length"], 1, 0
        for i in range(depth):
            total += 5 * channels * width * 2**i + width * 2**i
            length, channels = length // 2, width * 2**i
        return total + (length * channels + 1) * 64 + 65 * out
    # embeddings; per block: attention (4 w^2 + 4 w), feed-forward
    # (4 w^2 + 3 w), two layer norms (4 w); final layer norm and head
    block = 8 * width**2 + 11 * width
    return (spec["vocab"] + spec["length"]) * width + depth * block + 2 * width + (width + 1) * out


# Seconds on one CPU thread under JAX (Keras 3.15, jax 0.10; fitted on the
# development machine, an x86 core shared with other work, to the largest
# and a small model of each architecture at batches 16 and 128; within
# about 25 %, mostly above). One optimizer step: a fixed cost, the update
# of every parameter, and the batch's multiply-adds (forward, backward).
# One example predicted: a fixed cost and its multiply-adds. Per epoch:
# the library's estimate and the recorder's optimizer sums; per run: the
# compilation of the training step, predictions and gradients. These
# constants are part of the v4 distribution (they set its epochs): fixed.
_STEP_FIXED = {"mlp": 0.5e-3, "cnn": 1.0e-3, "transformer": 0.8e-3}
_STEP_PER_PARAMETER = 3.3e-9
_STEP_PER_MAC = {"mlp": 6.5e-11, "cnn": 1.3e-10, "transformer": 2.7e-10}
_PREDICT_FIXED = 2e-6
_PREDICT_PER_MAC = {"mlp": 3e-11, "cnn": 3e-11, "transformer": 8e-11}
_EPOCH_FIXED, _EPOCH_PER_PARAMETER = 0.1, 1.5e-7
_RUN_FIXED = 5.0
_GD_BATCHES = 5  # batches whose gradients the recorder takes each epoch (runs.GD_BATCHES)


def v4_epoch_seconds(spec):
    """Estimated seconds of one epoch of a full run (`pop_risk.runs.run_full`):
    the optimizer steps, the recorder's predictions (training set and
    2 x N_TEST held-out examples) and gradient-disparity batches, and the
    per-epoch work of the callbacks."""
    arch, batch, macs, params = spec["arch"], spec["batch"], multiply_adds(spec), parameters(spec)
    step = _STEP_FIXED[arch] + _STEP_PER_PARAMETER * params + _STEP_PER_MAC[arch] * batch * macs
    predict = (spec["n"] + 2 * N_TEST) * (_PREDICT_FIXED + _PREDICT_PER_MAC[arch] * macs)
    steps = math.ceil(spec["n"] / batch) + _GD_BATCHES
    return steps * step + predict + _EPOCH_FIXED + _EPOCH_PER_PARAMETER * params


def v4_run_seconds(spec, epochs=None):
    """Estimated seconds of a full run of `spec` (its own epochs by default)."""
    return _RUN_FIXED + (spec["epochs"] if epochs is None else epochs) * v4_epoch_seconds(spec)


def v4_max_steps(spec):
    """The cap on a v4 run's total optimizer steps: the steps of as many
    whole epochs as `v4_run_seconds` fits in V4_SECONDS."""
    steps_per_epoch = math.ceil(spec["n"] / spec["batch"])
    epochs = int((V4_SECONDS - _RUN_FIXED) // v4_epoch_seconds(spec))
    return epochs * steps_per_epoch


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


def _dropout(spec):
    """The Dropout layers after hidden layers: `[Dropout(rate)]`, or `[]`
    when the spec has none (v3 specs, and v4 specs with rate 0), so that
    those models are built exactly as without this option."""
    rate = spec.get("dropout", 0.0)
    return [keras.layers.Dropout(rate)] if rate else []


def _build(spec, input_shape):
    arch, depth, width = spec["arch"], spec["depth"], spec["width"]
    out = 1 if spec["kind"] == "regression" else spec["classes"]
    if arch == "mlp":
        layers = [keras.Input(input_shape)]
        for _ in range(depth):
            layers += [keras.layers.Dense(width, activation="relu")] + _dropout(spec)
        return keras.Sequential(layers + [keras.layers.Dense(out)])
    if arch == "cnn":
        layers = [keras.Input(input_shape)]
        for i in range(depth):
            layers.append(keras.layers.Conv1D(width * 2**i, 5, padding="same",
                                              activation="relu"))
            layers.append(keras.layers.MaxPooling1D(2))
            layers += _dropout(spec)
        layers += [keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
                   *_dropout(spec), keras.layers.Dense(out)]
        return keras.Sequential(layers)

    def residual(x, h):  # dropout on the sublayer's output, then the residual add
        for layer in _dropout(spec):
            h = layer(h)
        return x + h

    tokens = keras.Input(input_shape, dtype="int32")
    x = _PositionEmbedding()(keras.layers.Embedding(spec["vocab"], width)(tokens))
    for _ in range(depth):
        h = keras.layers.LayerNormalization()(x)
        h = keras.layers.MultiHeadAttention(2, width // 2)(h, h)
        x = residual(x, h)
        h = keras.layers.LayerNormalization()(x)
        h = keras.layers.Dense(2 * width, activation="relu")(h)
        x = residual(x, keras.layers.Dense(width)(h))
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.LayerNormalization()(x))
    return keras.Model(tokens, keras.layers.Dense(out)(x))


def make_task(spec, seed, quick=False):
    """Data and model builder of `spec` for run seed `seed` (the task dict of
    `pop_risk.tasks`, with `clean_test`, `spec` and `schedule` added: the
    learning-rate schedule's name, "constant" for v3 specs)."""
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
                weight_decay=spec["weight_decay"] or None, spec=spec,
                schedule=spec.get("schedule", "constant"))
    if spec["kind"] != "regression":
        task["classes"] = spec["classes"]
    return task
