"""
Title: Multi-process training with SNRAdam
Author: keras_snr contributors
Date created: 2026/12/07
Last modified: 2026/12/07
Description: Data-parallel training with SNRAdam in several processes on JAX, PyTorch and TensorFlow, checked against a one-process run.
Accelerator: None
"""

"""
## Introduction

In data-parallel training each process holds the whole model, trains on its
share of every global batch, and the processes average their gradients
before each update, so that all apply the same update. `keras_snr.SNRAdam`
needs nothing special for this, but each framework averages in its own way:

- **JAX**: `fit()` under `keras.distribution.DataParallel`.
- **PyTorch**: a custom loop through `DistributedDataParallel` (DDP), or
  `fit()` with gradient-averaging hooks. (`fit()` on a model that is also
  wrapped in DDP raises nothing and averages nothing.)
- **TensorFlow**: a custom loop under `MultiWorkerMirroredStrategy`
  (`fit()` under that strategy fails inside Keras today).

**`alpha` comes from the global batch**: SNRAdam sees the averaged gradient
of `global_batch = per_process_batch * processes` examples, so use
`keras_snr.finite_dataset_alpha(global_batch, n)`, and give
`PopulationRiskEstimate` `batch_size=global_batch`.

This script runs the current backend's recipe in 2 processes (on the CPU,
or one GPU each where there are 2 or more) and compares it with a
one-process run. Run plainly, it is the launcher: it starts 2 copies of
itself with the environment `torchrun` would set (`RANK`, `WORLD_SIZE`,
`MASTER_ADDR`, `MASTER_PORT`). A copy that finds `RANK` set is a worker; it
starts its framework's distributed runtime first, before Keras is imported.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
BACKEND = os.environ["KERAS_BACKEND"]

parser = argparse.ArgumentParser(
    description="Data-parallel SNRAdam training in 2 local processes, checked "
    "against a one-process run. Writes files only to a temporary folder, "
    "which it removes. Full run: 2,048 examples, 4 epochs, on a 2-core CPU "
    "about 50-60 s with JAX or TensorFlow and 110 s with PyTorch (measured "
    "on a 2-core machine shared with other jobs, 2026/12/07).",
)
parser.add_argument("--quick", action="store_true",
                    help="smoke test: 256 examples, 2 epochs (about 40-60 s, mostly imports)")
args, _ = parser.parse_known_args()  # ignores --out-dir: no figures here

WORKER = "RANK" in os.environ
if WORKER:
    RANK, WORLD_SIZE = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    ADDRESS = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    if BACKEND == "jax":
        import jax

        # Before Keras is imported. On CPU, JAX's collectives use gloo.
        jax.distributed.initialize(ADDRESS, num_processes=WORLD_SIZE, process_id=RANK)
    elif BACKEND == "torch":
        import torch
        import torch.distributed as dist

        dist.init_process_group(
            "nccl" if torch.cuda.is_available() else "gloo",
            init_method=f"tcp://{ADDRESS}", rank=RANK, world_size=WORLD_SIZE,
        )
    elif BACKEND == "tensorflow":
        # One address per worker; the strategy must exist before any op.
        hosts = [f"{os.environ['MASTER_ADDR']}:{p}"
                 for p in os.environ["WORKER_PORTS"].split(",")]
        os.environ["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": RANK}}
        )
        import tensorflow as tf

        strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_snr  # noqa: E402

"""
## Data, model and optimizer

A synthetic 8-class problem with 20 % of the labels flipped. `shard` gives
each process its half of every global batch, in order, so that the
processes together see what one process sees with `shuffle=False`.
"""

N = 256 if args.quick else 2048
GLOBAL_BATCH, EPOCHS, PROCESSES = 32, 2 if args.quick else 4, 2
LOCAL_BATCH, STEPS = GLOBAL_BATCH // PROCESSES, N // GLOBAL_BATCH

rng = np.random.default_rng(0)
x = rng.normal(size=(N, 32)).astype("float32")
y = np.argmax(np.tanh(x @ rng.normal(size=(32, 64))) @ rng.normal(size=(64, 8)), 1)
y = np.where(rng.random(N) < 0.2, rng.integers(0, 8, N), y).astype("int32")
ALPHA = keras_snr.finite_dataset_alpha(GLOBAL_BATCH, N)  # the global batch


def shard(a, rank):
    return a.reshape(STEPS, PROCESSES, LOCAL_BATCH, -1)[:, rank].reshape(-1, *a.shape[1:])


def make_model():
    # The same seed in every process, before building: the same initial
    # weights everywhere (JAX refuses replicas that differ).
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(8)])
    model.compile(keras_snr.SNRAdam(1e-3, alpha=ALPHA),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def snr_callbacks():
    return [keras_snr.GateLogger(), keras_snr.PopulationRiskEstimate(
        dataset_size=N, batch_size=GLOBAL_BATCH, x_train=x, y_train=y)]


"""
## JAX: `fit()` under `DataParallel`

