"""SNRAdam in multi-process data-parallel training, with real processes.

Two worker processes on 127.0.0.1 (launched by `multiprocess.launch`), one
launch per backend, each process training on its half of every global
batch:

- JAX: `jax.distributed` + `keras.distribution.DataParallel` and `fit()`.
- PyTorch (gloo): a custom loop through `DistributedDataParallel`, and
  `fit()` with per-parameter hooks that all-reduce each gradient
  (`PopulationRiskEstimate` averages the loss each process logs); also
  `fit()` beside a DDP wrapper, which trains each process on its own
  gradients without an error from Keras (recorded, so we learn if that
  changes), and the estimate's warning about it.
- TensorFlow: a custom loop (`strategy.run` + `optimizer.apply`) under
  `MultiWorkerMirroredStrategy`; `fit()` under that strategy fails inside
  Keras today, for Keras's own AdamW too (recorded, so we learn when Keras
  fixes it).

Each worker writes its weights, `optimizer.variables` and logs to OUT_DIR;
rank 0 also trains the same model in one process on the global batches (the
reference). The tests check that every process ends bit-identical and that
the result matches the reference. The last tests check the launcher
(`tests/multiprocess.py`) itself: timeout, a failing worker, a port clash;
it does not depend on the backend, so they run in the JAX run only.

`guides/multi_process_training_with_snr_adam.py` runs the same recipes; it
is run in quick mode, on every backend, by `tests/test_guides.py`, which
picks up every guide.
"""

import json
import os

import numpy as np
import pytest

import multiprocess
from conftest import BACKEND
from conftest import only_on

# Every process must apply the same update, so their weights and slots must
# be equal bit for bit (gloo's and XLA's all-reduce hand every process the
# same sum).
#
# Against the one-process run, which differs only in the order of the
# float32 additions behind the gradient (two half-batch means averaged vs
# one full-batch mean), within 1e-6:
# - weights: absolute. An Adam-type step is normalised per coordinate, so
#   the rounding of a gradient reaches the weights as a change of the step,
#   which is at most about `lr` whatever the weight's size; relative to a
#   bias that has moved ~1e-3 from 0 it would be large (~1e-6) for nothing.
#   Measured: under 6e-8 (float32 spacing at the weights' ~0.5 magnitude).
# - optimizer slots: relative to each tensor's largest magnitude
#   (max |reference|). The velocity and noise variance are ~1e-4..1e-9, so an
#   absolute 1e-6 would accept anything; elementwise relative fails entries
#   near zero by cancellation, which carry the rounding of the larger terms
#   they came from. Measured: under 4e-7 (noise variance, JAX).
TOLERANCE = 1e-6
TIMEOUT = 150  # s per launch; the slowest takes ~40 s on a loaded 2-core CPU

