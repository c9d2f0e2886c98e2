"""Optimizer apply step on large float32 models: SNRAdam against Adam, AdamW
and a plain copy, on the JAX and PyTorch backends (GPU or CPU).

Times the optimizer's apply step alone (gradients precomputed, no forward or
backward pass) on "models" made of a few large Dense-kernel-like float32
variables whose total size is given by `--sizes`, the way Keras `fit()` runs
the step on each backend:

- JAX: `jax.jit(optimizer.stateless_apply, donate_argnums=(opt_vars,
  train_vars))`, then `jax.block_until_ready` (as in Keras's JAX trainer).
- PyTorch: eager `optimizer.apply(grads, vars)` inside `torch.no_grad()`
  (how Keras's torch trainer runs it), then `torch.cuda.synchronize()` on a
  GPU (CPU kernels are synchronous).

Arms, all with the same decoupled weight decay (`--weight-decay`) and learning
rate:

- `keras Adam`: `keras.optimizers.Adam(weight_decay=wd)` (i.e. AdamW).
- `SNRAdam <gate> <reduction>` for every gate (snr, soft, hard, None) and
  reduction (elementwise, per_tensor).
- torch only: `SNRAdam snr elementwise, foreach kernels` (the eager
  multi-tensor update, `KERAS_SNR_TORCH_COMPILE=0`; where `fused=True` does
  not compile, the SNRAdam arms run this too); `SNRAdam snr elementwise,
  generic path` (the per-variable `update_step` that Keras runs for any
  optimizer subclass; `fused=False`); a hand-written in-place SNR-Adam step
  under `torch.compile` (what a fused kernel achieves); and
  `torch.optim.AdamW(fused=True)` (falls back to `foreach=True` where fused
  is unsupported; the table says which). On CUDA, `fused=True` compiles the
  update (`--torch-compile-cpu` does so on the CPU too): the table gives
  each arm's first step (compiling included) and how the update ran, and the
  JSON how many graphs dynamo compiled during the timed steps (0: no
  recompilation).
- JAX only: a hand-written `jax.jit` SNR-Adam step in two forms (`g - m` from the old
  momentum, which makes XLA copy the donated momentum buffer, and from the
  new one); and `optax.adamw`, jitted with its state and parameters donated.
- `copy`: a device-to-device copy of the same number of float32 values, the
  physical reference (8 B/param: read + write).

Achieved bandwidth counts the minimum traffic of each rule: 28 B/param for
Adam/AdamW (read w, g, m, v; write w, m, v), 36 B/param for SNRAdam (plus
read and write of the noise slot s), 8 B/param for the copy. `per_tensor`
needs a reduction pass before the update, so its true traffic is higher (up
to 44 B/param); the table still counts 36 so that "GB/s" compares the same
work. The last column is the ratio of median step times to Keras Adam on the
same backend and size.

An arm that fails to build (e.g. `torch.compile` without a compiler) is
reported as failed and the others still run.

Arms are interleaved in rounds (shuffled order each round) when all of them
fit in memory at once (`--interleave auto`), otherwise run one after the
other (each arm built, warmed up, timed, freed). The median of at least
`--steps` timed steps per arm is reported, after `--warmup` untimed ones.

Usage:
    # GPU (defaults 10M,100M,1B), both backends, one table + JSON:
    python benchmarks/gpu_step.py --out gpu_step.json
    # CPU:
    python benchmarks/gpu_step.py --sizes 1M,10M --out /tmp/gpu_step_cpu.json
    # one backend, in this process:
    KERAS_BACKEND=jax python benchmarks/gpu_step.py --backend jax --sizes 1M
"""

import argparse
import gc
import json
import math
import os
import platform
import random
import sys
import time

from _common import median, run_per_backend, strip_options, write_outputs  # noqa: E402  (benchmarks/ is on sys.path)

BACKENDS = ("jax", "torch")
GATES = ("snr", "soft", "hard", None)
REDUCTIONS = ("elementwise", "per_tensor")
BYTES_PER_PARAM = {"adam": 28, "snr": 36, "copy": 8}
_JSON_TAG = "GPU_STEP_JSON "
# glibc: serve large allocations from the heap and never give it back, so a
# freed temporary's pages are reused instead of being unmapped and faulted in
# again on the next step (only matters for CPU runs).
MALLOC_CACHE_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(2**32),
    "MALLOC_TRIM_THRESHOLD_": str(2**32),
    "MALLOC_TOP_PAD_": str(2**30),
}


