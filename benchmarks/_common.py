"""Small helpers shared by the benchmark scripts (run them as scripts:
`python benchmarks/NAME.py`, which puts this folder on `sys.path`)."""

import os
import statistics


def set_threads(n):
    """Limit intra-op CPU threads; call before the backend is imported."""
    if not n:
        return
    os.environ["OMP_NUM_THREADS"] = str(n)
    flags = os.environ.get("XLA_FLAGS", "")
    if n == 1:
        flags += " --xla_cpu_multi_thread_eigen=false"
    os.environ["XLA_FLAGS"] = (flags + f" intra_op_parallelism_threads={n}").strip()
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "torch":
        import torch

        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # only settable before torch's first parallel work
            pass
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)


def median(xs):
    return statistics.median(xs)