COMMON = r'''
import json
import os

RANK = int(os.environ["RANK"])
WORLD_SIZE = int(os.environ["WORLD_SIZE"])
ADDRESS = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
OUT_DIR = os.environ["OUT_DIR"]

N, GLOBAL_BATCH, EPOCHS, FEATURES, CLASSES = 64, 16, 2, 8, 3
LOCAL_BATCH = GLOBAL_BATCH // WORLD_SIZE
STEPS = N // GLOBAL_BATCH
ARRAYS, RECORD = {}, {"rank": RANK}


def data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, N).astype("int32")
    return x, y


def shard(a):
    """This process's rows: its half of every global batch, in step order.
    Global batch k is rows [k * GLOBAL_BATCH, (k + 1) * GLOBAL_BATCH), as in
    the one-process run with shuffle=False."""
    return a.reshape(STEPS, WORLD_SIZE, LOCAL_BATCH, *a.shape[1:])[:, RANK].reshape(
        -1, *a.shape[1:]
    )


def build(optimizer=None):
    import keras
    import keras_snr

    # The same seed in every process, before the model is built: the same
    # initial weights everywhere (JAX's device_put asserts it).
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="tanh"),
        keras.layers.Dense(CLASSES),
    ])
    # alpha from the global batch: the optimizer sees the averaged gradient.
    alpha = keras_snr.finite_dataset_alpha(GLOBAL_BATCH, N)
    model.compile(
        optimizer or keras_snr.SNRAdam(0.01, rho=0.9, alpha=alpha),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def callbacks():
    import keras_snr

    x, y = data()
    return [
        keras_snr.GateLogger(),
        keras_snr.PopulationRiskEstimate(
            dataset_size=N, batch_size=GLOBAL_BATCH, x_train=x, y_train=y
        ),
    ]


def record(run, model, history=None):
    import keras

    for i, v in enumerate(model.weights):
        ARRAYS[f"{run}/weights/{i}"] = keras.ops.convert_to_numpy(v.value)
    for i, v in enumerate(model.optimizer.variables):
        ARRAYS[f"{run}/slots/{i}"] = keras.ops.convert_to_numpy(v.value)
    RECORD[run] = {
        "iterations": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "weights": [v.path for v in model.weights],
        "slots": [v.path for v in model.optimizer.variables],
        "logs": {
            k: [float(x) for x in v] for k, v in (history or {}).items()
            if k.startswith("gate_") or k in ("loss", "pop_risk", "pop_risk_reliable")
        },
    }


def reference(init):
    """Rank 0 only: the same training in one process, on the global batches."""
    if RANK == 0:
        x, y = data()
        model = build()
        model.set_weights(init)
        history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=EPOCHS,
                            shuffle=False, verbose=0, callbacks=callbacks())
        record("reference", model, history.history)


def finish():
    import numpy as np

    np.savez(os.path.join(OUT_DIR, f"rank{RANK}.npz"), **ARRAYS)
    with open(os.path.join(OUT_DIR, f"rank{RANK}.json"), "w") as f:
        json.dump(RECORD, f)
'''

JAX_WORKER = COMMON + r'''
import jax

# Before Keras is imported. JAX 0.10's CPU collectives default to gloo.
jax.distributed.initialize(ADDRESS, num_processes=WORLD_SIZE, process_id=RANK)

import keras

RECORD["processes"] = jax.process_count()
RECORD["devices"] = len(jax.devices())
x, y = data()
# auto_shard_dataset=False: each process passes its own rows (NumPy), and
# fit's batch_size is the per-process batch.
distribution = keras.distribution.DataParallel(
    devices=jax.devices(), auto_shard_dataset=False
)
with distribution.scope():
    model = build()
    init = model.get_weights()
    history = model.fit(shard(x), shard(y), batch_size=LOCAL_BATCH, epochs=EPOCHS,
                        shuffle=False, verbose=0, callbacks=callbacks())
record("jax_fit", model, history.history)
reference(init)
finish()
'''

TORCH_WORKER = COMMON + r'''
import torch
import torch.distributed as dist

dist.init_process_group("gloo", init_method=f"tcp://{ADDRESS}", rank=RANK,
                        world_size=WORLD_SIZE)

import keras
from torch.nn.parallel import DistributedDataParallel

RECORD["processes"] = dist.get_world_size()
x, y = data()
xs, ys = shard(x), shard(y)

# 1. A custom loop through DDP, which averages the gradients in backward().
model = build()
init = model.get_weights()
ddp = DistributedDataParallel(model)
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
for epoch in range(EPOCHS):
    for step in range(STEPS):
        rows = slice(step * LOCAL_BATCH, (step + 1) * LOCAL_BATCH)
        loss = loss_fn(torch.from_numpy(ys[rows]), ddp(torch.from_numpy(xs[rows])))
        model.zero_grad()
        loss.backward()
        variables = model.trainable_weights
        with torch.no_grad():
            model.optimizer.apply([v.value.grad for v in variables], variables)
record("torch_loop", model)


# 2. fit() with one hook per parameter, averaging its gradient across
# processes once backward() has accumulated it (before fit's apply).
def average_gradient(parameter):
    dist.all_reduce(parameter.grad)
    parameter.grad /= WORLD_SIZE


model = build()
model.set_weights(init)
for v in model.trainable_weights:
    v.value.register_post_accumulate_grad_hook(average_gradient)
history = model.fit(xs, ys, batch_size=LOCAL_BATCH, epochs=EPOCHS, shuffle=False,
                    verbose=0, callbacks=callbacks())
record("torch_fit_hooks", model, history.history)


# 3. fit() on a model that is also wrapped in DDP: fit calls the model, not
# the wrapper, so nothing is averaged. Recorded to show what goes wrong, and
# that PopulationRiskEstimate says so after the first epoch.
import warnings

model = build()
model.set_weights(init)
unused_wrapper = DistributedDataParallel(model)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model.fit(xs, ys, batch_size=LOCAL_BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=callbacks())
record("torch_fit_beside_ddp", model)
RECORD["beside_ddp_warnings"] = [str(w.message) for w in caught]

# The reference trains in one process: outside the process group, as the
# callbacks' collectives need every process to take part.
dist.destroy_process_group()
reference(init)
finish()
'''

