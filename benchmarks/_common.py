"""Small helpers shared by the benchmark scripts (run them as scripts:
`python benchmarks/NAME.py`, which puts this folder on `sys.path`)."""

import json
import os
import statistics
import subprocess
import sys


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


def strip_options(argv, valued=(), flags=()):
    """`argv` without the options in `valued` (as `--x V` or `--x=V`) and
    the bare flags in `flags`: what a per-backend child process is given."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in valued:
            skip = True
        elif a in flags or any(a.startswith(n + "=") for n in valued):
            continue
        else:
            out.append(a)
    return out


def run_per_backend(script, backends, child_args, tag, env=None, capture_stderr=False,
                    backend_flag=None):
    """Run `script` once per backend in a fresh process; collect the JSON
    printed on lines starting with `tag`. Returns `(records, failed)`.

    `backend_flag` (e.g. "--backend") also passes the backend as an argument;
    with `capture_stderr` a failing child's stderr tail is reported, else its
    stderr streams through.
    """
    records, failed = [], []
    for backend in backends:
        child_env = dict(os.environ, KERAS_BACKEND=backend, **(env or {}))
        child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        flag = [backend_flag, backend] if backend_flag else []
        proc = subprocess.run(
            [sys.executable, script, *flag, *child_args], env=child_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE if capture_stderr else None,
            text=True,
        )
        got = [json.loads(line[len(tag):]) for line in proc.stdout.splitlines()
               if line.startswith(tag)]
        if proc.returncode != 0 or not got:
            failed.append(backend)
            tail = f"{proc.stderr[-3000:]}\n" if capture_stderr else ""
            sys.stderr.write(f"--- {backend} failed (exit {proc.returncode})\n{tail}")
        records += got
    return records, failed


def write_outputs(text, payload, markdown_out=None, json_out=None):
    """Write the table to `markdown_out` and `payload` (plus this process's
    arguments) as JSON to `json_out`, where given."""
    if markdown_out:
        with open(markdown_out, "w") as f:
            f.write(text + "\n")
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"argv": sys.argv[1:], **payload}, f, indent=1)
