"""SNRAdam's torch update paths against the float64 NumPy reference, on the
device Keras uses (the GPU when there is one), with compile time and
recompile counts.

Paths (all `KERAS_BACKEND=torch`):

- `compiled`: `fused=True` with the update under `torch.compile` (the
  default on CUDA; `--compile-on-cpu` uses it on the CPU too);
- `foreach`: `fused=True` with compiling off (`KERAS_SNR_TORCH_COMPILE=0`):
  the eager multi-tensor kernels;
- `generic`: `fused=False`, Keras's per-variable `update_step`.

For every gate (snr, soft, hard, None), reduction (elementwise,
per_tensor) and path: `--steps` steps of a noisy gradient stream on six
variables (one of 512 x 384), weight decay 0.1 with two variables excluded.
Each step starts the reference from the optimizer's own float32 state (as
`tests/test_snr_adam.py` does), so the error measures the update rule, not
float32 storage accumulated over steps; pass if every weight is within 1e-6
of the reference relative to `|w| + lr` (1e-5 with `per_tensor`, whose gate
comes from float32 sums over up to 196,608 values: their rounding alone is
of order 1e-6). The hard gate is judged away from its threshold: where the
reference's `m_hat**2` and `alpha * s_hat` are within 1e-4 of each other,
float32 rounding alone decides whether the step is taken (those
coordinates are counted, not compared). The compiled path also reports how
long its first step took (compiling included), how many graphs dynamo
compiled, and how many of them after the first step (0: no recompilation).
Only the 512 x 384 variable is large enough to run compiled
(`COMPILE_MIN_SIZE`); the others run as eager kernels in the same step.

Usage:
    KERAS_BACKEND=torch python benchmarks/torch_paths_check.py --out check.json
    KERAS_BACKEND=torch python benchmarks/torch_paths_check.py --compile-on-cpu --steps 5
"""

import argparse
import json
import os
import sys
import time

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference.py")

SHAPES = [(), (7,), (5, 3), (2, 3, 4), (512, 384), (64,)]
NAMES = ["scalar", "vector_nodecay", "matrix", "cube", "kernel", "bias_nodecay"]
GATES = ("snr", "soft", "hard", None)
REDUCTIONS = ("elementwise", "per_tensor")
PATHS = ("compiled", "foreach", "generic")
LR, WD, ALPHA = 1e-2, 0.1, 0.3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--compile-on-cpu", action="store_true",
                   help="compile on the CPU too (where fused=True runs eagerly by default)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--markdown-out", default=None)
    return p.parse_args(argv)


def run_one(gate, reduction, path, steps, seed):
    import keras
    import numpy as np
    import torch

    ReferenceSNRAdam = _reference().ReferenceSNRAdam

    from keras_snr import SNRAdam
    from keras_snr import _torch_fast_path

    rng = np.random.default_rng(seed)
    variables = [keras.Variable(rng.normal(size=s).astype("float32"), name=n)
                 for s, n in zip(SHAPES, NAMES)]
    device = str(variables[0].value.device)
    optimizer = SNRAdam(learning_rate=LR, weight_decay=WD, gate=gate, reduction=reduction,
                        alpha=ALPHA, fused=path != "generic")
    optimizer.exclude_from_weight_decay(var_names=["nodecay"])
    optimizer.build(variables)
    decayed = ["nodecay" not in n for n in NAMES]
    refs = {d: ReferenceSNRAdam(learning_rate=LR, weight_decay=WD if d else None, gate=gate,
                                reduction=reduction, alpha=ALPHA) for d in (True, False)}
    means = [rng.normal(scale=0.5, size=s) for s in SHAPES]
    counters = torch._dynamo.utils.counters
    torch._dynamo.reset()
    counters.clear()
    worst, first_step_s, ties = 0.0, None, 0

    def numpy(x):
        return keras.ops.convert_to_numpy(x).astype(np.float64)

    for step in range(steps):
        grads = [(mu + rng.normal(size=s)).astype("float32") for mu, s in zip(means, SHAPES)]
        before = [numpy(v) for v in variables]
        if step:  # the raw slots, from the public bias-corrected statistics
            stats = optimizer.statistics()
            corrections = [1 - b**step for b in (optimizer.beta_1, optimizer.beta_2,
                                                 optimizer.rho)]
            for ref in refs.values():
                ref.m, ref.v, ref.s = (
                    [numpy(x) * c for x in field]
                    for field, c in zip(stats[:3], corrections))
        want = {d: ref.step(before, grads) for d, ref in refs.items()}
        t0 = time.perf_counter()
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        if step == 0:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            first_step_s = time.perf_counter() - t0
            graphs_first_step = int(counters["stats"]["unique_graphs"])
        for i, v in enumerate(variables):
            w = want[decayed[i]][i]
            err = np.abs(numpy(v) - w) / (np.abs(w) + LR)
            if gate == "hard":  # float32 rounding decides the gate at a tie
                near = _near_threshold(refs[True], i, reduction, step + 1)
                ties += int(np.sum(near))
                err = np.where(near, 0.0, err)
            worst = max(worst, float(np.max(err)))
    status = _torch_fast_path.compile_status(optimizer) if path != "generic" else "generic"
    return {
        "gate": gate, "reduction": reduction, "path": path, "device": device,
        "steps": steps, "max_rel_error": worst,
        "pass": worst < (1e-5 if reduction == "per_tensor" else 1e-6),
        "status": status, "hard_gate_ties_skipped": ties,
        "graphs_compiled": int(counters["stats"]["unique_graphs"]),
        "graphs_after_first_step": int(counters["stats"]["unique_graphs"]) - graphs_first_step,
        "first_step_s": first_step_s,
    }


