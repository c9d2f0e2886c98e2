"""DPO under noisy preferences: Adam, cDPO, IPO and SNRAdam on a tiny
synthetic language (issue 6). A small synthetic reproduction of the
mechanism, not of the paper's Qwen2.5 / UltraFeedback numbers.

    KERAS_BACKEND=jax python benchmarks/dpo.py            # full grid, resumes
    python benchmarks/dpo.py --report                     # table + plot only

Per seed: a random Markov-chain language (12 tokens), a 1-block causal
transformer pretrained on it (the frozen reference), preference pairs whose
two completions are sampled from the reference and labelled by
Bradley-Terry on a known reward (a fixed score per token), then 0 / 30 / 40 %
of the training labels flipped. Every arm starts from the reference weights
and trains with beta = 0.1 on the same pairs; the learning rate of each arm
is picked per noise level by median (over seeds) final reward accuracy on a
held-out clean validation split. Metrics on a separate clean test split.
One JSON line per finished run in results/dpo.jsonl; reruns skip them.
"""

import argparse
import json
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
from _common import set_threads  # noqa: E402  (benchmarks/ is on sys.path)

os.environ.setdefault("KERAS_BACKEND", "jax")
set_threads(1)

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_snr  # noqa: E402
from tasks import dpo  # noqa: E402
from tasks.optimizer_state import mean_gate  # noqa: E402

RESULTS = os.path.join(HERE, "results")
JSONL = os.path.join(RESULTS, "dpo.jsonl")
BETA = 0.1
FLIPS = (0.0, 0.3, 0.4)
N_TRAIN, N_VAL, N_TEST, N_SAMPLE = 512, 256, 512, 256
BATCH = 32
ALPHA_FINITE = keras_snr.finite_dataset_alpha(BATCH, N_TRAIN)
# arm -> (loss kind, label smoothing or None for "= flip rate", optimizer factory)
ARMS = {
    "adam": ("dpo", 0.0, lambda: keras.optimizers.Adam()),
    "cdpo_eps0.2": ("dpo", 0.2, lambda: keras.optimizers.Adam()),
    "cdpo_oracle": ("dpo", None, lambda: keras.optimizers.Adam()),
    "ipo": ("ipo", 0.0, lambda: keras.optimizers.Adam()),
    "snr_a1": ("dpo", 0.0, lambda: keras_snr.SNRAdam(alpha=1.0, weight_decay=None)),
    "snr_afinite": ("dpo", 0.0, lambda: keras_snr.SNRAdam(alpha=ALPHA_FINITE, weight_decay=None)),
}
LRS = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)


LANG_SHAPE = dict(vocab=12, prompt_len=4, completion_len=8)
_MODELS = {}


def models():
    """The LM, its pair model and jitted helpers, built once and reused
    across seeds (weights are reset per seed) so JAX traces them once."""
    if not _MODELS:
        seq_len = LANG_SHAPE["prompt_len"] + LANG_SHAPE["completion_len"]
        lm = dpo.causal_lm(LANG_SHAPE["vocab"], seq_len, dim=32, heads=2, blocks=1)
        pairs_model, _ = dpo.pair_model(lm, LANG_SHAPE["prompt_len"], seq_len)
        assert [id(v) for v in pairs_model.trainable_variables] == \
            [id(v) for v in lm.trainable_variables]

        @jax.jit
        def logits(tv, tokens):
            return lm.stateless_call(tv, [], tokens)[0]

        @jax.jit
        def seq_logp(tv, tokens):
            return dpo.sequence_logp(logits(tv, tokens), tokens, LANG_SHAPE["prompt_len"])

        _MODELS.update(lm=lm, pairs_model=pairs_model, logits=logits, seq_logp=seq_logp)
    return _MODELS