TF_WORKER = COMMON + r'''
import traceback

ports = os.environ["WORKER_PORTS"].split(",")
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"{os.environ['MASTER_ADDR']}:{p}" for p in ports]},
    "task": {"type": "worker", "index": RANK},
})
import tensorflow as tf

# First thing, before any other TensorFlow op.
strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras

RECORD["processes"] = strategy.num_replicas_in_sync
x, y = data()
xs, ys = shard(x), shard(y)

# 1. A custom loop under the strategy: strategy.run + optimizer.apply.
with strategy.scope():
    model = build()
    # Built here, in cross-replica context, not in the first apply.
    model.optimizer.build(model.trainable_variables)
init = model.get_weights()
per_example_loss = keras.losses.SparseCategoricalCrossentropy(
    from_logits=True, reduction=None
)


@tf.function
def train_step(xb, yb):
    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            # Scaled by the global batch: the all-reduce inside apply()
            # sums the replicas' gradients into the global-batch mean.
            loss = tf.nn.compute_average_loss(
                per_example_loss(yb, model(xb, training=True)),
                global_batch_size=GLOBAL_BATCH,
            )
        variables = model.trainable_variables
        model.optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    return strategy.reduce("SUM", strategy.run(replica_step, args=(xb, yb)), axis=None)


for epoch in range(EPOCHS):
    for step in range(STEPS):
        rows = slice(step * LOCAL_BATCH, (step + 1) * LOCAL_BATCH)
        train_step(xs[rows], ys[rows])
record("tf_loop", model)
# Under the strategy predict_on_batch returns every worker's rows, of which
# PopulationRiskEstimate keeps this process's.
import numpy as np
from keras_snr._distributed import local_rows

pred = np.asarray(model.predict_on_batch(x[:24]))
RECORD["predict_rows"] = [int(pred.shape[0]), int(local_rows(model, pred, 24).shape[0])]
reference(init)


# 2. fit() under the strategy, with SNRAdam and with Keras's AdamW.
def try_fit(optimizer):
    keras.config.disable_traceback_filtering()  # keep Keras's own frames
    with strategy.scope():
        model = build(optimizer)
    try:
        model.fit(xs, ys, batch_size=LOCAL_BATCH, epochs=1, shuffle=False, verbose=0)
        return {"error": None}
    except Exception as e:
        return {
            "error": type(e).__name__,
            "message": str(e)[:300],
            "frames": [frame.name for frame in traceback.extract_tb(e.__traceback__)],
        }


import keras_snr

RECORD["fit_snr_adam"] = try_fit(keras_snr.SNRAdam(0.01))
RECORD["fit_adamw"] = try_fit(keras.optimizers.AdamW(0.01))
finish()
'''

WORKERS = {"jax": JAX_WORKER, "torch": TORCH_WORKER, "tensorflow": TF_WORKER}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Launch the two workers of this backend once; [rank 0, rank 1] results,
    each {"record": ..., "arrays": {name: array}}."""
    out_dir = tmp_path_factory.mktemp(f"multi_process_{BACKEND}")
    script = out_dir / "worker.py"
    script.write_text(WORKERS[BACKEND])
    multiprocess.launch(script, nprocs=2, timeout=TIMEOUT, out_dir=out_dir)
    ranks = []
    for rank in range(2):
        with open(out_dir / f"rank{rank}.json") as f:
            record = json.load(f)
        with np.load(out_dir / f"rank{rank}.npz") as arrays:
            ranks.append({"record": record, "arrays": dict(arrays)})
    return ranks


def _state(result, run):
    """[(name, array)] of the run's weights, then its optimizer variables."""
    record, arrays = result["record"][run], result["arrays"]
    return [
        (f"{kind}: {path}", arrays[f"{run}/{kind}/{i}"])
        for kind in ("weights", "slots")
        for i, path in enumerate(record[kind])
    ]


