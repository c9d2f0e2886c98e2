"""
Title: Distributed training with SNRAdam
Author: keras_snr contributors
Date created: 2026/11/28
Last modified: 2026/11/30
Description: Data- and model-parallel training with SNRAdam on JAX and TensorFlow, checked against a single-device run.
"""

"""
## Introduction

`keras_snr.SNRAdam` is a plain Keras optimizer, so it trains under Keras's
distribution APIs with no change to your model or to the optimizer:

- on **JAX**, `keras.distribution.DataParallel` (replicate the model, split
  the batch) and `keras.distribution.ModelParallel` (also split the
  variables, according to a `LayoutMap`);
- on **TensorFlow**, `tf.distribute.MirroredStrategy`;
- on **PyTorch**, Keras's distribution API has no implementation; see the
  last section.

This guide runs all of it on a CPU: JAX is asked for 4 simulated host
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=4`) and
TensorFlow splits the CPU into 2 logical devices. On a machine with several
GPUs the same code runs unchanged on the GPUs (the XLA flag only affects the
CPU platform). Each distributed run is compared with a single-device run of
the same model, data and initial weights: the losses agree, and the weights
differ only by the effect of float32 rounding in the cross-device sums (see
"How close is close?" below).

The one thing to get right is **`alpha`**. SNRAdam compares each
coordinate's squared mean gradient with `alpha` times its estimated
minibatch noise. On a finite training set of `n` examples,
`alpha = b / (n - b)`, where `b` is the number of examples behind one
update. Under data parallelism each device sees `b / replicas` examples, but
the gradients are averaged across devices before the optimizer runs
(all-reduced by `tf.distribute`, or computed globally by JAX's SPMD
partitioner), so the optimizer, and the noise statistic it keeps, see the
**global** batch. Use the global batch size, the `batch_size` you pass to
`fit()`:

```python
alpha = keras_snr.finite_dataset_alpha(global_batch_size, n)
```
"""

"""
## Setup

The backend is chosen with `KERAS_BACKEND` (default here: JAX). On JAX we
ask XLA for 4 host devices; this must happen before JAX is imported, and is
skipped if you set the flag yourself. The guide runs as a script (`--help`
lists its options); it prints its results and writes no files.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

parser = argparse.ArgumentParser(
    description="Data- and model-parallel training with SNRAdam (JAX: 4 simulated "
    "CPU devices; TensorFlow: MirroredStrategy on 2 logical CPUs), checked "
    "against a single-device run. Writes no files. Full run: 8,192 examples, "
    "8 epochs per training run, about 15-20 s on a 2-core CPU "
    "(measured twice with the JAX backend on a 2-core machine shared with other "
    "jobs, 2026/11/30; TensorFlow and PyTorch were not timed).",
)
parser.add_argument(
    "--quick",
    action="store_true",
    help="smoke test: 512 examples, batch 64, 2 epochs, and no per_tensor "
    "ModelParallel comparison (about 6-10 s with JAX)",
)
args, _ = parser.parse_known_args()
BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "jax" and "xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""
):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_snr  # noqa: E402

if BACKEND == "tensorflow":
    import tensorflow as tf

    # Two logical CPU devices for MirroredStrategy. Must run before
    # TensorFlow creates its first tensor.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

print("Keras", keras.__version__, "backend:", BACKEND)

"""
## Data, model and optimizer

