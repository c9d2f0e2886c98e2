"""PINN on the convection equation: SNRAdam against a learning-rate-tuned AdamW.

    u_t + beta * u_x = 0,  beta = 5,  x in [0, 2 pi) periodic,  t in [0, 1],
    exact solution u(x, t) = sin(x - beta * t).

Initial-condition data: `--n-ic` points x_i on a uniform grid with
u_i = sin(x_i) + N(0, sigma^2) noise (drawn once per seed). Loss per step:

    mean(residual^2) over `--n-col` collocation points drawn afresh each step
  + mean((u(x_i, 0) - u_i)^2) over a minibatch of `--ic-batch` of the n_ic
    noisy points (drawn without replacement each step).

Periodicity: by default the network sees (sin x, cos x, t) (exact periodic
embedding, no boundary loss); `--embedding none` feeds (x, t) raw and adds
a periodic boundary loss mean((u(0, t) - u(2 pi, t))^2) on `--n-bc` fresh t
(the default: a standard, "vanilla" PINN). `--collocation fixed` uses one
set of `--n-col` collocation points per seed, full batch, every step.

Metric: relative L2 error against the exact solution on a fixed 256 x 101
(x, t) grid, every `--eval-every` steps; we record the first evaluated step
with error <= 0.40 and the final error. JAX backend, jitted loop
(`stateless_call` + `stateless_apply` inside `lax.scan`); input derivatives
through `benchmarks/tasks/pinn_derivatives.py`. For SNRAdam arms the mean gate
q over all coordinates (`SNRAdam.gate_summary()`) is recorded at every
evaluation.

One JSON line per finished run in `--out`; finished runs are skipped when
rerun, so an interrupted run resumes.

    KERAS_BACKEND=jax python benchmarks/pinn_convection.py
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

from _common import set_threads  # noqa: E402  (benchmarks/ is on sys.path)

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=3000)
p.add_argument("--eval-every", type=int, default=50)
p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
p.add_argument("--arms", nargs="+", default=None, help="names like adamw@1e-3, snr1@1e-3, snrf@3e-3")
p.add_argument("--adamw-lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2])
p.add_argument("--snr-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
p.add_argument("--width", type=int, default=50)
p.add_argument("--depth", type=int, default=4)
p.add_argument("--n-col", type=int, default=1000)
p.add_argument("--n-ic", type=int, default=256)
p.add_argument("--ic-batch", type=int, default=64)
p.add_argument("--n-bc", type=int, default=128)
p.add_argument("--sigma", type=float, default=0.1)
p.add_argument("--beta", type=float, default=5.0)
p.add_argument("--weight-decay", type=float, default=1e-4)
p.add_argument("--embedding", choices=["periodic", "none"], default="none")
p.add_argument("--threshold", type=float, default=0.40)
p.add_argument("--collocation", choices=["fresh", "fixed"], default="fresh",
               help="fresh: new collocation points every step; fixed: one set per seed, full batch")
p.add_argument("--out", default=os.path.join(HERE, "results", "pinn_convection.jsonl"))
p.add_argument("--threads", type=int, default=1)
p.add_argument("--time-only", action="store_true", help="time steps for one arm and exit")
p.add_argument("--report", action="store_true", help="write the table (.md) and plot (.png) from --out and exit")
args = p.parse_args()



def report(path):
    """Markdown table per configuration and a plot, from the JSON lines."""
    import collections

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with open(path) as f:
        rows = [json.loads(line) for line in f]
    groups = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rows:
        c = r["config"]
        groups[(c["embedding"], c.get("collocation", "fresh"), c["sigma"], r["steps"])][r["arm"]].append(r)
    names = {"adamw": "AdamW", "snr1": "SNRAdam alpha=1", "snrf": "SNRAdam alpha=b/(n-b)=1/3"}
    lines = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for (embedding, collocation, sigma, steps), arms in sorted(groups.items()):
        lines += [f"\n#### embedding={embedding}, collocation={collocation}, IC noise sigma={sigma:g}, step cap {steps}\n",
                  "| optimizer | lr | seeds | reached <= 0.40 | steps to <= 0.40, median [min, max] "
                  "| final rel. L2, median [min, max] | best rel. L2, median | mean gate q |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        best = {}
        order = sorted(arms, key=lambda a: (list(names).index(a.split("@")[0]), float(a.split("@")[1])))
        for arm in order:
            rs = sorted(arms[arm], key=lambda r: r["seed"])
            hits = [r["steps_to_threshold"] for r in rs]
            reached = [h for h in hits if h is not None]
            inf_hits = [h if h is not None else float("inf") for h in hits]
            med = float(np.median(inf_hits))
            med_s = "not reached" if med == float("inf") else f"{med:g}"
            spread = f"[{min(inf_hits):g}, {max(inf_hits):g}]".replace("inf", f"> {steps}")
            fin = [r["final_rel_l2"] for r in rs]
            gates = [r.get("mean_gate") for r in rs if r.get("mean_gate") is not None]
            kind = rs[0]["kind"]
            lines.append(
                f"| {names[kind]} | {rs[0]['lr']:g} | {','.join(str(r['seed']) for r in rs)} "
                f"| {len(reached)}/{len(rs)} | {med_s} {spread} "
                f"| {np.median(fin):.3f} [{min(fin):.3f}, {max(fin):.3f}] "
                f"| {np.median([r['best_rel_l2'] for r in rs]):.3f} "
                f"| {np.median(gates) if gates else '-'} |")
            if len(rs) >= 3 and (kind not in best or med < best[kind][0]):
                best[kind] = (med, arm)
        if (embedding, collocation, sigma, steps) == ("none", "fresh", 0.1, 3000) and best:
            for kind, (med, arm) in best.items():
                rs = arms[arm]
                step = [c[0] for c in rs[0]["curve"]]
                err = np.array([[c[2] for c in r["curve"]] for r in rs])
                line, = axes[0].semilogy(step, np.median(err, 0), label=f"{names[kind]}, lr {arm.split('@')[1]}")
                axes[0].fill_between(step, err.min(0), err.max(0), color=line.get_color(), alpha=0.2)
                if kind != "adamw":
                    gate = np.array([[c[3] for c in r["curve"]] for r in rs])
                    axes[1].plot(step, np.median(gate, 0), color=line.get_color(), label=names[kind] + f", lr {arm.split('@')[1]}")
            lines.append("\nBest lr per optimizer (lowest median steps to <= 0.40): " + ", ".join(
                f"{names[k]} lr {a.split('@')[1]}: {m:g}" for k, (m, a) in best.items()))
    axes[0].axhline(0.40, color="gray", ls=":")
    axes[0].set(xlabel="step", ylabel="relative L2 error vs exact", title="best lr per optimizer; median and seed range")
    axes[0].legend()
    axes[1].set(xlabel="step", ylabel="mean gate q over coordinates", title="SNRAdam gate openness")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path.replace(".jsonl", ".png"), dpi=100)
    print("\n".join(lines))


if args.report:
    report(args.out)
    sys.exit()

os.environ.setdefault("KERAS_BACKEND", "jax")
set_threads(args.threads)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import keras_snr  # noqa: E402
from tasks.optimizer_state import mean_gate  # noqa: E402
from tasks.pinn_derivatives import value_and_input_gradient  # noqa: E402

assert keras.backend.backend() == "jax", "this benchmark runs on the JAX backend"
TWO_PI = 2 * np.pi


class PeriodicEmbedding(keras.layers.Layer):
    def call(self, xt):
        x, t = xt[:, :1], xt[:, 1:]
        return keras.ops.concatenate([keras.ops.sin(x), keras.ops.cos(x), t], axis=1)


def build_model(seed):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((2,))]
    if args.embedding == "periodic":
        layers.append(PeriodicEmbedding())
    for _ in range(args.depth):
        layers.append(keras.layers.Dense(args.width, activation="tanh"))
    layers.append(keras.layers.Dense(1))
    return keras.Sequential(layers)


def make_optimizer(kind, lr):
    wd = args.weight_decay
    if kind == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=wd)
    if kind == "snr1":  # alpha = 1: streaming (collocation points are fresh draws)
        return keras_snr.SNRAdam(learning_rate=lr, weight_decay=wd, alpha=1.0)
    if kind == "snrf":  # finite-dataset alpha of the IC minibatch
        alpha = keras_snr.finite_dataset_alpha(args.ic_batch, args.n_ic)
        return keras_snr.SNRAdam(learning_rate=lr, weight_decay=wd, alpha=alpha)
    raise ValueError(kind)


# Fixed evaluation grid.
xe, te = np.meshgrid(np.linspace(0, TWO_PI, 256, endpoint=False), np.linspace(0, 1, 101))
EVAL_XT = jnp.asarray(np.stack([xe.ravel(), te.ravel()], 1), dtype="float32")
EVAL_U = jnp.asarray(np.sin(xe.ravel() - args.beta * te.ravel()), dtype="float32")


def run(kind, lr, seed, steps, record=True):
    model = build_model(seed)
    opt = make_optimizer(kind, lr)
    opt.build(model.trainable_variables)
    rng = np.random.default_rng(1000 + seed)
    ic_x = np.linspace(0, TWO_PI, args.n_ic, endpoint=False).astype("float32")
    ic_u = (np.sin(ic_x) + args.sigma * rng.standard_normal(args.n_ic)).astype("float32")
    ic_x, ic_u = jnp.asarray(ic_x), jnp.asarray(ic_u)
    fixed_col = jnp.asarray(rng.uniform(size=(args.n_col, 2)) * [TWO_PI, 1.0], dtype="float32")
    ntv = [v.value for v in model.non_trainable_variables]

    def u_fn(tv, xt):
        return model.stateless_call(tv, ntv, xt)[0][:, 0]

    def loss_fn(tv, key):
        k1, k2, k3 = jax.random.split(key, 3)
        col = fixed_col if args.collocation == "fixed" else (
            jax.random.uniform(k1, (args.n_col, 2)) * jnp.array([TWO_PI, 1.0]))
        _, grad = value_and_input_gradient(lambda xt: u_fn(tv, xt), col)
        residual = grad[:, 1] + args.beta * grad[:, 0]
        idx = jax.random.choice(k2, args.n_ic, (args.ic_batch,), replace=False)
        xt0 = jnp.stack([ic_x[idx], jnp.zeros(args.ic_batch)], 1)
        loss_ic = jnp.mean((u_fn(tv, xt0) - ic_u[idx]) ** 2)
        loss = jnp.mean(residual**2) + loss_ic
        if args.embedding == "none":
            tb = jax.random.uniform(k3, (args.n_bc,))
            u_left = u_fn(tv, jnp.stack([jnp.zeros_like(tb), tb], 1))
            u_right = u_fn(tv, jnp.stack([jnp.full_like(tb, TWO_PI), tb], 1))
            loss = loss + jnp.mean((u_left - u_right) ** 2)
        return loss

    def one_step(state, key):
        tv, ov = state
        loss, grads = jax.value_and_grad(loss_fn)(tv, key)
        tv, ov = opt.stateless_apply(ov, grads, tv)
        return (tv, ov), loss

    is_snr = isinstance(opt, keras_snr.SNRAdam)

    @jax.jit
    def chunk(state, keys):
        state, losses = jax.lax.scan(one_step, state, keys)
        tv, ov = state
        u = u_fn(tv, EVAL_XT)
        rel = jnp.linalg.norm(u - EVAL_U) / jnp.linalg.norm(EVAL_U)
        # Mean gate q over all coordinates at the current state (SNRAdam only).
        gate = mean_gate(opt, ov) if is_snr else jnp.nan
        return state, losses[-1], rel, gate

    state = ([v.value for v in model.trainable_variables], [v.value for v in opt.variables])
    key = jax.random.PRNGKey(seed)
    curve, hit = [], None
    t0 = time.perf_counter()
    for start in range(0, steps, args.eval_every):
        key, sub = jax.random.split(key)
        state, loss, rel, gate = chunk(state, jax.random.split(sub, args.eval_every))
        step = start + args.eval_every
        rel = float(rel)
        gate = round(float(gate), 4) if is_snr else None
        curve.append((step, round(float(loss), 6), round(rel, 5), gate))
        if hit is None and rel <= args.threshold:
            hit = step
        if not np.isfinite(rel):
            break
    wall = time.perf_counter() - t0
    gates = [c[3] for c in curve if c[3] is not None]
    return {
        "mean_gate": round(float(np.mean(gates)), 4) if gates else None,
        "arm": f"{kind}@{lr:g}", "kind": kind, "lr": lr, "seed": seed, "steps": steps,
        "steps_to_threshold": hit, "final_rel_l2": curve[-1][2],
        "best_rel_l2": min(c[2] for c in curve), "wall_s": round(wall, 1), "curve": curve,
        "config": {k: getattr(args, k) for k in (
            "width", "depth", "n_col", "n_ic", "ic_batch", "sigma", "beta", "weight_decay",
            "embedding", "eval_every", "threshold", "collocation")},
    }


if args.time_only:
    for kind in ("adamw", "snr1"):
        r = run(kind, 1e-3, 0, 2 * args.eval_every)  # first chunk includes compile
        r2 = run(kind, 1e-3, 0, 4 * args.eval_every)
        print(kind, "wall for 2 vs 4 chunks:", r["wall_s"], r2["wall_s"],
              "-> approx ms/step incl. eval:", round(1000 * (r2["wall_s"] - r["wall_s"]) / (2 * args.eval_every), 2))
    sys.exit()

arms = args.arms or (
    [f"adamw@{lr:g}" for lr in args.adamw_lrs]
    + [f"snr1@{lr:g}" for lr in args.snr_lrs]
    + [f"snrf@{lr:g}" for lr in args.snr_lrs]
)
done = set()
if os.path.exists(args.out):
    with open(args.out) as f:
        for line in f:
            r = json.loads(line)
            if (r["config"]["embedding"], r["config"].get("collocation", "fresh"), r["config"]["sigma"],
                    r["steps"]) == (args.embedding, args.collocation, args.sigma, args.steps):
                done.add((r["arm"], r["seed"]))
os.makedirs(os.path.dirname(args.out), exist_ok=True)
for seed in args.seeds:  # seed-major: a partial run still covers every arm
    for arm in arms:
        kind, lr = arm.split("@")
        name = f"{kind}@{float(lr):g}"
        if (name, seed) in done:
            continue
        r = run(kind, float(lr), seed, args.steps)
        print(f"{name:14s} seed {seed}: steps to <= {args.threshold}: {r['steps_to_threshold']}, "
              f"final {r['final_rel_l2']:.3f}, best {r['best_rel_l2']:.3f}, mean gate {r['mean_gate']}, "
              f"{r['wall_s']} s", flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(r) + "\n")