def _near_threshold(ref, i, reduction, t, tolerance=1e-4):
    """Coordinates whose hard-gate decision the reference made within
    `tolerance` (relative) of the threshold `m_hat**2 = alpha * s_hat`."""
    import numpy as np

    signal = (ref.m[i] / (1 - ref.b1**t)) ** 2
    noise = ref.alpha * ref.s[i] / (1 - ref.rho**t)
    if reduction == "per_tensor":
        signal, noise = np.sum(signal), np.sum(noise)
    near = np.abs(signal - noise) <= tolerance * (signal + noise)
    return np.broadcast_to(near, ref.m[i].shape)


def _reference():
    """tests/reference.py, the NumPy reference the test suite uses."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("reference", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import torch

    from keras_snr import _torch_fast_path

    if keras.backend.backend() != "torch":
        raise SystemExit("run with KERAS_BACKEND=torch")
    if args.compile_on_cpu:
        _torch_fast_path.COMPILE_DEVICES = ("cuda", "cpu")
    paths = PATHS if torch.cuda.is_available() or args.compile_on_cpu else PATHS[1:]
    rows = []
    for gate in GATES:
        for reduction in REDUCTIONS:
            for path in paths:
                if path == "foreach":
                    os.environ["KERAS_SNR_TORCH_COMPILE"] = "0"
                try:
                    row = run_one(gate, reduction, path, args.steps, seed=len(rows))
                finally:
                    os.environ.pop("KERAS_SNR_TORCH_COMPILE", None)
                rows.append(row)
                print(json.dumps(row), flush=True)
    expect_compiled = [r for r in rows if r["path"] == "compiled"]
    compiled_ok = all(r["status"] == "compiled" and r["graphs_compiled"] >= 1
                      and r["graphs_after_first_step"] == 0 for r in expect_compiled)
    ok = all(r["pass"] for r in rows) and compiled_ok
    meta = {"torch": torch.__version__, "keras": keras.__version__,
            "device": rows[0]["device"],
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    lines = [
        f"torch {meta['torch']}, keras {meta['keras']}, device {meta['device']}"
        + (f" ({meta['cuda_device']})" if meta["cuda_device"] else ""),
        "",
        "| gate | reduction | path | max rel. error | pass | how it ran | graphs compiled "
        "| first step s | hard-gate ties skipped |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['gate']} | {r['reduction']} | {r['path']} | {r['max_rel_error']:.1e} "
            f"| {'yes' if r['pass'] else 'NO'} | {r['status']} | {r['graphs_compiled']} "
            f"| {r['first_step_s']:.2f} | {r['hard_gate_ties_skipped']} |")
    lines += ["", f"{sum(r['pass'] for r in rows)}/{len(rows)} within tolerance; compiled path "
              f"compiled on the first step and never after: {'yes' if compiled_ok else 'NO'}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows, "ok": ok}, f, indent=1)
    if args.markdown_out:
        with open(args.markdown_out, "w") as f:
            f.write(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