def _max_difference(state, reference, kind):
    """Largest difference of the `kind` ("weights" or "slots") tensors, as
    (difference, tensor name): absolute for weights, relative to the
    tensor's largest magnitude for slots (see TOLERANCE)."""
    assert len(state) == len(reference)
    worst = (0.0, None)
    for (name, a), (_, b) in zip(state, reference):  # paths differ: dense_2 ...
        assert a.shape == b.shape, (name, a.shape, b.shape)
        if not name.startswith(kind) or not np.issubdtype(b.dtype, np.floating):
            continue
        scale = 1.0 if kind == "weights" else float(np.max(np.abs(b))) or 1.0
        difference = float(np.max(np.abs(a.astype("float64") - b))) / scale
        worst = max(worst, (difference, name), key=lambda w: w[0])
    return worst


RUNS = [
    pytest.param("jax_fit", marks=only_on("jax")),
    pytest.param("torch_loop", marks=only_on("torch")),
    pytest.param("torch_fit_hooks", marks=only_on("torch")),
    pytest.param("tf_loop", marks=only_on("tensorflow")),
]
FIT_RUNS = [
    pytest.param("jax_fit", marks=only_on("jax")),
    pytest.param("torch_fit_hooks", marks=only_on("torch")),
]


def test_two_processes_took_part(results):
    for result in results:
        assert result["record"]["processes"] == 2, result["record"]
    if BACKEND == "jax":
        assert results[0]["record"]["devices"] == 2


@pytest.mark.parametrize("run", RUNS)
def test_processes_end_bit_identical(results, run):
    state_0, state_1 = (_state(result, run) for result in results)
    assert len(state_0) == 4 + 3 + 3 * 4  # weights; iterations, lr, layout; slots
    for (name, a), (_, b) in zip(state_0, state_1):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (
            f"{run}: {name} differs across processes by "
            f"{np.max(np.abs(a.astype('float64') - b)):.3g}"
        )


@pytest.mark.parametrize("run", RUNS)
def test_matches_one_process_run_on_the_global_batch(results, run):
    state = _state(results[0], run)
    reference = _state(results[0], "reference")
    # One update per global batch, in both.
    assert results[0]["record"][run]["iterations"] == 2 * 4
    assert results[0]["record"]["reference"]["iterations"] == 2 * 4
    for kind in ("weights", "slots"):
        difference, name = _max_difference(state, reference, kind)
        assert name is not None
        assert difference <= TOLERANCE, f"{run}: {name} differs by {difference:.3g}"


@pytest.mark.parametrize("run", FIT_RUNS)
def test_gate_logger_logs_identical_across_processes(results, run):
    logs = [
        {k: v for k, v in r["record"][run]["logs"].items() if k.startswith("gate_")}
        for r in results
    ]
    assert logs[0], "GateLogger logged nothing"
    assert logs[0] == logs[1]


POP_RISK_RUNS = [
    pytest.param("jax_fit", marks=only_on("jax")),
    # torch fit() logs each process's own loss; the estimate averages it
    pytest.param("torch_fit_hooks", marks=only_on("torch")),
]


@pytest.mark.parametrize("run", POP_RISK_RUNS)
def test_population_risk_logs_identical_across_processes(results, run):
    logs = [
        {k: r["record"][run]["logs"][k] for k in ("pop_risk", "pop_risk_reliable")}
        for r in results
    ]
    assert len(logs[0]["pop_risk"]) == 2
    assert logs[0] == logs[1]
    # And they are the one-process run's: the loss is the global batch's.
    reference = results[0]["record"]["reference"]["logs"]
    np.testing.assert_allclose(logs[0]["pop_risk"], reference["pop_risk"], rtol=1e-5)
    assert logs[0]["pop_risk_reliable"] == reference["pop_risk_reliable"]


@only_on("torch")
def test_torch_fit_beside_ddp_wrapper_trains_each_process_alone(results):
    """Today's behaviour, the failure mode the guide warns about: no error,
    and the processes drift apart. If this fails, Keras's torch fit() has
    learnt to average gradients across processes."""
    state_0, state_1 = (_state(r, "torch_fit_beside_ddp") for r in results)
    weights_0 = np.concatenate([a.ravel() for n, a in state_0 if n.startswith("weights")])
    weights_1 = np.concatenate([a.ravel() for n, a in state_1 if n.startswith("weights")])
    assert np.max(np.abs(weights_0 - weights_1)) > 1e-3
    for r in results:  # and PopulationRiskEstimate said so, in every process
        assert any("hold different weights" in m for m in r["record"]["beside_ddp_warnings"])