def setup(seed, args):
    """Language, pretrained frozen reference, pairs with reference log-probs."""
    rng = np.random.default_rng(seed)
    lang = dpo.Language(seed=seed, **LANG_SHAPE)
    env = dict(models())
    lm = env["lm"]
    keras.utils.set_random_seed(seed)
    fresh = dpo.causal_lm(lang.vocab, lang.seq_len, dim=32, heads=2, blocks=1)
    lm.set_weights(fresh.get_weights())
    text = lang.sample(args.pretrain_seqs, rng)
    lm.compile(keras.optimizers.Adam(3e-3),
               keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = lm.fit(text[:, :-1], text[:, 1:], batch_size=64,
                  epochs=args.pretrain_epochs, verbose=0)
    ref = [np.asarray(v) for v in lm.trainable_variables]
    ref_fn = lambda t: np.asarray(env["logits"](ref, t))  # noqa: E731
    data = {name: dpo.preference_pairs(lang, ref_fn, n, rng)
            for name, n in (("train", N_TRAIN), ("val", N_VAL), ("test", N_TEST))}
    for d in data.values():
        d["ref_a"], d["ref_b"] = (np.asarray(env["seq_logp"](ref, d[k])) for k in "ab")
        d["distinct"] = d["diff"] != 0
    prompts = lang.sample(N_SAMPLE, rng)[:, :lang.prompt_len]
    env.update(lang=lang, ref=ref, data=data, prompts=prompts,
               pretrain_loss=float(hist.history["loss"][-1]),
               entropy_floor=markov_entropy(lang))
    return env


def markov_entropy(lang):
    """Per-token entropy of the chain (stationary-free: uniform start)."""
    t = lang.transition
    return float(-(t * np.log(t + 1e-30)).sum(1).mean())


def evaluate(env, tv, train, rng):
    d, beta = env["data"], BETA
    out = {}
    for split in ("val", "test"):
        s = d[split]
        ra = beta * (np.asarray(env["seq_logp"](tv, s["a"])) - s["ref_a"])
        rb = beta * (np.asarray(env["seq_logp"](tv, s["b"])) - s["ref_b"])
        keep = s["distinct"]
        out[f"{split}_acc"] = dpo.reward_accuracy(ra[keep], rb[keep], s["clean"][keep])
        if split == "test":
            out["drift"] = float(np.mean(np.abs(np.concatenate([ra, rb]))))
    t = train
    ra = np.asarray(env["seq_logp"](tv, t["a"])) - t["ref_a"]
    rb = np.asarray(env["seq_logp"](tv, t["b"])) - t["ref_b"]
    fl = t["flipped"]
    agree = (ra > rb) == (t["y"] > 0.5)
    out["train_fit_flipped"] = float(agree[fl].mean()) if fl.any() else None
    out["train_fit_clean"] = float(agree[~fl].mean())
    sample = dpo.sample_completions(lambda x: np.asarray(env["logits"](tv, x)),
                                     env["prompts"], env["lang"].completion_len, rng)
    out["kl"] = dpo.token_kl(env["logits"](tv, sample), env["logits"](env["ref"], sample),
                              env["lang"].prompt_len)
    out["sample_reward"] = float(env["lang"].reward(sample).mean())
    return out


def make_step(env, arm):
    kind, _, factory = ARMS[arm]
    opt = factory()
    model = env["pairs_model"]
    opt.build(model.trainable_variables)

    def loss_of(tv, batch):
        h = model.stateless_call(tv, [], list(batch[:4]))[0]
        if kind == "ipo":
            return jax.numpy.mean(dpo.ipo_loss(batch[4], h, BETA))
        # label smoothing enters traced (batch[5]), so one trace serves all flips
        return jax.numpy.mean(dpo.dpo_loss(batch[4], h, BETA, batch[5]))

    @jax.jit
    def step(tv, ov, batch):
        loss, grads = jax.value_and_grad(loss_of)(tv, batch)
        tv, ov = opt.stateless_apply(ov, grads, tv)
        return tv, ov, loss

    # SNRAdam's mean gate q over all coordinates (`gate_summary()`), read
    # from the stateless optimizer values; None for the other optimizers.
    gate = jax.jit(lambda ov: mean_gate(opt, ov)) if isinstance(opt, keras_snr.SNRAdam) else None
    init = [np.asarray(v) for v in opt.variables]
    # The learning rate is state too: set per run in the stateless values.
    lr_index = next(i for i, v in enumerate(opt.variables) if v.name == "learning_rate")
    return opt, step, init, lr_index, gate


def run_one(env, arm, flip, lr, seed, args, cache):
    if arm not in cache:
        cache[arm] = make_step(env, arm)
    opt, step, init, lr_index, gate = cache[arm]
    eps = np.float32(flip if ARMS[arm][1] is None else ARMS[arm][1])
    ov = list(init)
    ov[lr_index] = np.asarray(lr, dtype=init[lr_index].dtype)
    tv = list(env["ref"])
    train = dpo.flip_labels(env["data"]["train"], flip,
                             np.random.default_rng([seed, int(flip * 100)]))
    rng = np.random.default_rng([seed, 7])
    eval_rng = np.random.default_rng([seed, 11])
    curve, losses, n_step = [], [], 0
    start = time.time()

    def record():
        point = {"step": n_step, "epoch": n_step * BATCH / N_TRAIN,
                 **evaluate(env, tv, train, eval_rng)}
        if gate is not None:  # no gate before the first update
            point["gate_q"] = float(gate(ov)) if n_step else None
        point["train_loss"] = float(np.mean(losses)) if losses else None
        losses.clear()
        curve.append(point)

    record()
    for _ in range(args.epochs):
        order = rng.permutation(N_TRAIN)
        for i in range(0, N_TRAIN - BATCH + 1, BATCH):
            idx = order[i:i + BATCH]
            batch = (train["a"][idx], train["b"][idx], train["ref_a"][idx],
                     train["ref_b"][idx], train["y"][idx], eps)
            tv, ov, loss = step(tv, ov, batch)
            losses.append(float(loss))
            n_step += 1
            if n_step % args.eval_every == 0:
                record()
    if curve[-1]["step"] != n_step:
        record()
    return {"arm": arm, "flip": flip, "lr": lr, "seed": seed, "beta": BETA,
            "epochs": args.epochs, "batch": BATCH, "n_train": N_TRAIN,
            "label_smoothing": flip if ARMS[arm][1] is None else ARMS[arm][1],
            "loss": ARMS[arm][0], "wall_s": time.time() - start,
            "pretrain_loss": env["pretrain_loss"], "entropy_floor": env["entropy_floor"],
            "final": curve[-1], "curve": curve}


def run_grid(args):
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    done, cache = set(), {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            for line in f:
                r = json.loads(line)
                done.add((r["arm"], r["flip"], r["lr"], r["seed"]))
    for seed in args.seeds:
        todo = [(a, f, lr) for f in args.flips for a in args.arms for lr in args.lrs
                if (a, f, lr, seed) not in done
                and not (a == "cdpo_oracle" and f == 0)]  # = adam at 0 % flips
        if not todo:
            continue
        t0 = time.time()
        env = setup(seed, args)
        print(f"seed {seed}: setup {time.time() - t0:.1f}s, pretrain loss "
              f"{env['pretrain_loss']:.3f} (chain entropy {env['entropy_floor']:.3f})",
              flush=True)
        for arm, flip, lr in todo:
            r = run_one(env, arm, flip, lr, seed, args, cache)
            with open(args.out, "a") as f:
                f.write(json.dumps(r) + "\n")
            fin = r["final"]
            print(f"seed {seed} flip {flip} {arm:12s} lr {lr:g}: val {fin['val_acc']:.3f} "
                  f"test {fin['test_acc']:.3f} drift {fin['drift']:.3f} kl {fin['kl']:.3f} "
                  f"R {fin['sample_reward']:.2f} ({r['wall_s']:.1f}s)", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS))
    p.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    p.add_argument("--flips", type=float, nargs="+", default=list(FLIPS))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=40)
    p.add_argument("--pretrain-seqs", type=int, default=4096)
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--out", default=JSONL)
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    if not args.report:
        run_grid(args)
    report(args.out)



