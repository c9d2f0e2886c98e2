"""Grokking: steps to 95 % / 99 % held-out accuracy, SNRAdam vs AdamW vs
Grokfast-EMA, over seeds.

Each run trains one optimizer configuration ("arm") on one task from one
seed. The seed fixes the train/held-out split, the initial weights and the
sequence of minibatches, so arms with the same seed differ only in the
optimizer. Held-out accuracy (full held-out set) is evaluated every
`--eval-every` steps; a run stops once it reaches 99 % or at `--cap` steps
(then it did not grok "by the cap" and is reported so, not dropped). For
SNRAdam arms the mean gate openness q (over all coordinates,
`SNRAdam.gate_summary()`) is recorded at every evaluation.

Arms are strings `KIND:key=value,...`, with KIND one of
- `adamw` (keras AdamW), keys lr, wd;
- `snr` (keras_snr.SNRAdam), keys lr, wd, gate (snr|soft|hard), softness,
  alpha (a number or `fin` for b/(n-b)), rho;
- `grokfast` (AdamW on Grokfast-EMA gradients, benchmarks/tasks/grokking.py), keys
  lr, wd, a (EMA decay), lamb.
All use beta_1 0.9, beta_2 0.98, epsilon 1e-8, batch `--batch`.

Runs are appended to `--out` as one JSON line each; finished (task, arm,
seed) triples already in the file are skipped, so a re-run resumes.
JAX backend only (a jitted `stateless_call` + `stateless_apply` loop), one
CPU thread.

Usage:
    python benchmarks/grokking.py --task add_mlp --seeds 0 1 2 3 4 \
        --arms adamw:lr=1e-3,wd=1 snr:lr=1e-3,wd=1,alpha=fin
    python benchmarks/grokking.py --report   # table + plot from the jsonl
"""

import argparse
import json
import os
import time

os.environ["KERAS_BACKEND"] = "jax"
HERE = os.path.dirname(os.path.abspath(__file__))

from _common import set_threads  # noqa: E402  (benchmarks/ is on sys.path)

set_threads(1)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_snr  # noqa: E402
from tasks import grokking as G  # noqa: E402
from tasks.optimizer_state import mean_gate  # noqa: E402

RESULTS = os.path.join(HERE, "results")

TASKS = {
    # The paper's task: a * b^-1 mod 97, 25 % of pairs, 2-layer d128 transformer.
    "div_transformer": dict(operation="div", fraction=0.25, model="transformer"),
    # (a + b) mod 97 with an MLP.
    "add_mlp": dict(operation="add", fraction=0.3, model="mlp"),
    # Held-back variant: a * b^-1 mod 97 with the MLP, 40 % of pairs.
    "div_mlp": dict(operation="div", fraction=0.4, model="mlp"),
}


def parse_arm(spec):
    kind, _, rest = spec.partition(":")
    params = dict(item.split("=") for item in rest.split(",") if item)
    assert kind in ("adamw", "snr", "grokfast"), spec
    return kind, params


def make_optimizer(spec, n_train, batch):
    kind, p = parse_arm(spec)
    common = dict(
        learning_rate=float(p.get("lr", 1e-3)),
        weight_decay=float(p.get("wd", 1.0)),
        beta_1=0.9,
        beta_2=0.98,
        epsilon=1e-8,
    )
    if kind == "adamw":
        return keras.optimizers.AdamW(**common)
    if kind == "grokfast":
        return G.GrokfastAdamW(
            grokfast_alpha=float(p.get("a", 0.98)),
            grokfast_lamb=float(p.get("lamb", 2.0)),
            **common,
        )
    alpha = p.get("alpha", "fin")
    alpha = keras_snr.finite_dataset_alpha(batch, n_train) if alpha == "fin" else float(alpha)
    return keras_snr.SNRAdam(
        gate=p.get("gate", "snr"),
        softness=float(p.get("softness", 1.0)),
        alpha=alpha,
        rho=float(p.get("rho", 0.99)),
        **common,
    )