def parse_size(text):
    text = text.strip().upper()
    scale = {"K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9}.get(text[-1:], None)
    if scale is None:
        return int(float(text))
    return int(float(text[:-1]) * scale)


def size_label(n):
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            value = n / div
            return (f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}") + suffix
    return str(n)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="all",
                   help="'jax', 'torch', or 'all' (default: each of jax and "
                        "torch in its own subprocess, one merged table)")
    p.add_argument("--sizes", default=None,
                   help="comma-separated total parameter counts, e.g. "
                        "1M,10M,100M (default 10M,100M,1B on a GPU, 1M,10M on CPU)")
    p.add_argument("--n-vars", type=int, default=8,
                   help="number of variables the parameters are split into (default 8)")
    p.add_argument("--cols", type=int, default=4096,
                   help="second dimension of each kernel-like variable (default 4096)")
    p.add_argument("--steps", type=int, default=20,
                   help="timed steps per arm, at least (default 20)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps per arm first, compilation included (default 3)")
    p.add_argument("--rounds", type=int, default=5,
                   help="interleaved rounds when interleaving (default 5)")
    p.add_argument("--interleave", default="auto", choices=("auto", "on", "off"),
                   help="keep all arms in memory and interleave them (auto: "
                        "when the estimate fits --mem-budget-gb)")
    p.add_argument("--mem-budget-gb", type=float, default=None,
                   help="memory the arms may use at once (default: 80%% of free "
                        "GPU memory, or 45%% of available host memory on CPU)")
    p.add_argument("--arms", default=None,
                   help="comma-separated subset of arm keys (see --list-arms)")
    p.add_argument("--list-arms", action="store_true")
    p.add_argument("--weight-decay", type=float, default=0.01,
                   help="decoupled weight decay on every arm (default 0.01, "
                        "SNRAdam's default; 0 disables it)")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--out", default=None, help="write all results as JSON here")
    p.add_argument("--markdown-out", default=None, help="also write the table here")
    p.add_argument("--json-lines", action="store_true",
                   help="emit results as tagged JSON lines (used by --backend all)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU only: intra-op threads for the backend (default: "
                        "its own choice). On a small shared machine --threads 1 "
                        "gives far steadier numbers")
    p.add_argument("--malloc-cache", action="store_true",
                   help="with --backend all: run the children with glibc told to "
                        "keep freed memory (MALLOC_MMAP_THRESHOLD_ etc.). On CPU, "
                        "torch's parameter-sized temporaries are otherwise mmapped "
                        "and unmapped every step, and page faults dominate")
    p.add_argument("--torch-compile-cpu", action="store_true",
                   help="torch on CPU: let SNRAdam(fused=True) compile its update "
                        "there too (by default it compiles on CUDA only)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def set_threads(n, backend):
    """Limit intra-op CPU threads; runs before the backend is imported."""
    if not n:
        return
    os.environ["OMP_NUM_THREADS"] = str(n)
    if backend == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        if n == 1:
            flags += " --xla_cpu_multi_thread_eigen=false"
        os.environ["XLA_FLAGS"] = (flags + f" intra_op_parallelism_threads={n}").strip()
    elif backend == "torch":
        import torch

        torch.set_num_threads(n)


# ---------------------------------------------------------------------- arms

def arm_specs(backend):
    """Ordered dict key -> (title, bytes/param, kind, options)."""
    arms = {"keras_adam": ("keras Adam", BYTES_PER_PARAM["adam"], "keras", {"adam": True})}
    for gate in GATES:
        for reduction in REDUCTIONS:
            key = f"snr_{gate}_{reduction}".lower()
            title = f"SNRAdam {gate} {reduction}"
            arms[key] = (title, BYTES_PER_PARAM["snr"], "keras",
                         {"gate": gate, "reduction": reduction})
    snr = BYTES_PER_PARAM["snr"]
    if backend == "torch":
        arms["snr_foreach"] = (
            "SNRAdam snr elementwise, foreach kernels (compiling off)", snr, "keras",
            {"gate": "snr", "reduction": "elementwise", "no_compile": True},
        )
        arms["snr_generic"] = (
            "SNRAdam snr elementwise, generic path", snr, "keras",
            {"gate": "snr", "reduction": "elementwise", "generic": True},
        )
        arms["torch_compile_snr"] = (
            "torch.compile SNR-Adam snr elementwise (hand-written)", snr, "torch_compile", {})
        arms["torch_adamw"] = ("torch AdamW fused", BYTES_PER_PARAM["adam"], "torch_adamw", {})
    if backend == "jax":
        arms["raw_jax_snr"] = (
            "raw jax.jit SNR-Adam snr elementwise", snr, "raw_jax", {"no_copy": False})
        arms["raw_jax_snr_nocopy"] = (
            "raw jax.jit SNR-Adam, g-m from new m", snr, "raw_jax", {"no_copy": True})
        arms["optax_adamw"] = ("optax adamw", BYTES_PER_PARAM["adam"], "optax", {})
    arms["copy"] = ("device copy", BYTES_PER_PARAM["copy"], "copy", {})
    return arms


def shapes_for(total, n_vars, cols):
    per_var = max(1, total // n_vars)
    cols = max(1, min(cols, per_var))
    rows = max(1, per_var // cols)
    return [(rows, cols)] * n_vars


def state_bytes(kind, options, n):
    """Rough bytes an arm keeps alive (weights + slots + scratch), 4 B each."""
    if kind == "copy":
        return 4 * n
    if kind in ("torch_adamw", "optax"):
        return 4 * n * 3.2
    if options.get("adam"):
        return 4 * n * 3.2
    return 4 * n * 4.3


def make_keras_optimizer(options, args):
    import keras

    from keras_snr import SNRAdam

    wd = args.weight_decay or None
    if options.get("adam"):
        return keras.optimizers.Adam(learning_rate=args.learning_rate, weight_decay=wd)
    opt = SNRAdam(
        learning_rate=args.learning_rate,
        weight_decay=wd,
        gate=options["gate"],
        reduction=options["reduction"],
        fused=not options.get("generic"),
    )
    return opt


# ------------------------------------------------------------------- JAX

class JaxBench:
    def __init__(self, args):
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        self.args = args
        self.device = jax.devices()[0]

    def describe(self):
        import jax

        d = self.device
        return {
            "backend": "jax",
            "device": f"{d.platform}:{getattr(d, 'device_kind', '')}",
            "versions": {"jax": jax.__version__, **_common_versions()},
        }

    def on_gpu(self):
        return self.device.platform != "cpu"

    def free_bytes(self):
        try:
            stats = self.device.memory_stats() or {}
            if "bytes_limit" in stats:
                return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        except Exception:
            pass
        return None

    def random(self, shapes, seed, scale):
        jax = self.jax
        keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
        make = jax.jit(lambda k, shape: jax.random.normal(k, shape, "float32") * scale,
                       static_argnums=1)
        return [make(k, s) for k, s in zip(keys, shapes)]

    def sync(self, tree):
        self.jax.block_until_ready(tree)

    def build(self, kind, options, shapes, grads):
        jax, jnp, args = self.jax, self.jnp, self.args
        if kind == "copy":
            state = {"dst": [jnp.zeros(s, "float32") for s in shapes]}
            fn = jax.jit(lambda dst, src: [jnp.copy(x) for x in src], donate_argnums=0)

            def step():
                state["dst"] = fn(state["dst"], grads)
                jax.block_until_ready(state["dst"])

            return step, state
        if kind == "optax":
            import optax

            tx = optax.adamw(args.learning_rate, weight_decay=args.weight_decay)
            params = self.random(shapes, args.seed + 1, 0.02)
            state = {"params": params, "opt": tx.init(params)}

            def update(params, opt_state, g):
                updates, opt_state = tx.update(g, opt_state, params)
                return optax.apply_updates(params, updates), opt_state

            fn = jax.jit(update, donate_argnums=(0, 1))

            def step():
                state["params"], state["opt"] = fn(state["params"], state["opt"], grads)
                jax.block_until_ready(state["params"])

            return step, state
        if kind == "raw_jax":
            fn = jax.jit(_raw_jax_snr_adam(args, options["no_copy"]), donate_argnums=0)
            zeros = lambda: [jnp.zeros(s, "float32") for s in shapes]  # noqa: E731
            state = {"vars": (self.random(shapes, args.seed + 1, 0.02), zeros(), zeros(),
                              zeros()),
                     "t": jnp.zeros((), "int32")}

            def step():
                state["vars"], state["t"] = fn(state["vars"], grads, state["t"])
                jax.block_until_ready(state["vars"])

            return step, state
        import keras

        opt = make_keras_optimizer(options, args)
        variables = [keras.Variable(w) for w in self.random(shapes, args.seed + 1, 0.02)]
        opt.build(variables)
        state = {"train": [v.value for v in variables],
                 "opt": [v.value for v in opt.variables]}
        del variables

        def apply(opt_vars, g, train):
            new_train, new_opt = opt.stateless_apply(opt_vars, g, train)
            return new_opt, new_train

        fn = jax.jit(apply, donate_argnums=(0, 2))

        def step():
            state["opt"], state["train"] = fn(state["opt"], grads, state["train"])
            jax.block_until_ready(state["train"])

        state["optimizer"] = opt
        return step, state

    def release(self):
        gc.collect()

    def graphs_compiled(self):
        return None

    def how_it_ran(self, state):
        return None


def _raw_jax_snr_adam(args, no_copy, b1=0.9, b2=0.999, rho=0.99, eps=1e-8):
    """Hand-written SNR-Adam (snr gate, elementwise) over lists of arrays."""
    import jax.numpy as jnp

    lr, wd = args.learning_rate, args.weight_decay

    def update(state, grads, t):
        ws, ms, vs, ss = state
        tf = t.astype("float32") + 1
        c1, c2, cs = (-jnp.expm1(tf * math.log(b)) for b in (b1, b2, rho))
        out = ([], [], [], [])
        for w, m, v, s, g in zip(ws, ms, vs, ss, grads):
            new_m = b1 * m + (1 - b1) * g
            delta = (g - new_m) / b1 if no_copy else g - m
            new_s = rho * s + (1 - rho) * delta * delta
            new_v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat, s_hat = new_m / c1, new_v / c2, new_s / cs
            q = m_hat * m_hat / (m_hat * m_hat + s_hat + eps * eps)
            q = jnp.where(tf == 1, 1.0, q)
            new_w = w * (1 - lr * wd) - lr * q * m_hat / (jnp.sqrt(v_hat) + eps)
            for lst, x in zip(out, (new_w, new_m, new_v, new_s)):
                lst.append(x)
        return out, t + 1

    return update


# ----------------------------------------------------------------- torch

class TorchBench:
    def __init__(self, args):
        import torch
        from keras.src.backend.torch.core import get_device

        self.torch = torch
        self.args = args
        self.device = torch.device(get_device())
        self.adamw_impl = None

    def describe(self):
        torch = self.torch
        name = str(self.device)
        if self.device.type == "cuda":
            name += ":" + torch.cuda.get_device_name(self.device)
        return {
            "backend": "torch",
            "device": name,
            "versions": {"torch": torch.__version__, **_common_versions()},
            "torch_adamw_impl": self.adamw_impl,
        }

    def on_gpu(self):
        return self.device.type == "cuda"

    def free_bytes(self):
        if self.device.type == "cuda":
            return self.torch.cuda.mem_get_info(self.device)[0]
        return None

    def random(self, shapes, seed, scale):
        torch = self.torch
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return [torch.randn(s, generator=gen, device=self.device) * scale for s in shapes]

    def sync(self, tree=None):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def build(self, kind, options, shapes, grads):
        torch, args = self.torch, self.args
        cuda = self.device.type == "cuda"

        def finish():
            if cuda:
                torch.cuda.synchronize(self.device)

        if kind == "copy":
            dst = [torch.empty_like(g) for g in grads]

            def step():
                torch._foreach_copy_(dst, grads)
                finish()

            return step, {"dst": dst}
        if kind == "torch_compile":
            fn = torch.compile(_torch_snr_adam(args), fullgraph=True, dynamic=True)
            w = self.random(shapes, args.seed + 1, 0.02)
            m, v, s_ = ([torch.zeros_like(x) for x in w] for _ in range(3))
            t = torch.zeros((), dtype=torch.float32, device=self.device)

            def step():
                with torch.no_grad():
                    fn(w, m, v, s_, grads, t)
                finish()

            return step, {"w": w, "m": m, "v": v, "s": s_, "t": t}
        if kind == "torch_adamw":
            params = [torch.nn.Parameter(w) for w in self.random(shapes, args.seed + 1, 0.02)]
            for p, g in zip(params, grads):
                p.grad = g
            try:
                opt = torch.optim.AdamW(params, lr=args.learning_rate,
                                        weight_decay=args.weight_decay, fused=True)
                opt.step()  # raises here where fused is unsupported
                self.adamw_impl = "fused"
            except (RuntimeError, TypeError, ValueError):
                opt = torch.optim.AdamW(params, lr=args.learning_rate,
                                        weight_decay=args.weight_decay, foreach=True)
                self.adamw_impl = "foreach"

            def step():
                opt.step()
                finish()

            return step, {"params": params, "opt": opt}
        import keras

        opt = make_keras_optimizer(options, args)
        variables = [keras.Variable(w) for w in self.random(shapes, args.seed + 1, 0.02)]
        opt.build(variables)
        no_compile = options.get("no_compile")

        def step():
            if no_compile:  # read by keras_snr at every step
                os.environ["KERAS_SNR_TORCH_COMPILE"] = "0"
            try:
                with torch.no_grad():
                    opt.apply(grads, variables)
            finally:
                if no_compile:
                    os.environ.pop("KERAS_SNR_TORCH_COMPILE", None)
            finish()

        return step, {"variables": variables, "optimizer": opt}

    def graphs_compiled(self):
        """Graphs dynamo has compiled in this process so far."""
        return int(self.torch._dynamo.utils.counters["stats"]["unique_graphs"])

    def how_it_ran(self, state):
        opt = state.get("optimizer") if state else None
        if opt is None or not hasattr(opt, "alpha"):
            return None
        if not opt.fused:
            return "generic"
        from keras_snr import _torch_fast_path

        return _torch_fast_path.compile_status(opt)

    def release(self):
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def _torch_snr_adam(args, b1=0.9, b2=0.999, rho=0.99, eps=1e-8):
    """Hand-written in-place SNR-Adam (snr gate, elementwise) for
    torch.compile; `t` (a 0-d tensor) is the step count, bumped in place."""
    import torch

    lr, wd = args.learning_rate, args.weight_decay
    logs = [math.log(b) for b in (b1, b2, rho)]

    def update(ws, ms, vs, ss, grads, t):
        t.add_(1)
        c1, c2, cs = (-torch.expm1(t * lg) for lg in logs)
        first = (t == 1).to(torch.float32)
        for w, m, v, s, g in zip(ws, ms, vs, ss, grads):
            delta = g - m
            s.mul_(rho).addcmul_(delta, delta, value=1 - rho)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            m_hat, v_hat, s_hat = m / c1, v / c2, s / cs
            q = m_hat * m_hat / (m_hat * m_hat + s_hat + eps * eps)
            q = first + (1 - first) * q
            w.mul_(1 - lr * wd).sub_(lr * q * m_hat / (v_hat.sqrt() + eps))

    return update


def _common_versions():
    import keras
    import numpy

    return {"keras": keras.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(),
            "glibc_malloc_env": {k: os.environ[k] for k in MALLOC_CACHE_ENV
                                 if k in os.environ}}


# ------------------------------------------------------------------ timing
def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))]