JAX sees every process's devices as one mesh. With
`auto_shard_dataset=False` each process passes its own rows and `fit`'s
`batch_size` is the per-process batch. JAX computes the global batch's mean
loss and its gradient, so the logs (`loss`, `pop_risk`, the gate) are the
same in every process. Give every process the same `x_train`: JAX treats it
as one replicated array.
"""


def train_jax(rank):
    distribution = keras.distribution.DataParallel(
        devices=jax.devices(), auto_shard_dataset=False)
    with distribution.scope():
        model = make_model()
        history = model.fit(shard(x, rank), shard(y, rank), batch_size=LOCAL_BATCH,
                            epochs=EPOCHS, shuffle=False, verbose=0,
                            callbacks=snr_callbacks())
    return {"jax_fit": (model, history.history)}


"""
## PyTorch: a loop through DDP, or `fit()` with hooks

In a custom loop, call the model through DDP: `backward()` then leaves the
averaged gradient in each parameter's `.grad`, for `optimizer.apply`.

`fit()` calls the Keras model itself, never a DDP wrapper around it: each
process silently trains on its own gradients and the processes drift
apart. Instead, give every parameter a hook that averages its gradient once
`backward()` has accumulated it (one all-reduce per parameter; DDP's
buckets are faster for large models; a `keras.layers.TorchModuleWrapper`
around `DDP(torch_module)` works too). The epoch logs then still hold each
process's own loss; `PopulationRiskEstimate` averages it over the processes
(so every process reads the same estimate and stops at the same epoch), and
warns after the first epoch if the processes hold different weights, which
is what `fit()` beside a DDP wrapper leads to.
"""


def average_gradient(parameter):  # a hook, run after backward() accumulates
    dist.all_reduce(parameter.grad)
    parameter.grad /= WORLD_SIZE


def train_torch(rank):
    xs, ys = shard(x, rank), shard(y, rank)
    loop_model = make_model()
    ddp = torch.nn.parallel.DistributedDataParallel(loop_model)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for _ in range(EPOCHS):
        for step in range(STEPS):
            rows = slice(step * LOCAL_BATCH, (step + 1) * LOCAL_BATCH)
            loss = loss_fn(ys[rows], ddp(xs[rows]))
            loop_model.zero_grad()
            loss.backward()  # DDP averages the gradients here
            variables = loop_model.trainable_weights
            with torch.no_grad():
                loop_model.optimizer.apply([v.value.grad for v in variables], variables)

    fit_model = make_model()
    for variable in fit_model.trainable_weights:
        variable.value.register_post_accumulate_grad_hook(average_gradient)
    history = fit_model.fit(
        xs, ys, batch_size=LOCAL_BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
        callbacks=snr_callbacks())
    return {"torch_loop": (loop_model, {}), "torch_fit": (fit_model, history.history)}


"""
## TensorFlow: a custom loop under `MultiWorkerMirroredStrategy`

`fit()` under this strategy fails inside Keras today, with Keras's own
optimizers too (`ValueError: Attempt to convert a value (PerReplica:...)`).
A custom loop works: build the model and the optimizer in the strategy's
scope, scale each replica's loss by the *global* batch
(`tf.nn.compute_average_loss`), and call `optimizer.apply` inside
`strategy.run`, which sums the replicas' gradients into the global-batch
mean. No callbacks run here; `gate_summary()` reads the gate.
"""


def train_tensorflow(rank):
    with strategy.scope():
        model = make_model()
        model.optimizer.build(model.trainable_variables)
    per_example_loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=None)

    @tf.function
    def train_step(xb, yb):
        def replica_step(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.nn.compute_average_loss(
                    per_example_loss(yb, model(xb, training=True)),
                    global_batch_size=GLOBAL_BATCH)
            variables = model.trainable_variables
            model.optimizer.apply(tape.gradient(loss, variables), variables)
            return loss

        return strategy.reduce("SUM", strategy.run(replica_step, args=(xb, yb)), axis=None)

    xs, ys = shard(x, rank), shard(y, rank)
    logs = {"loss": [], "gate_mean": []}
    for _ in range(EPOCHS):
        rows = [slice(s * LOCAL_BATCH, (s + 1) * LOCAL_BATCH) for s in range(STEPS)]
        logs["loss"].append(np.mean([float(train_step(xs[r], ys[r])) for r in rows]))
        logs["gate_mean"].append(float(model.optimizer.gate_summary()["gate_mean"]))
    return {"tf_loop": (model, logs)}


"""
## Launching, and checking the result