def run(task, spec, seed, cap, eval_every, batch, fraction=None, verbose=False):
    cfg = dict(TASKS[task])
    cfg["fraction"] = fraction or cfg["fraction"]
    keras.utils.set_random_seed(seed)
    is_tf = cfg["model"] == "transformer"
    (xt, yt), (xv, yv) = G.modular_data(
        cfg["operation"], 97, cfg["fraction"], seed, equals_token=is_tf
    )
    model = G.transformer() if is_tf else G.mlp()
    optimizer = make_optimizer(spec, len(yt), batch)
    optimizer.build(model.trainable_variables)
    is_snr = isinstance(optimizer, keras_snr.SNRAdam)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    xt, yt, xv, yv = map(jnp.asarray, (xt, yt, xv, yv))

    def loss(tv, ntv, x, y):
        logits, ntv = model.stateless_call(tv, ntv, x, training=True)
        return loss_fn(y, logits), ntv

    grad_fn = jax.value_and_grad(loss, has_aux=True)

    def step(state, key):
        tv, ntv, ov = state
        idx = jax.random.choice(key, len(yt), (batch,), replace=False)
        (value, ntv), grads = grad_fn(tv, ntv, xt[idx], yt[idx])
        tv, ov = optimizer.stateless_apply(ov, grads, tv)
        return (tv, ntv, ov), value

    @jax.jit
    def train_chunk(tv, ntv, ov, key):
        keys = jax.random.split(key, eval_every)
        (tv, ntv, ov), losses = jax.lax.scan(step, (tv, ntv, ov), keys)
        return tv, ntv, ov, jnp.mean(losses)

    @jax.jit
    def evaluate(tv, ntv, ov):
        def accuracy(x, y):
            logits, _ = model.stateless_call(tv, ntv, x)
            return jnp.mean(jnp.argmax(logits, -1) == y)

        gate = mean_gate(optimizer, ov) if is_snr else jnp.nan
        return accuracy(xv, yv), accuracy(xt, yt), gate

    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    ov = [v.value for v in optimizer.variables]
    key = jax.random.PRNGKey(seed)
    history = []
    start = time.perf_counter()
    compiled_at = None
    for t in range(eval_every, cap + 1, eval_every):
        key, sub = jax.random.split(key)
        tv, ntv, ov, train_loss = train_chunk(tv, ntv, ov, sub)
        val_acc, train_acc, gate = (float(x) for x in evaluate(tv, ntv, ov))
        if compiled_at is None:
            compiled_at = (time.perf_counter(), t)
        history.append([t, round(val_acc, 5), round(train_acc, 5),
                        round(float(train_loss), 5), None if np.isnan(gate) else round(gate, 5)])
        if verbose and t % 1000 == 0:
            print(t, history[-1], flush=True)
        if val_acc >= 0.99:
            break
    wall = time.perf_counter() - start
    steps_after = history[-1][0] - compiled_at[1]
    ms = 1000 * (time.perf_counter() - compiled_at[0]) / steps_after if steps_after else None
    hist = [(h[0], h[1]) for h in history]
    return dict(
        task=task, fraction=cfg["fraction"], arm=spec, seed=seed, cap=cap, batch=batch, eval_every=eval_every,
        n_train=int(len(yt)), backend="jax", threads=1,
        steps95=G.steps_to(hist, 0.95), steps99=G.steps_to(hist, 0.99),
        wall_s=round(wall, 1), ms_per_step=ms and round(ms, 2), history=history,
    )