A synthetic 8-class problem: a random two-layer "teacher" labels Gaussian
inputs, and 20 % of the labels are then replaced at random. It is a
finite training set of `n` examples, so `alpha = b / (n - b)` with `b` the
global batch.
"""

N = 512 if args.quick else 8192
GLOBAL_BATCH = 64 if args.quick else 256
EPOCHS = 2 if args.quick else 8
FEATURES, CLASSES = 32, 8

rng = np.random.default_rng(0)
x = rng.normal(size=(N, FEATURES)).astype("float32")
teacher_1 = rng.normal(size=(FEATURES, 64)) / np.sqrt(FEATURES)
teacher_2 = rng.normal(size=(64, CLASSES)) / 8.0
y = np.argmax(np.tanh(x @ teacher_1) @ teacher_2, axis=1)
flip = rng.random(N) < 0.2
y = np.where(flip, rng.integers(0, CLASSES, N), y).astype("int32")

alpha = keras_snr.finite_dataset_alpha(GLOBAL_BATCH, N)
print(f"n = {N}, global batch = {GLOBAL_BATCH}, alpha = {alpha:.5f}")

"""
With 4 data-parallel replicas each device sees `GLOBAL_BATCH / 4` examples
per step. Using that per-device batch in the formula would give a 4x
smaller `alpha` (a gate that opens far too easily):
"""

print(
    "alpha from the per-device batch (wrong):",
    f"{keras_snr.finite_dataset_alpha(GLOBAL_BATCH // 4, N):.5f}",
)

"""
The model is a small MLP. We fix the initial weights once and load them into
every run, so that all runs start from the same point and see the same
batches in the same order (`shuffle=False`).
"""


def make_model(seed=0):
    def dense(units, name, activation=None):
        init = keras.initializers.GlorotUniform(seed=seed + len(name) + ord(name[-1]))
        return keras.layers.Dense(
            units, activation=activation, kernel_initializer=init, name=name
        )

    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            dense(256, "hidden_1", "relu"),
            dense(256, "hidden_2", "relu"),
            dense(CLASSES, "logits"),
        ],
        name="mlp",
    )


INITIAL_WEIGHTS = make_model().get_weights()


def train(reduction="elementwise"):
    """Build, compile and fit one model under whatever distribution is active."""
    model = make_model()
    model.set_weights(INITIAL_WEIGHTS)
    model.compile(
        optimizer=keras_snr.SNRAdam(
            learning_rate=1e-3, alpha=alpha, reduction=reduction
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(
        x, y, batch_size=GLOBAL_BATCH, epochs=EPOCHS, shuffle=False, verbose=0
    )
    return model, history.history


def compare(name, reference, distributed):
    """Print final losses and the largest weight difference."""
    (ref_model, ref_hist), (dist_model, dist_hist) = reference, distributed
    diff = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(ref_model.get_weights(), dist_model.get_weights())
    )
    print(
        f"{name}: final loss {dist_hist['loss'][-1]:.6f} "
        f"(single device {ref_hist['loss'][-1]:.6f}), "
        f"accuracy {dist_hist['accuracy'][-1]:.4f} "
        f"(single device {ref_hist['accuracy'][-1]:.4f}), "
        f"max |weight difference| = {diff:.2e}"
    )
    return diff


"""
## The single-device reference

Every backend runs this part. On JAX with 4 simulated devices, a model
built outside any distribution scope lives on the first device only.
"""

single = train()
print(
    f"single device: final loss {single[1]['loss'][-1]:.6f}, "
    f"accuracy {single[1]['accuracy'][-1]:.4f}"
)

"""
## JAX: data parallelism with `keras.distribution.DataParallel`

`DataParallel` replicates every variable, including SNRAdam's three slots
(`momentum`, `velocity` and `noise_variance`), on every device and splits
each batch along its first axis. JAX's SPMD partitioner computes the
gradient of the mean loss over the global batch, so `update_step` receives
exactly the global-batch gradient: the same update as on one device, up to
the order of floating-point additions.
"""

if BACKEND == "jax":
    devices = keras.distribution.list_devices()
    print(f"{len(devices)} devices:", devices)

    data_parallel = keras.distribution.DataParallel(devices=devices)
    with data_parallel.scope():
        dp = train()
    compare("DataParallel", single, dp)

"""
### How close is close?