LABELS = {
    "adam": "Adam (sigmoid DPO)",
    "cdpo_eps0.2": "Adam + cDPO, eps 0.2",
    "cdpo_oracle": "Adam + cDPO, eps = flip rate",
    "ipo": "Adam + IPO",
    "snr_a1": "SNRAdam, alpha 1",
    "snr_afinite": f"SNRAdam, alpha b/(n-b) = {ALPHA_FINITE:.3f}",
}


def load(path):
    runs = []
    with open(path) as f:
        for line in f:
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut short by a killed run
    return runs


def fmt(xs, digits=3):
    xs = np.asarray(xs, dtype=float)
    return f"{np.median(xs):.{digits}f} [{xs.min():.{digits}f}, {xs.max():.{digits}f}]"


def select(runs, arm, flip):
    """lr with the best median (over seeds) final validation accuracy."""
    by_lr = {}
    for r in runs:
        if r["arm"] == arm and r["flip"] == flip:
            by_lr.setdefault(r["lr"], []).append(r)
    if not by_lr:
        return None, []
    lr = max(by_lr, key=lambda lr: (np.median([r["final"]["val_acc"] for r in by_lr[lr]]),
                                    len(by_lr[lr])))
    return lr, sorted(by_lr[lr], key=lambda r: r["seed"])