def timed(step, count):
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


def host_available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_size(bench, arms, total, args, log):
    shapes = shapes_for(total, args.n_vars, args.cols)
    n = sum(math.prod(s) for s in shapes)
    grads = bench.random(shapes, args.seed, 1e-3)
    bench.sync(grads)

    need = 4 * n + sum(state_bytes(kind, opts, n) for _, _, kind, opts in arms.values())
    if args.mem_budget_gb is not None:
        budget = args.mem_budget_gb * 1e9
    elif bench.on_gpu():
        free = bench.free_bytes()
        budget = 0.8 * free if free else 0
    else:
        avail = host_available_bytes()
        budget = 0.45 * avail if avail else 0
    interleave = {"on": True, "off": False}.get(args.interleave, need <= budget)
    log(f"[{bench.name}] {size_label(n)} params ({len(shapes)} x {shapes[0]}): "
        f"arms need ~{need / 1e9:.1f} GB, budget {budget / 1e9:.1f} GB -> "
        f"{'interleaved' if interleave else 'one arm at a time'}")

    times = {key: [] for key in arms}
    recompiled = {}  # graphs compiled during the timed steps (torch; all arms when interleaved)
    rng = random.Random(args.seed)
    errors = {}
    first_step = {}  # seconds of each arm's first step (compiling included)
    how = {}  # how an SNRAdam arm's update ran (torch: compiled / eager / generic)

    def build_and_warm(key, kind, opts):
        try:
            step, state = bench.build(kind, opts, shapes, grads)
            for i in range(args.warmup):
                t0 = time.perf_counter()
                step()
                if i == 0:
                    first_step[key] = time.perf_counter() - t0
            how[key] = bench.how_it_ran(state)
            return step, state
        except Exception as e:  # report the arm as failed, keep going
            errors[key] = f"{type(e).__name__}: {e}"[:500]
            log(f"  {key} FAILED: {errors[key]}")
            bench.release()
            return None, None

    if interleave:
        steppers = {}
        for key, (_, _, kind, opts) in arms.items():
            t0 = time.perf_counter()
            step, state = build_and_warm(key, kind, opts)
            if step is None:
                continue
            steppers[key] = (step, state)
            log(f"  built+warmed {key} in {time.perf_counter() - t0:.1f} s")
        per_round = max(1, math.ceil(args.steps / args.rounds))
        order = list(steppers)
        graphs_before = bench.graphs_compiled()
        for _ in range(args.rounds):
            rng.shuffle(order)
            for key in order:
                times[key] += timed(steppers[key][0], per_round)
        recompiled = dict.fromkeys(arms, _difference(bench.graphs_compiled(), graphs_before))
        del steppers
        bench.release()
    else:
        for key, (_, _, kind, opts) in arms.items():
            t0 = time.perf_counter()
            step, state = build_and_warm(key, kind, opts)
            if step is None:
                continue
            graphs_before = bench.graphs_compiled()
            times[key] = timed(step, args.steps)
            recompiled[key] = _difference(bench.graphs_compiled(), graphs_before)
            if recompiled[key]:
                log(f"  {key}: {recompiled[key]} graph(s) compiled during the timed steps")
            del step, state
            bench.release()
            log(f"  {key}: {1e3 * median(times[key]):.3f} ms "
                f"({time.perf_counter() - t0:.1f} s with build)")
    del grads
    bench.release()

    rows = []
    for key, (title, bpp, kind, _) in arms.items():
        t = times[key]
        if kind == "torch_adamw" and bench.adamw_impl == "foreach":
            title = "torch AdamW foreach (fused unsupported here)"
        if not t:
            rows.append({"backend": bench.name, "arm": key, "title": title, "params": n,
                         "bytes_per_param": bpp, "steps": 0, "ms_median": None,
                         "error": errors.get(key, "not run"), "interleaved": interleave})
            continue
        med = median(t)
        rows.append({
            "backend": bench.name,
            "arm": key,
            "title": title,
            "params": n,
            "shapes": [list(s) for s in shapes],
            "bytes_per_param": bpp,
            "steps": len(t),
            "ms_median": 1e3 * med,
            "ms_p10": 1e3 * quantile(t, 0.1),
            "ms_p90": 1e3 * quantile(t, 0.9),
            "gb_per_s": bpp * n / med / 1e9,
            "interleaved": interleave,
            "first_step_s": first_step.get(key),
            "how_it_ran": how.get(key),
            "graphs_compiled_while_timing": recompiled.get(key),
        })
    adam = next((r["ms_median"] for r in rows if r["arm"] == "keras_adam"), None)
    for r in rows:
        ok = adam and r["ms_median"] is not None
        r["ratio_to_keras_adam"] = r["ms_median"] / adam if ok else None
    return rows


