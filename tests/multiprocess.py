"""Launch a few local worker processes of one Python script, safely.

Not a test file: `tests/test_multi_process.py` uses `launch()` to run real
multi-process training (jax.distributed, torch.distributed, TF's
MultiWorkerMirroredStrategy) on 127.0.0.1.

Each worker gets, in its environment,

- `RANK` (0 .. N-1) and `WORLD_SIZE` (N);
- `MASTER_ADDR=127.0.0.1` and `MASTER_PORT`: the coordinator's port
  (jax.distributed, torch.distributed);
- `WORKER_PORTS`: N comma-separated ports, one per worker (TensorFlow's
  `TF_CONFIG` names one address per worker);
- `OUT_DIR`: a folder where the workers write their results (.npz, .json)
  for the test to read.

Guarantees: a hard timeout after which every worker's process group is
killed; when one worker fails, the others (likely blocked in a collective
that will never complete) are killed after a short grace period; in every
case, no worker is left running when `launch()` returns or raises.
"""

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time

HOST = "127.0.0.1"
# Seconds the other workers get to finish once one worker has failed.
FAILURE_GRACE = 5.0
# Words in a worker's output meaning that a port was taken between our
# choosing it and the worker binding it (gRPC, gloo, the JAX coordinator).
ADDRESS_IN_USE = ("address already in use", "eaddrinuse", "address in use",
                  "failed to bind", "bind failed")


@dataclasses.dataclass
class Worker:
    rank: int
    returncode: int  # negative: killed by that signal
    stdout: str
    stderr: str
    killed: str  # why we killed it ("" if it exited by itself)


class WorkersFailed(AssertionError):
    """A worker exited non-zero or was killed; the message holds every
    worker's output."""


def free_ports(count):
    """`count` distinct ports that were free on 127.0.0.1 a moment ago.

    Each is found by binding a socket to port 0 (the kernel picks a free
    one) and closing it. All sockets stay open until all ports are picked,
    so the ports are distinct. Another program may still take one before a
    worker binds it; `launch()` retries once when that happens.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent():
    """In the worker, before exec (Linux): SIGKILL me if the launching
    process dies, even by SIGKILL, when no `finally` runs."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _kill_group(proc):
    """SIGKILL the worker's whole process group (it started its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run_once(script, nprocs, args, env, timeout, out_dir):
    ports = free_ports(nprocs)
    procs, logs, why = [], [], ""
    try:
        for rank in range(nprocs):
            worker_env = dict(os.environ)
            worker_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            worker_env.update(env or {})
            worker_env.update(
                RANK=str(rank),
                WORLD_SIZE=str(nprocs),
                MASTER_ADDR=HOST,
                MASTER_PORT=str(ports[0]),
                WORKER_PORTS=",".join(map(str, ports)),
                OUT_DIR=str(out_dir),
            )
            # Output to files, not pipes: a worker blocked on a full pipe
            # would look like a hang.
            out = open(os.path.join(out_dir, f"worker{rank}.stdout"), "w+")
            err = open(os.path.join(out_dir, f"worker{rank}.stderr"), "w+")
            logs.append((out, err))
            procs.append(subprocess.Popen(
                [sys.executable, str(script), *map(str, args)],
                env=worker_env, cwd=str(out_dir), stdout=out, stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed as one
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            ))
        deadline = time.monotonic() + timeout
        why = f"killed after the {timeout} s timeout"
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            if now > deadline:
                break
            if any(p.returncode not in (None, 0) for p in procs) and now + FAILURE_GRACE < deadline:
                # One failed: the rest may wait forever in a collective.
                deadline = now + FAILURE_GRACE
                why = "killed after another worker failed"
            time.sleep(0.1)
    finally:
        alive = [p.poll() is None for p in procs]
        for p in procs:  # also the groups of workers that exited: their children
            _kill_group(p)
        for p in procs:
            p.wait()
    workers = []
    for rank, (p, (out, err)) in enumerate(zip(procs, logs)):
        out.seek(0)
        err.seek(0)
        workers.append(Worker(rank, p.returncode, out.read(), err.read(),
                              why if alive[rank] else ""))
        out.close()
        err.close()
    return workers


def launch(script, nprocs=2, args=(), env=None, timeout=120, out_dir=None, check=True):
    """Run `nprocs` copies of `python script *args`; return their `Worker`s.

    `out_dir` (created if needed) is the workers' working directory and
    `OUT_DIR`. With `check`, raises `WorkersFailed` (an AssertionError, so
    pytest shows it as a failure) with every worker's output unless all
    exited with 0. Retries once, with new ports, if a worker reports an
    address already in use.
    """
    if out_dir is None:
        raise ValueError("pass out_dir= (e.g. pytest's tmp_path)")
    os.makedirs(out_dir, exist_ok=True)
    for attempt in range(2):
        workers = _run_once(script, nprocs, args, env, timeout, out_dir)
        failed = [w for w in workers if w.returncode != 0]
        port_clash = any(
            word in (w.stderr + w.stdout).lower() for w in failed for word in ADDRESS_IN_USE
        )
        if not (failed and port_clash and attempt == 0):
            break
    if check and failed:
        raise WorkersFailed(describe(workers))
    return workers


def describe(workers):
    """Every worker's exit status and the tail of its output."""
    parts = []
    for w in workers:
        status = w.killed or f"exit code {w.returncode}"
        parts.append(
            f"=== worker {w.rank}: {status}\n--- stdout\n{w.stdout[-3000:]}"
            f"\n--- stderr\n{w.stderr[-5000:]}"
        )
    return "\n".join(parts)
