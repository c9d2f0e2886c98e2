"""
Title: Distributed training with SNRAdam
Author: keras_snr contributors
Date created: 2026/11/28
Last modified: 2026/12/07
Description: Data- and model-parallel training with SNRAdam in one process on JAX and TensorFlow, checked against a single-device run.
Accelerator: None
"""

"""
## Introduction

`keras_snr.SNRAdam` is a plain Keras optimizer, so it trains under Keras's
distribution APIs with no change to the model or to the optimizer: on JAX,
`keras.distribution.DataParallel` (replicate the model, split the batch)
and `keras.distribution.ModelParallel` (also split the variables, following
a `LayoutMap`); on TensorFlow, `tf.distribute.MirroredStrategy`.

The one thing to get right is **`alpha`**. On a finite training set of `n`
examples pass `alpha=keras_snr.finite_dataset_alpha(b, n)`, with `b` the
number of examples behind one update: SNRAdam then trains like AdamW. Under
data parallelism each device sees a share of the batch, but the gradients
are averaged across devices before the optimizer runs, so the optimizer,
and the noise statistic it keeps, see the **global** batch: the
`batch_size` you pass to `fit()`.

This guide runs on a CPU: JAX is asked for 4 simulated devices and
TensorFlow splits the CPU into 2 logical devices. On a machine with several
GPUs the same code runs on the GPUs. Each distributed run is compared with a
single-device run from the same initial weights and batches.
"""

"""
## Setup

The backend comes from `KERAS_BACKEND` (JAX by default). On JAX we ask XLA
for 4 host devices before JAX is imported (skipped if you set the flag
yourself). The guide runs as a script (`--quick` for a short smoke test)
and writes no files.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

parser = argparse.ArgumentParser(
    description="Data- and model-parallel training with SNRAdam (JAX: 4 simulated CPU "
    "devices; TensorFlow: MirroredStrategy on 2 logical CPUs), checked against a "
    "single-device run. Writes no files. Full run: 8,192 examples, 8 epochs per "
    "training run, about 15-20 s on a 2-core CPU (measured with JAX on a 2-core "
    "machine shared with other jobs, 2026/11/30).")
parser.add_argument("--quick", action="store_true",
                    help="smoke test: 512 examples, batch 64, 2 epochs, no per_tensor "
                    "ModelParallel comparison (about 6-10 s with JAX)")
args, _ = parser.parse_known_args()  # ignores --out-dir: no figures here
BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "jax" and "xla_force_host_platform_device_count" not in os.environ.get(
        "XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_snr  # noqa: E402

if BACKEND == "tensorflow":
    import tensorflow as tf

    # Two logical CPU devices, before TensorFlow creates its first tensor.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

"""
## Data, model and optimizer

A synthetic 8-class problem: a random two-layer "teacher" labels Gaussian
inputs, and 20 % of the labels are then replaced at random. `alpha` comes
from the global batch; the per-device batch would give a smaller `alpha`,
and a gate that opens far too easily.
"""

N = 512 if args.quick else 8192
GLOBAL_BATCH, EPOCHS = (64, 2) if args.quick else (256, 8)
FEATURES, CLASSES = 32, 8

rng = np.random.default_rng(0)
x = rng.normal(size=(N, FEATURES)).astype("float32")
teacher_1 = rng.normal(size=(FEATURES, 64)) / np.sqrt(FEATURES)
teacher_2 = rng.normal(size=(64, CLASSES)) / 8.0
y = np.argmax(np.tanh(x @ teacher_1) @ teacher_2, axis=1)
y = np.where(rng.random(N) < 0.2, rng.integers(0, CLASSES, N), y).astype("int32")

alpha = keras_snr.finite_dataset_alpha(GLOBAL_BATCH, N)
print(f"n = {N}, global batch {GLOBAL_BATCH}: alpha = {alpha:.5f} (from the per-device batch "
      f"of 4 devices, wrongly: {keras_snr.finite_dataset_alpha(GLOBAL_BATCH // 4, N):.5f})")

"""
A small MLP with named layers (the `LayoutMap` below refers to them). Every
run starts from the same initial weights and sees the same batches in the
same order (`shuffle=False`).
"""


def make_model():
    def dense(units, name, seed, activation=None):  # seeded: the same weights every time
        return keras.layers.Dense(units, activation, name=name,
                                  kernel_initializer=keras.initializers.GlorotUniform(seed))

    return keras.Sequential([keras.Input((FEATURES,)), dense(256, "hidden_1", 1, "relu"),
                             dense(256, "hidden_2", 2, "relu"), dense(CLASSES, "logits", 3)],
                            name="mlp")


INITIAL_WEIGHTS = make_model().get_weights()


def train(reduction="elementwise"):
    """Build, compile and fit one model under whatever distribution is active."""
    model = make_model()
    model.set_weights(INITIAL_WEIGHTS)
    model.compile(optimizer=keras_snr.SNRAdam(1e-3, alpha=alpha, reduction=reduction),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    return model, history.history["loss"][-1]


def compare(name, reference, distributed):
    (ref_model, ref_loss), (model, loss) = reference, distributed
    difference = max(float(np.max(np.abs(a - b)))
                     for a, b in zip(ref_model.get_weights(), model.get_weights()))
    print(f"{name}: final loss {loss:.6f} (single device {ref_loss:.6f}), "
          f"max |weight difference| {difference:.1e}")


"""
## The single-device reference