def _difference(after, before):
    return None if after is None or before is None else after - before


def run_backend(args, log, on_progress=None):
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = args.backend
    set_threads(args.threads, args.backend)
    import keras

    backend = keras.backend.backend()
    if backend != args.backend:
        raise SystemExit(
            f"--backend {args.backend} but Keras loaded the {backend} backend; "
            f"set KERAS_BACKEND={args.backend}"
        )
    if backend == "torch" and args.torch_compile_cpu:
        from keras_snr import _torch_fast_path

        _torch_fast_path.COMPILE_DEVICES = ("cuda", "cpu")
    bench = (JaxBench if backend == "jax" else TorchBench)(args)
    bench.name = backend
    arms = arm_specs(backend)
    if args.arms:
        wanted = [a.strip() for a in args.arms.split(",") if a.strip()]
        arms = {k: v for k, v in arms.items() if k in wanted}
    sizes = default_sizes(args, bench.on_gpu())
    rows = []
    for total in sizes:
        rows += run_size(bench, arms, total, args, log)
        if on_progress:  # partial results survive a later timeout
            on_progress({"meta": bench.describe(), "rows": rows})
    return {"meta": bench.describe(), "rows": rows}


def default_sizes(args, on_gpu):
    if args.sizes:
        return [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    return [10**7, 10**8, 10**9] if on_gpu else [10**6, 10**7]


# ------------------------------------------------------------------ output

def table(results):
    lines = [
        "| backend | device | params | step | ms/step (median) | p10-p90 ms "
        "| B/param | GB/s | / keras Adam | / torch AdamW fused | first step s | ran as |",
        "|" + " --- |" * 12,
    ]
    for res in results:
        meta = res["meta"]
        fused = {r["params"]: r["ms_median"] for r in res["rows"]
                 if r["arm"] == "torch_adamw" and r["ms_median"]}
        for r in res["rows"]:
            ratio = r["ratio_to_keras_adam"]
            if r["ms_median"] is None:
                lines.append(
                    f"| {r['backend']} | {meta['device']} | {size_label(r['params'])} "
                    f"| {r['title']} | failed: {r['error'][:80]} | | {r['bytes_per_param']} "
                    "| | | | | |"
                )
                continue
            ratio = ratio or float("nan")
            to_fused = (f"{r['ms_median'] / fused[r['params']]:.2f}x"
                        if r["params"] in fused else "")
            first = r.get("first_step_s")
            lines.append(
                f"| {r['backend']} | {meta['device']} | {size_label(r['params'])} "
                f"| {r['title']} | {r['ms_median']:.3f} "
                f"| {r['ms_p10']:.2f}-{r['ms_p90']:.2f} | {r['bytes_per_param']} "
                f"| {r['gb_per_s']:.1f} | {ratio:.2f}x | {to_fused} "
                f"| {'' if first is None else f'{first:.2f}'} | {r.get('how_it_ran') or ''} |"
            )
    steps = sorted({r["steps"] for res in results for r in res["rows"] if r["steps"]})
    modes = sorted({r["interleaved"] for res in results for r in res["rows"]})
    lines.append("")
    lines.append(
        f"Median of {'/'.join(map(str, steps))} timed steps per arm after warm-up "
        f"({' and '.join('interleaved rounds' if m else 'one arm at a time' for m in modes)}); "
        "float32; gradients precomputed; same weight decay and learning rate on "
        "every arm. GB/s = bytes/param x params / median time (minimum traffic: "
        "Adam/AdamW 28, SNRAdam 36, copy 8)."
    )
    cached = [res["meta"]["backend"] for res in results
              if res["meta"]["versions"].get("glibc_malloc_env")]
    if cached:
        lines.append(f"glibc malloc told to keep freed memory ({', '.join(cached)}).")
    return "\n".join(lines)


def emit(results, args, quiet=False):
    text = table(results)
    if not quiet:
        print(text, flush=True)
    write_outputs(text, {"results": results}, args.markdown_out, args.out)


def run_all(args, argv):
    child_args = strip_options(argv, valued=("--backend", "--out", "--markdown-out"))
    results, failed = run_per_backend(
        os.path.abspath(__file__), BACKENDS, ["--json-lines", *child_args], _JSON_TAG,
        env=MALLOC_CACHE_ENV if args.malloc_cache else None, backend_flag="--backend",
    )
    emit(results, args)
    return 1 if failed else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.list_arms:
        for backend in BACKENDS:
            print(backend + ": " + ", ".join(arm_specs(backend)))
        return 0
    if args.backend == "all":
        return run_all(args, argv)
    if args.backend not in BACKENDS:
        raise SystemExit(f"--backend must be jax, torch or all; got {args.backend!r}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    progress = None if args.json_lines else (lambda res: emit([res], args, quiet=True))
    result = run_backend(args, log, progress)
    if args.json_lines:
        print(_JSON_TAG + json.dumps(result), flush=True)
    else:
        emit([result], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
