"""Noisy-image implicit neural representation: does SNRAdam stop the network
memorising the noise, against learning-rate-tuned Adam? (issue 5)

A Fourier-feature MLP (`benchmarks/tasks/inr.py`) is fitted to the camera image,
downsampled, plus Gaussian noise. Every `--eval-every` steps we record the
PSNR of the network's image against the noisy target (memorisation) and
against the clean image (what the user wants), and the mean SNR gate
(`SNRAdam.gate_summary()`).

Minibatches of pixels, not full batch: with b = n there is no minibatch
noise for the gate to measure and `finite_dataset_alpha(b, n)` is undefined
(it needs b < n). Each epoch is a fresh permutation of the pixels.

Per seed: one noise draw, one initialisation and one minibatch order, the
same for every arm and learning rate. One JSON line per finished run is
appended to `--out`; a re-run skips runs already there.

    KERAS_BACKEND=jax python benchmarks/inr_denoising.py            # the run
    python benchmarks/inr_denoising.py --report                     # tables + plots
"""

import argparse
import json
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

ARMS = ("adam", "snr_alpha1", "snr_finite")
CONFIG_KEYS = ("size", "steps", "batch", "eval_every", "frequencies", "scale", "width", "depth")
ARM_LABELS = {
    "adam": "Adam",
    "snr_alpha1": "SNRAdam snr gate, alpha = 1",
    "snr_finite": "SNRAdam snr gate, alpha = b/(n-b)",
}


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--sigmas", default="0.1,0.2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--lrs", default="3e-5,1e-4,3e-4,1e-3,3e-3")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--frequencies", type=int, default=128)
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(RESULTS, "inr_denoising.jsonl"))
    p.add_argument("--report", action="store_true", help="tables and plots from --out")
    return p.parse_args()


def config_of(args):
    return {k: getattr(args, k) for k in CONFIG_KEYS}


def make_optimizer(arm, lr, batch, n):
    import keras

    import keras_snr

    if arm == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    alpha = 1.0 if arm == "snr_alpha1" else keras_snr.finite_dataset_alpha(batch, n)
    return keras_snr.SNRAdam(learning_rate=lr, gate="snr", alpha=alpha, weight_decay=0.0)


def run_one(args, sigma, seed, arm, lr):
    import jax
    import keras
    import numpy as np

    import keras_snr
    from tasks import inr
    from tasks.optimizer_state import mean_gate

    clean = inr.camera_image(args.size)
    noisy = inr.noisy_copy(clean, sigma, seed=1000 + seed)
    coords = inr.pixel_grid(args.size)
    target = noisy.reshape(-1, 1)
    n = len(coords)

    keras.utils.set_random_seed(seed)
    model = inr.fourier_mlp(args.frequencies, args.scale, args.width, args.depth)
    optimizer = make_optimizer(arm, lr, args.batch, n)
    optimizer.build(model.trainable_variables)

    def loss_fn(tv, ntv, x, y):
        pred, ntv = model.stateless_call(tv, ntv, x)
        return keras.ops.mean(keras.ops.square(pred - y)), ntv

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @jax.jit
    def train_step(tv, ntv, ov, idx):
        (loss, ntv), grads = grad_fn(tv, ntv, x_all[idx], y_all[idx])
        tv, ov = optimizer.stateless_apply(ov, grads, tv)
        return loss, tv, ntv, ov

    @jax.jit
    def predict(tv, ntv, x):
        return model.stateless_call(tv, ntv, x)[0]

    # The mean gate q over all coordinates (`SNRAdam.gate_summary()`), read
    # from the stateless optimizer values; None for Adam.
    gate = None
    if isinstance(optimizer, keras_snr.SNRAdam):
        gate = jax.jit(lambda ov: mean_gate(optimizer, ov))

    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    ov = [v.value for v in optimizer.variables]
    x_all, y_all = jax.numpy.asarray(coords), jax.numpy.asarray(target)

    rng = np.random.default_rng(seed)  # minibatch order: same for every arm
    per_epoch = n // args.batch
    curve = {"step": [], "psnr_noisy": [], "psnr_clean": [], "gate": [], "loss": []}
    order, start = None, time.perf_counter()
    for step in range(1, args.steps + 1):
        k = (step - 1) % per_epoch
        if k == 0:
            order = rng.permutation(n)
        idx = order[k * args.batch:(k + 1) * args.batch]
        loss, tv, ntv, ov = train_step(tv, ntv, ov, idx)
        if step % args.eval_every == 0 or step == args.steps:
            image = np.asarray(predict(tv, ntv, x_all)).reshape(clean.shape)
            curve["step"].append(step)
            curve["psnr_noisy"].append(inr.psnr(image, noisy))
            curve["psnr_clean"].append(inr.psnr(image, clean))
            curve["gate"].append(None if gate is None else float(gate(ov)))
            curve["loss"].append(float(loss))
            if curve["psnr_clean"][-1] >= max(curve["psnr_clean"]):
                peak_image = image
    seconds = time.perf_counter() - start
    for name in ("psnr_noisy", "psnr_clean", "gate", "loss"):  # 5 digits keep the file small
        curve[name] = [None if x is None else float(f"{x:.5g}") for x in curve[name]]
    pc = curve["psnr_clean"]
    peak = int(np.argmax(pc))
    record = dict(
        sigma=sigma, seed=seed, arm=arm, lr=lr, **config_of(args), n=n,
        noisy_input_psnr=inr.psnr(noisy, clean),
        final_clean=pc[-1], final_noisy=curve["psnr_noisy"][-1],
        peak_clean=pc[peak], peak_step=curve["step"][peak],
        seconds=seconds, curve=curve,
    )
    if seed == 0:  # images for the side-by-side figure; one seed keeps the file small
        record.update(final_image=image.astype("float64").round(3).tolist(),
                      peak_image=peak_image.astype("float64").round(3).tolist())
    return record