A worker saves its weights and logs for the launcher. The launcher picks
free ports (bind to port 0, read it, close; should another program take one
meanwhile, run again), starts each worker in its own process group, and
kills every group still running when one worker fails (the others would
wait forever in a collective) or after a timeout. Then it trains the
reference in one process and compares: the processes should agree exactly,
and with the reference to float32 rounding.
"""

if WORKER:
    train = {"jax": train_jax, "torch": train_torch, "tensorflow": train_tensorflow}
    for name, (model, logs) in train[BACKEND](RANK).items():
        np.savez(os.path.join(os.environ["RESULTS_DIR"], f"{name}.{RANK}.npz"),
                 *model.get_weights(), **{f"log_{k}": v for k, v in logs.items()})
    sys.exit(0)


def launch(results_dir, timeout=600):
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(PROCESSES)]
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    gpus = shutil.which("nvidia-smi") and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True, text=True).stdout.count("GPU ")
    procs = []
    try:
        for rank in range(PROCESSES):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(PROCESSES),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]),
                       WORKER_PORTS=",".join(map(str, ports)), RESULTS_DIR=results_dir,
                       CUDA_VISIBLE_DEVICES=str(rank) if (gpus or 0) >= PROCESSES else "")
            procs.append(subprocess.Popen([sys.executable, *sys.argv], env=env,
                                          start_new_session=True))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() for p in procs):  # one failed
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    if any(p.returncode for p in procs):
        sys.exit(f"a worker failed: exit codes {[p.returncode for p in procs]}")


results_dir = tempfile.mkdtemp(prefix="multi_process_training-")
launch(results_dir)
reference = make_model()
history = reference.fit(x, y, batch_size=GLOBAL_BATCH, epochs=EPOCHS, shuffle=False,
                        verbose=0, callbacks=snr_callbacks()).history
print(f"{BACKEND}, {PROCESSES} processes, alpha = {ALPHA:.4f}. One process: final "
      f"loss {history['loss'][-1]:.6f}, pop_risk {history['pop_risk'][-1]:.6f}")
for name in sorted({f.split(".")[0] for f in os.listdir(results_dir)}):
    runs = [dict(np.load(os.path.join(results_dir, f"{name}.{r}.npz")))
            for r in range(PROCESSES)]
    weights = [[run[f"arr_{i}"] for i in range(len(reference.weights))] for run in runs]
    across = max(np.max(np.abs(a - b)) for a, b in zip(*weights))
    vs_one = max(np.max(np.abs(a - b)) for a, b in zip(weights[0], reference.get_weights()))
    print(f"{name}: max |weight difference| across processes {across:.1e}, "
          f"vs one process {vs_one:.1e}")
    for key in [k for k in runs[0] if k.startswith("log_")]:
        print(f"  final {key[4:]} per process: {[round(float(r[key][-1]), 6) for r in runs]}")
shutil.rmtree(results_dir)

"""
## Conclusion

- `alpha = keras_snr.finite_dataset_alpha(global_batch, n)`, and
  `PopulationRiskEstimate(batch_size=global_batch, ...)`.
- JAX: initialise `jax.distributed` before importing Keras, seed before
  building, `DataParallel(auto_shard_dataset=False)` with per-process
  arrays; `fit()` and the callbacks then work as on one device.
- PyTorch: average the gradients yourself (DDP in a custom loop, or hooks
  under `fit()`); `PopulationRiskEstimate` averages the logged loss and
  warns when the processes' weights differ. Give every process the same
  `x_train` and `y_train`.
- TensorFlow: a custom loop under `MultiWorkerMirroredStrategy`, the loss
  scaled by the global batch; `fit()` does not work there yet.
"""