@only_on("tensorflow")
def test_tf_predict_on_batch_rows_are_reduced_to_the_local_batch(results):
    """Keras 3.15 under MultiWorkerMirroredStrategy: `predict_on_batch` of
    24 rows returns both workers' 48; the callbacks keep the local 24."""
    for r in results:
        assert r["record"]["predict_rows"] == [48, 24]


@only_on("tensorflow")
@pytest.mark.parametrize("optimizer", ["fit_snr_adam", "fit_adamw"])
def test_tf_fit_under_multi_worker_strategy_fails_today(results, optimizer):
    """Keras 3.15's TF fit() cannot take a MultiWorkerMirroredStrategy
    batch: `_maybe_symbolic_build` passes the per-replica batch to
    `strategy.reduce`, which tries to make a tensor of it (upstream:
    keras-team/keras#20585). Fails the same with Keras's AdamW, so not
    SNRAdam's doing. If this test fails because fit() works, add a fit test
    to RUNS and FIT_RUNS, and update the guide."""
    for result in results:
        outcome = result["record"][optimizer]
        assert outcome["error"] == "ValueError", outcome
        assert "PerReplica" in outcome["message"], outcome
        assert "_maybe_symbolic_build" in outcome["frames"], outcome


# ------------------------------------------------- the launcher itself
# Backend-independent, a few seconds: plain Python workers, no Keras.

SLEEPER = r'''
import os, subprocess, sys, time

out = os.environ["OUT_DIR"]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.path.join(out, "pids" + os.environ["RANK"]), "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
if os.environ["RANK"] == os.environ.get("FAIL_RANK"):
    while not all(os.path.exists(os.path.join(out, f"pids{r}")) for r in range(2)):
        time.sleep(0.05)  # fail once every pid is on record
    sys.exit(3)
time.sleep(600)
'''


def _running(pid):
    """Whether `pid` is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _assert_all_gone(out_dir):
    import time

    pids = [int(p) for rank in range(2) for p in (out_dir / f"pids{rank}").read_text().split()]
    deadline = time.monotonic() + 10  # orphaned grandchildren are reaped by init
    while any(map(_running, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _running(pid)], "a worker or its child survived"


linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc (Linux)")


@only_on("jax")  # the launcher is the same for every backend
@linux_only
def test_launch_kills_every_worker_and_child_after_the_timeout(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    with pytest.raises(multiprocess.WorkersFailed, match="killed after the 3 s timeout"):
        multiprocess.launch(script, timeout=3, out_dir=tmp_path / "out")
    _assert_all_gone(tmp_path / "out")


@only_on("jax")
@linux_only
def test_launch_stops_the_others_when_one_worker_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(multiprocess, "FAILURE_GRACE", 0.5)
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    with pytest.raises(multiprocess.WorkersFailed) as failure:
        multiprocess.launch(script, timeout=100, env={"FAIL_RANK": "0"},
                            out_dir=tmp_path / "out")
    assert "worker 0: exit code 3" in str(failure.value)
    assert "worker 1: killed after another worker failed" in str(failure.value)
    _assert_all_gone(tmp_path / "out")


@only_on("jax")
def test_launch_retries_once_when_a_port_was_taken(tmp_path):
    script = tmp_path / "clash.py"
    script.write_text(r'''
import os, sys

out = os.environ["OUT_DIR"]
with open(os.path.join(out, "attempts" + os.environ["RANK"]), "a") as f:
    f.write(os.environ["WORKER_PORTS"] + "\n")
marker = os.path.join(out, "failed" + os.environ["RANK"])
if not os.path.exists(marker):
    open(marker, "w").close()
    sys.exit("gloo: bind: Address already in use")
''')
    workers = multiprocess.launch(script, timeout=60, out_dir=tmp_path / "out")
    assert [w.returncode for w in workers] == [0, 0]
    for rank in range(2):
        assert len((tmp_path / "out" / f"attempts{rank}").read_text().split()) == 2