def load(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _fmt(values, cap):
    """median [min, max] of steps, a run that never got there counted as > cap."""
    got = sorted(v for v in values if v is not None)
    missed = len(values) - len(got)
    med = np.median([np.inf if v is None else v for v in values])
    med = f"> {cap}" if np.isinf(med) else f"{med:.0f}"
    spread = f"{min(got)}–{max(got)}" if got else "–"
    return f"{med} [{spread}]" + (f", {missed} not by cap" if missed else "")


def report(rows, min_seeds):
    """Markdown table per task (stdout) and grokking.png."""
    import warnings

    import matplotlib

    warnings.filterwarnings("ignore", "All-NaN slice")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for r in rows:
        groups.setdefault((r["task"], r["fraction"], r["cap"]), {}).setdefault(r["arm"], []).append(r)
    plotted = [k for k, arms in groups.items() if any(len(v) >= min_seeds for v in arms.values())]
    fig, axes = plt.subplots(2, max(len(plotted), 1), figsize=(6 * max(len(plotted), 1), 8), squeeze=False)
    for (task, fraction, cap), arms in sorted(groups.items()):
        print(f"\n### {task}, train fraction {fraction}, cap {cap} steps\n")
        print("| arm | seeds | steps to 95 % median [min–max] | steps to 99 % median [min–max] "
              "| wall s (median) | ms/step | mean gate q at 95 % | mean gate q, last eval |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for spec, runs in sorted(arms.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            runs = sorted(runs, key=lambda r: r["seed"])
            gates = [next((h[4] for h in r["history"] if h[1] >= 0.95), None) for r in runs]
            gates = [g for g in gates if g is not None]
            last = [r["history"][-1][4] for r in runs if r["history"][-1][4] is not None]
            print(f"| `{spec}` | {','.join(str(r['seed']) for r in runs)} "
                  f"| {_fmt([r['steps95'] for r in runs], cap)} | {_fmt([r['steps99'] for r in runs], cap)} "
                  f"| {np.median([r['wall_s'] for r in runs]):.0f} "
                  f"| {np.median([r['ms_per_step'] or np.nan for r in runs]):.1f} "
                  f"| {f'{np.median(gates):.2f}' if gates else '–'} "
                  f"| {f'{np.median(last):.2f}' if last else '–'} |")
        if (task, fraction, cap) not in plotted:
            continue
        col = plotted.index((task, fraction, cap))
        screens = 0
        for spec, runs in sorted(arms.items()):
            kind, p = parse_arm(spec)
            colour = {"adamw": "tab:blue", "snr": "tab:red", "grokfast": "tab:green"}[kind]
            if kind == "snr" and p.get("alpha") == "1":  # SNRAdam()'s default alpha
                colour = "tab:purple"
            style = dict(color=colour,
                         linestyle={"1e-3": "-", "3e-3": "--", "1e-2": ":", "3e-2": "-."}.get(p.get("lr"), "-"))
            if len(runs) < min_seeds:  # single-seed screens: gate curve only, own colour
                style = dict(color=plt.cm.Dark2(screens % 8), linewidth=1)
                screens += 1
            steps = np.arange(runs[0]["eval_every"], cap + 1, runs[0]["eval_every"])
            if len(runs) >= min_seeds:
                curves = []
                for r in runs:
                    h = np.array([x[1] for x in r["history"]])
                    curves.append(np.concatenate([h, np.full(len(steps) - len(h), h[-1])]))
                axes[0, col].plot(steps, np.median(curves, 0), label=spec, **style)
            if kind == "snr":
                gates = []
                for r in runs:
                    g = np.array([x[4] for x in r["history"]], float)
                    gates.append(np.concatenate([g, np.full(len(steps) - len(g), np.nan)]))
                label = spec if len(runs) >= min_seeds else f"{spec} (seed {runs[0]['seed']})"
                axes[1, col].plot(steps, np.nanmedian(gates, 0), label=label, **style)
        axes[0, col].set(title=f"{task} ({fraction:.0%} train)", xlabel="step",
                         ylabel="held-out accuracy (median over seeds)", xscale="log")
        axes[0, col].legend(fontsize=7)
        axes[1, col].set(xlabel="step", ylabel="mean gate q (SNRAdam arms)", xscale="log")
        axes[1, col].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "grokking.png"), dpi=90)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=sorted(TASKS), default="add_mlp")
    parser.add_argument("--arms", nargs="*", default=[])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--cap", type=int, default=10000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--fraction", type=float, help="override the task's train fraction")
    parser.add_argument("--out", default=os.path.join(RESULTS, "grokking.jsonl"))
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--min-seeds", type=int, default=5, help="report: plot arms with this many seeds")
    args = parser.parse_args()
    if args.report:
        return report(load(args.out), args.min_seeds)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    fraction = args.fraction or TASKS[args.task]["fraction"]
    done = {(r["task"], r["fraction"], r["arm"], r["seed"], r["cap"]) for r in load(args.out)}
    for seed in args.seeds:
        for spec in args.arms:
            if (args.task, fraction, spec, seed, args.cap) in done:
                continue
            result = run(args.task, spec, seed, args.cap, args.eval_every, args.batch, fraction, args.verbose)
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
            print(f"{args.task} {spec} seed={seed}: 95% at {result['steps95']}, "
                  f"99% at {result['steps99']} (cap {args.cap}), {result['wall_s']} s, "
                  f"{result['ms_per_step']} ms/step", flush=True)


if __name__ == "__main__":
    main()