Every backend runs this part. A model built outside any distribution scope
lives on one device.
"""

single = train()
print(f"single device: final loss {single[1]:.6f}")

"""
## JAX: `DataParallel`

`DataParallel` replicates every variable, SNRAdam's slots (`momentum`,
`velocity`, `noise_variance`) included, on every device and splits each
batch along its first axis. JAX computes the gradient of the mean loss over
the global batch, so the update is the single-device update, up to the
order of floating-point additions.
"""

if BACKEND == "jax":
    devices = keras.distribution.list_devices()
    with keras.distribution.DataParallel(devices=devices).scope():
        compare(f"DataParallel on {len(devices)} devices", single, train())

"""
## JAX: `ModelParallel`

For models too large for one device, `ModelParallel` shards variables over
a `model` axis of a device mesh and the batch over a `batch` axis; here a
2 x 2 mesh. The `LayoutMap` splits the first hidden layer by columns and the
second by rows; variables it does not match are replicated. SNRAdam creates
each slot with its variable's layout, so the slots are sharded like the
weights and the update runs shard by shard. With `reduction="per_tensor"`
the gate needs sums over the *whole* tensor: XLA inserts the cross-device
sums itself, and the gate is the one of a single device.
"""

if BACKEND == "jax" and len(devices) % 2:
    print(f"ModelParallel on a 2-wide mesh needs an even number of devices; found {len(devices)}.")
elif BACKEND == "jax":
    mesh = keras.distribution.DeviceMesh(
        shape=(len(devices) // 2, 2), axis_names=("batch", "model"), devices=devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    # Keys are regular expressions matched against the whole variable path
    # ("mlp/hidden_1/kernel"), hence the leading ".*".
    layout_map[".*hidden_1/kernel"] = (None, "model")
    layout_map[".*hidden_1/bias"] = ("model",)
    layout_map[".*hidden_2/kernel"] = ("model", None)
    model_parallel = keras.distribution.ModelParallel(layout_map=layout_map,
                                                      batch_dim_name="batch")
    with model_parallel.scope():
        sharded = train()
    compare("ModelParallel", single, sharded)
    for variable in [sharded[0].get_layer("hidden_1").kernel, *sharded[0].optimizer.variables]:
        if variable.path.endswith(("hidden_1/kernel", "hidden_1_kernel_noise_variance")):
            print(f"  {variable.path}: sharded as {variable.value.sharding.spec}")
    if not args.quick:  # two more compilations
        single_per_tensor = train("per_tensor")
        with model_parallel.scope():
            compare("ModelParallel, per_tensor", single_per_tensor, train("per_tensor"))

"""
## TensorFlow: `MirroredStrategy`

Build and compile the model inside `strategy.scope()`; `fit()` then splits
each global batch across the replicas, and Keras sums the per-replica
gradients (of losses scaled by `1 / replicas`) before `SNRAdam.update_step`
runs, so the optimizer again sees the global-batch gradient. The slots are
mirrored variables, updated identically on every replica.
"""

if BACKEND == "tensorflow":
    strategy = tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")])
    with strategy.scope():
        compare(f"MirroredStrategy, {strategy.num_replicas_in_sync} replicas", single, train())

"""
## PyTorch

Keras's `keras.distribution` API has no PyTorch implementation, so on
PyTorch this guide runs the single-device part only. For data parallelism in
several processes, on every backend, see
[the multi-process guide](multi_process_training_with_snr_adam.py): the rule
for `alpha` is the same, with the global batch summed over processes.
"""

if BACKEND == "torch":
    print("torch backend: single-device run only.")

"""
## Conclusion

- Pass `alpha=keras_snr.finite_dataset_alpha(global_batch_size, n)`, with the
  global batch (the `batch_size` given to `fit()`), and
  `gradient_accumulation_steps=k` with gradient accumulation.
- `DataParallel` and `ModelParallel` on JAX and `MirroredStrategy` on
  TensorFlow need no change to SNRAdam: its slots follow each variable's
  layout or strategy, and `reduction="per_tensor"` stays correct under
  model parallelism.
- The weights match the single-device run to float32 rounding, which an
  Adam-type step can amplify over many steps on coordinates with almost no
  gradient; how far, and what the backends support in several processes,
  is in [distributed training](../docs/distributed.md).
"""
