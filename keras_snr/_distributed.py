"""What the callbacks need to agree across the processes of a multi-process
run (`docs/distributed.md`).

- JAX (`jax.distributed` with `keras.distribution.DataParallel`): `fit()`
  logs the loss of the global batch in every process; nothing to reduce.
- PyTorch (`torch.distributed`, gradients all-reduced by hooks or DDP):
  `fit()` logs each process's own loss, so the callbacks average it, and check
  once that the processes hold the same weights (they do not when gradients
  are not averaged, e.g. `fit()` beside a `DDP(model)` wrapper).
- TensorFlow: `fit()` under `MultiWorkerMirroredStrategy` fails inside Keras;
  under a strategy, `predict_on_batch` returns every replica's rows.
"""

import keras


def _torch_group():
    """`torch.distributed` if a process group of more than one process is
    initialised, else None."""
    if keras.backend.backend() != "torch":
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def gradients_may_differ():
    """Whether the run has several processes whose weights could drift apart
    unseen (torch.distributed; JAX and TensorFlow keep them in sync)."""
    return _torch_group() is not None


def process_index():
    """This process's index among the processes of the run (0 alone)."""
    dist = _torch_group()
    if dist is not None:
        return dist.get_rank()
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index()
    return 0


def _all_reduce(values, op):
    import torch

    dist = _torch_group()
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def mean_over_processes(value):
    """The mean of a Python float over the processes (itself alone)."""
    dist = _torch_group()
    if dist is None:
        return value
    return _all_reduce([value], dist.ReduceOp.SUM)[0] / dist.get_world_size()


def same_over_processes(value):
    """Whether a Python float is the same in every process (True alone)."""
    dist = _torch_group()
    if dist is None:
        return True
    high = _all_reduce([value], dist.ReduceOp.MAX)[0]
    low = _all_reduce([value], dist.ReduceOp.MIN)[0]
    return high == low


def warn_if_weights_differ(model):
    """Warn if the processes of a torch.distributed run hold different
    weights (a checksum compared across processes; nothing to do alone)."""
    if not gradients_may_differ():
        return
    import warnings

    import numpy as np

    checksum = float(sum(np.sum(np.asarray(keras.ops.convert_to_numpy(v.value), "float64")
                                * (i + 1)) for i, v in enumerate(model.trainable_weights)))
    if not same_over_processes(checksum):
        warnings.warn(
            "PopulationRiskEstimate: the processes of this run hold different weights after "
            "the first epoch: their gradients are not averaged (fit() beside a DDP(model) "
            "wrapper averages nothing); see docs/distributed.md.", stacklevel=4)


def local_rows(model, pred, rows):
    """`predict_on_batch`'s output for `rows` local examples: under a
    TensorFlow strategy with several replicas it holds every replica's rows
    (each predicted the same local batch), of which the first are kept."""
    if pred.shape[0] == rows or keras.backend.backend() != "tensorflow":
        return pred
    replicas = getattr(getattr(model, "distribute_strategy", None), "num_replicas_in_sync", 1)
    if replicas > 1 and pred.shape[0] == rows * replicas:
        return pred[:rows]
    return pred