def best_checkpoint(runs, seed, max_drift=None):
    """Over every lr and checkpoint of these runs for one seed: the point with
    the best validation accuracy (optionally among those with drift <= max_drift)."""
    points = [c for r in runs if r["seed"] == seed for c in r["curve"] if c["step"] > 0
              and (max_drift is None or c["drift"] <= max_drift)]
    return max(points, key=lambda c: c["val_acc"]) if points else None


def report(path):
    runs = load(path)
    if not runs:
        print("no runs yet")
        return
    seeds = sorted({r["seed"] for r in runs})
    lines = ["| flip | arm | lr (val-selected) | seeds | reward acc (test) | drift, mean abs(beta log pi/pi_ref) "
             "| KL to ref | true reward of samples, gain over reference | gate q (mean) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    summary = {}
    for flip in sorted({r["flip"] for r in runs}):
        for arm in ARMS:
            lr, sel = select(runs, arm, flip)
            if not sel:
                continue
            fin = [r["final"] for r in sel]
            gain = [r["final"]["sample_reward"] - r["curve"][0]["sample_reward"] for r in sel]
            q = [f["gate_q"] for f in fin if f.get("gate_q") is not None]
            summary[(arm, flip)] = {
                "lr": lr, "acc": np.median([f["test_acc"] for f in fin]),
                "drift": np.median([f["drift"] for f in fin]), "runs": sel}
            lines.append(
                f"| {flip:.0%} | {LABELS[arm]} | {lr:g} | {len(sel)} | "
                f"{fmt([f['test_acc'] for f in fin])} | {fmt([f['drift'] for f in fin])} | "
                f"{fmt([f['kl'] for f in fin], 2)} | {fmt(gain, 2)} | "
                + (fmt(q) if q else "-") + " |")
    # Fair comparisons: early stopping, and Adam restricted to SNRAdam's drift.
    fair = ["| flip | SNRAdam arm | SNRAdam acc / drift | Adam early-stopped acc / drift "
            "| Adam best with drift <= SNRAdam's acc / drift |", "| --- | --- | --- | --- | --- |"]
    for (arm, flip), s_ in summary.items():
        if not arm.startswith("snr"):
            continue
        adam_runs = [r for r in runs if r["arm"] == "adam" and r["flip"] == flip]
        es, matched = [], []
        for r in s_["runs"]:
            es.append(best_checkpoint(adam_runs, r["seed"]))
            matched.append(best_checkpoint(adam_runs, r["seed"], r["final"]["drift"]))
        es, matched = [c for c in es if c], [c for c in matched if c]
        fin = [r["final"] for r in s_["runs"]]

        def pair(points):
            if not points:
                return "none"
            return (f"{np.median([c['test_acc'] for c in points]):.3f} / "
                    f"{np.median([c['drift'] for c in points]):.3f} (n={len(points)})")
        fair.append(f"| {flip:.0%} | {LABELS[arm]} | {pair(fin)} | {pair(es)} | {pair(matched)} |")
    targets = []
    for flip in sorted({f for _, f in summary}):
        a, c = summary.get(("adam", flip)), summary.get(("cdpo_oracle", flip)) or summary.get(("cdpo_eps0.2", flip))
        for arm in ("snr_a1", "snr_afinite"):
            s_ = summary.get((arm, flip))
            if not (a and s_):
                continue
            text = (f"- {flip:.0%} flips, {LABELS[arm]}: accuracy x{s_['acc'] / a['acc']:.3f} of Adam's "
                    f"(target >= 1.13), drift {a['drift'] / s_['drift']:.2f}x smaller (target >= 3)")
            for carm in ("cdpo_eps0.2", "cdpo_oracle"):
                c = summary.get((carm, flip))
                if c:
                    text += (f"; vs {LABELS[carm]}: accuracy {s_['acc'] - c['acc']:+.3f}, "
                             f"drift x{s_['drift'] / c['drift']:.2f}")
            targets.append(text)
    same = ["| flip | lr | " + " | ".join(LABELS[a] for a in ARMS) + " |",
            "| --- | --- |" + " --- |" * len(ARMS)]
    for flip in sorted({r["flip"] for r in runs}):
        for lr in (1e-4, 1e-3):
            cells = []
            for arm in ARMS:
                fin = [r["final"] for r in runs if r["arm"] == arm and r["flip"] == flip
                       and r["lr"] == lr]
                cells.append(f"{np.median([f['test_acc'] for f in fin]):.3f} / "
                             f"{np.median([f['drift'] for f in fin]):.3f}" if fin else "-")
            same.append(f"| {flip:.0%} | {lr:g} | " + " | ".join(cells) + " |")
    out = ("\n".join(lines) + "\n\n" + "\n".join(fair) + "\n\n"
           + "Same learning rate for every arm (untuned), test reward accuracy / drift, "
           "median over seeds:\n\n" + "\n".join(same) + "\n\n" + "\n".join(targets))
    print(f"Seeds present: {seeds}\n\n" + out)
    plot(runs, summary, os.path.splitext(path)[0] + ".png")


def plot(runs, summary, png, flip=0.3, same_lr=1e-3):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for arm in ARMS:
        s_ = summary.get((arm, flip))
        if not s_:
            continue
        curves = [r["curve"] for r in s_["runs"]]
        n = min(len(c) for c in curves)
        epoch = [c["epoch"] for c in curves[0][:n]]
        for ax, key in ((axes[0], "test_acc"), (axes[1], "drift")):
            vals = np.array([[c[key] for c in curve[:n]] for curve in curves])
            line, = ax.plot(epoch, np.median(vals, 0), label=f"{LABELS[arm]} (lr {s_['lr']:g})")
            ax.fill_between(epoch, vals.min(0), vals.max(0), color=line.get_color(), alpha=0.15)
        finals = [(r["final"]["drift"], r["final"]["test_acc"]) for r in runs
                  if r["arm"] == arm and r["flip"] == flip]
        axes[2].scatter(*zip(*finals), s=12, label=LABELS[arm])
        same = [r["curve"] for r in runs if r["arm"] == arm and r["flip"] == flip
                and r["lr"] == same_lr]
        if same:
            n = min(len(c) for c in same)
            vals = np.array([[c["test_acc"] for c in curve[:n]] for curve in same])
            axes[3].plot([c["epoch"] for c in same[0][:n]], np.median(vals, 0), label=LABELS[arm])
    axes[0].set(xlabel="epoch", ylabel="held-out reward accuracy",
                title=f"{flip:.0%} flipped labels (median, min-max over seeds)")
    axes[1].set(xlabel="epoch", ylabel="mean |beta log pi/pi_ref|", yscale="log")
    axes[1].set_ylim(bottom=1e-3)
    axes[2].set(xlabel="final drift (every lr, seed)", ylabel="final reward accuracy",
                xscale="log", title="accuracy vs drift, all runs")
    axes[3].set(xlabel="epoch", ylabel="held-out reward accuracy",
                title=f"every arm at the same lr {same_lr:g} (untuned; median)")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


if __name__ == "__main__":
    main()