In the quick run (16 steps) the weights agree to a few `1e-7`: float32
rounding. Over the full run (256 steps) the largest weight difference grows
to about `1e-3` while the losses still agree to 4-5 digits. That growth is
not SNRAdam's doing: an Adam-type step `m_hat / (sqrt(v_hat) + epsilon)` is
normalised per coordinate, so on coordinates whose gradient is at the level
of rounding error (e.g. into ReLU units that almost never fire) the rounding
of the cross-device sum decides a step of up to `lr`. Keras's `AdamW` with
the same `epsilon=1e-8` drifts the same way (we measured 1.3e-2 on this
task); with `epsilon=1e-7` (Keras's default for `Adam`) both SNRAdam and
`AdamW` agree with the single-device run to about `1e-6` after 256 steps.
"""

"""
## JAX: model parallelism with `keras.distribution.ModelParallel`

For models too large for one device, `ModelParallel` shards variables over a
`model` axis of a device mesh and the batch over a `batch` axis. Here the
4 devices form a 2 x 2 mesh. The `LayoutMap` splits the first hidden layer
by columns and the second by rows (the usual pairing, which needs one
all-reduce per pair of layers); variables it does not match are replicated.

SNRAdam creates its slots with `add_variable_from_reference`, which copies
the variable's layout, so each slot is sharded exactly like its weight and
the update runs shard by shard, with no communication. With
`reduction="per_tensor"` the gate needs `sum(m_hat**2)` and `sum(s_hat)` over
the *whole* tensor: XLA inserts the cross-device sums itself, and the gate is
the same as on one device. We show that too.
"""

if BACKEND == "jax":
    n_devices = len(devices)
    if n_devices >= 2 and n_devices % 2 == 0:
        mesh = keras.distribution.DeviceMesh(
            shape=(n_devices // 2, 2), axis_names=("batch", "model"), devices=devices
        )
        layout_map = keras.distribution.LayoutMap(mesh)
        # Keys are regular expressions matched against the *whole* variable
        # path (`re.fullmatch`): "mlp/hidden_1/kernel" here, so the leading
        # ".*" matters. Print `v.path for v in model.variables` to see them.
        layout_map[".*hidden_1/kernel"] = (None, "model")
        layout_map[".*hidden_1/bias"] = ("model",)
        layout_map[".*hidden_2/kernel"] = ("model", None)

        model_parallel = keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch"
        )
        with model_parallel.scope():
            mp = train()
        compare("ModelParallel", single, mp)

        # Where did the kernel and its slots end up?
        for variable in mp[0].optimizer.variables:
            if variable.path.endswith(("hidden_1_kernel_momentum",
                                       "hidden_1_kernel_noise_variance")):
                print(f"{variable.path}: {variable.value.sharding.spec}")
        kernel = mp[0].get_layer("hidden_1").kernel
        print(f"{kernel.path}: {kernel.value.sharding.spec}")

        if not args.quick:  # two more compilations; skipped in CI's quick run
            single_per_tensor = train(reduction="per_tensor")
            with model_parallel.scope():
                mp_per_tensor = train(reduction="per_tensor")
            compare("ModelParallel, per_tensor", single_per_tensor, mp_per_tensor)
    else:
        print(f"ModelParallel needs an even number of devices; found {n_devices}.")

"""
## TensorFlow: `tf.distribute.MirroredStrategy`

Under a `tf.distribute` strategy, build and compile the model inside
`strategy.scope()`; `fit()` then splits each global batch across the
replicas, and Keras all-reduces (sums) the per-replica gradients of the
per-replica losses, which it scales by `1 / replicas`, before
`SNRAdam.update_step` runs. The optimizer again sees the global-batch mean
gradient, so `alpha` uses the global batch. SNRAdam's slots are mirrored
variables, updated identically on every replica.
"""

if BACKEND == "tensorflow":
    logical_cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(logical_cpus)
    print("replicas in sync:", strategy.num_replicas_in_sync)
    with strategy.scope():
        mirrored = train()
    compare("MirroredStrategy", single, mirrored)

"""
## PyTorch

Keras 3's `keras.distribution` API has no implementation on the torch
backend (it is implemented for JAX, with experimental TensorFlow support),
and `tf.distribute` is TensorFlow's, so multi-device training on torch is
out of scope here. If you write your own loop around
`torch.nn.parallel.DistributedDataParallel` (as in the keras.io guide
"Multi-GPU distributed training with PyTorch"), DDP averages the gradients
across processes before you call `optimizer.apply`, so the rule is the same:
`alpha = keras_snr.finite_dataset_alpha(per_process_batch * world_size, n)`.
On torch this guide runs the single-device part only.
"""

if BACKEND == "torch":
    print("torch backend: single-device run only (see above).")

"""
## Summary

- Use `alpha = keras_snr.finite_dataset_alpha(global_batch_size, n)`, with
  the global batch (the `batch_size` given to `fit()`), and multiply it by
  the gradient-accumulation steps if any (`gradient_accumulation_steps=`).
- `DataParallel` and `ModelParallel` on JAX and `MirroredStrategy` on
  TensorFlow need no change to SNRAdam: its slots follow each variable's
  layout or strategy, and the distributed run matches the single-device run
  to float32 rounding.
- `reduction="per_tensor"` stays correct under model parallelism: the sums
  that decide each tensor's gate are taken over the whole tensor.
"""