def key(r):
    return (r["sigma"], r["seed"], r["arm"], r["lr"]) + tuple(r[k] for k in CONFIG_KEYS)


def load(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    args = parse_args()
    if args.report:
        return report(args)
    from _common import set_threads  # benchmarks/ is on sys.path

    set_threads(args.threads)
    done = {key(r) for r in load(args.out)}
    sigmas = [float(s) for s in args.sigmas.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    lrs = [float(s) for s in args.lrs.split(",")]
    arms = args.arms.split(",")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    # Seed-major: a partial run has whole seeds for every arm and lr.
    for seed in seeds:
        for sigma in sigmas:
            for arm in arms:
                for lr in lrs:
                    probe = dict(sigma=sigma, seed=seed, arm=arm, lr=lr, **config_of(args))
                    if key(probe) in done:
                        continue
                    r = run_one(args, sigma, seed, arm, lr)
                    print(f"sigma={sigma} seed={seed} {arm:11s} lr={lr:g}: clean final "
                          f"{r['final_clean']:.2f} peak {r['peak_clean']:.2f} @ {r['peak_step']}"
                          f"  noisy final {r['final_noisy']:.2f}  ({r['seconds']:.0f} s)",
                          flush=True)
                    with open(args.out, "a") as f:
                        f.write(json.dumps(r) + "\n")


def spread(xs, fmt=".2f"):
    """'median [min, max]' over seeds."""
    import numpy as np

    return f"{np.median(xs):{fmt}} [{min(xs):{fmt}}, {max(xs):{fmt}}]"


def report(args):
    """Markdown tables to stdout, curves and reconstructions as PNGs."""
    import numpy as np

    wanted = config_of(args)
    records = [r for r in load(args.out) if all(r[k] == v for k, v in wanted.items())]
    sigmas = sorted({r["sigma"] for r in records})
    arms = [a for a in ARMS if any(r["arm"] == a for r in records)]
    runs = {}  # (sigma, arm, lr) -> {seed: record}
    for r in records:
        runs.setdefault((r["sigma"], r["arm"], r["lr"]), {})[r["seed"]] = r
    seeds = sorted({r["seed"] for r in records})
    complete = {k: v for k, v in runs.items() if sorted(v) == seeds}
    print(f"config: {wanted}; seeds {seeds}; {len(records)} runs\n")
    # A partial run: keep the noise levels where every arm has all seeds.
    sigmas = [s for s in sigmas if all(any(k[:2] == (s, a) for k in complete) for a in arms)]

    def med(sigma, arm, lr, field):
        return float(np.median([r[field] for r in complete[(sigma, arm, lr)].values()]))

    def tuned(sigma, arm, field):
        lrs = [lr for (s, a, lr) in complete if s == sigma and a == arm]
        return max(lrs, key=lambda lr: med(sigma, arm, lr, field)) if lrs else None

    print("### Every run (medians over seeds)\n")
    print("| sigma | optimizer | lr | final clean PSNR | peak clean PSNR | peak step | final noisy PSNR | mean gate q at end |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for sigma in sigmas:
        for arm in arms:
            for lr in sorted(lr for (s, a, lr) in complete if s == sigma and a == arm):
                rs = list(complete[(sigma, arm, lr)].values())
                gate = [r["curve"]["gate"][-1] for r in rs]
                gate = "-" if gate[0] is None else f"{np.median(gate):.3f}"
                print(f"| {sigma} | {ARM_LABELS[arm]} | {lr:g} | {med(sigma, arm, lr, 'final_clean'):.2f} "
                      f"| {med(sigma, arm, lr, 'peak_clean'):.2f} | {med(sigma, arm, lr, 'peak_step'):.0f} "
                      f"| {med(sigma, arm, lr, 'final_noisy'):.2f} | {gate} |")

    for field, what in (("final_clean", "final clean PSNR"), ("peak_clean", "peak clean PSNR")):
        print(f"\n### Learning rate tuned per optimizer by median {what}\n")
        print("| sigma (noisy input PSNR) | optimizer | lr | final clean PSNR | final noisy PSNR "
              "| peak clean PSNR | step of peak | final - Adam's final (per seed) "
              "| peak step / Adam's (per seed) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for sigma in sigmas:
            base_lr = tuned(sigma, "adam", field)
            base = complete.get((sigma, "adam", base_lr), {})
            for arm in arms:
                lr = tuned(sigma, arm, field)
                if lr is None:
                    continue
                rs = complete[(sigma, arm, lr)]
                col = lambda f, fmt=".2f": spread([r[f] for r in rs.values()], fmt)  # noqa: E731
                gain = ratio = "-"
                if arm != "adam" and base:
                    gain = spread([rs[s]["final_clean"] - base[s]["final_clean"] for s in seeds])
                    ratio = spread([rs[s]["peak_step"] / base[s]["peak_step"] for s in seeds])
                inp = np.median([r["noisy_input_psnr"] for r in rs.values()])
                print(f"| {sigma} ({inp:.2f}) | {ARM_LABELS[arm]} | {lr:g} | {col('final_clean')} "
                      f"| {col('final_noisy')} | {col('peak_clean')} | {col('peak_step', '.0f')} | {gain} | {ratio} |")
    plot(args, complete, sigmas, arms, seeds, tuned)


def plot(args, complete, sigmas, arms, seeds, tuned):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from tasks import inr

    stem = os.path.splitext(args.out)[0]
    fig, axes = plt.subplots(2, len(sigmas), figsize=(6 * len(sigmas), 8.4), squeeze=False)
    for ax, sigma in zip(axes[1], sigmas):
        # Fit to the noise against quality, every learning rate: a gate that held
        # back only the noise would put its curves above Adam's.
        for arm, color in zip(arms, ("C0", "C1", "C2")):
            for i, lr in enumerate(sorted(lr for (s, a, lr) in complete if s == sigma and a == arm)):
                rs = list(complete[(sigma, arm, lr)].values())
                ax.plot(np.median([r["curve"]["psnr_noisy"] for r in rs], 0),
                        np.median([r["curve"]["psnr_clean"] for r in rs], 0), ".-", ms=2, lw=0.8,
                        color=color, label=ARM_LABELS[arm] + " (each lr)" if i == 0 else None)
        ax.set_xlim(right=45)
        ax.set_xlabel("PSNR against the noisy target (dB): memorisation")
        ax.set_ylabel("PSNR against the clean image (dB)")
        ax.set_title(f"sigma = {sigma}: quality against fit to the noise, median over seeds", fontsize=8)
        ax.legend(fontsize=6)
    for ax, sigma in zip(axes[0], sigmas):
        for arm, color in zip(arms, ("C0", "C1", "C2")):
            lr = tuned(sigma, arm, "final_clean")
            rs = list(complete[(sigma, arm, lr)].values())
            steps = rs[0]["curve"]["step"]
            for field, style in (("psnr_clean", "-"), ("psnr_noisy", "--")):
                ys = np.array([r["curve"][field] for r in rs])
                ax.plot(steps, np.median(ys, 0), style, color=color,
                        label=f"{ARM_LABELS[arm]}, lr {lr:g}: vs {'clean' if field == 'psnr_clean' else 'noisy target'}")
                ax.fill_between(steps, ys.min(0), ys.max(0), color=color, alpha=0.15)
        ax.axhline(rs[0]["noisy_input_psnr"], color="grey", lw=0.8, label="noisy image vs clean")
        ax.set_ylim(8, 40)
        ax.set_title(f"sigma = {sigma}: median and range over {len(seeds)} seeds, lr tuned by final clean PSNR", fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel("PSNR (dB)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=110)

    # Reconstructions, seed 0: clean, noisy, Adam at its peak (oracle), each optimizer's final image.
    size = args.size
    clean = inr.camera_image(size)
    fig, axes = plt.subplots(len(sigmas), 3 + len(arms), figsize=(2.1 * (3 + len(arms)), 2.8 * len(sigmas)),
                             squeeze=False)
    for row, sigma in zip(axes, sigmas):
        noisy = inr.noisy_copy(clean, sigma, seed=1000 + 0)
        adam = complete[(sigma, "adam", tuned(sigma, "adam", "peak_clean"))][0]
        panels = [("clean", clean), (f"noisy, sigma {sigma}", noisy),
                  (f"Adam at its peak\n(oracle stop, lr {adam['lr']:g})", np.array(adam["peak_image"]))]
        for arm in arms:
            r = complete[(sigma, arm, tuned(sigma, arm, "final_clean"))][0]
            panels.append((f"{ARM_LABELS[arm]}\nfinal, lr {r['lr']:g}", np.array(r["final_image"])))
        for ax, (title, image) in zip(row, panels):
            ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1)
            score = "" if title == "clean" else f"\n{inr.psnr(image, clean):.2f} dB"
            ax.set_title(title + score, fontsize=6)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(stem + "_images.png", dpi=110)
    print(f"\nwrote {stem}.png and {stem}_images.png")


if __name__ == "__main__":
    main()
