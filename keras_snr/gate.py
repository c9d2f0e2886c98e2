"""The SNR gate: how far a coordinate may move, from its signal and its noise.

`gate` is the one implementation of the gate formulas. `SNRAdam`'s update,
its torch fast path, its statistics (`SNRAdam.statistics`,
`SNRAdam.gate_summary`) and the package's callbacks all call it.
"""

from keras import ops

GATES = ("snr", "soft", "hard", None)


def gate(
    signal, noise, kind="snr", alpha=1.0, softness=1.0, stabiliser=0.0, noise_scale=1.0, xp=ops
):
    """The gate `q` in `[0, 1]`, elementwise.

    With `signal = m_hat**2`, `noise = s_hat` (times `noise_scale`),
    `lam = softness` and `e = stabiliser`:

    - `"snr"`: `q = signal / (signal + lam * alpha * noise + e)`; with
      `lam = 1`, `q = 1/2` exactly at the threshold `signal = alpha * noise`;
    - `"soft"` (the paper's Algorithm 1): with `d = max(signal - alpha *
      noise, 0)`, `q = d / (d + lam * noise + e)`; zero below the threshold;
    - `"hard"`: `q = 1` where `signal > alpha * noise`, else `0`;
    - `None`: `q = 1` (a Python float, so that it costs nothing).

    Only `+`, `-`, `*`, `/` (and `+=` on temporaries it made) and
    `xp.relu`/`xp.sign` are used, with the array always the left operand of
    `*`, so the same formula runs on backend tensors (`xp=keras.ops`, the
    default) and on the torch fast path's lists of tensors (whose `xp` maps
    the arithmetic to `torch._foreach_*` kernels), eagerly and under
    `torch.compile`. Scalars (`alpha`, `softness`, `stabiliser`) may be
    Python floats or 0-d tensors.

    Args:
        signal: Squared bias-corrected momentum `m_hat**2` (or a quantity
            proportional to it, see `noise`).
        noise: Bias-corrected noise variance `s_hat`, or the raw slot `s`
            with the bias corrections folded into `noise_scale` and
            `stabiliser` (as the update does, so that no corrected copy of a
            slot is materialised).
        kind: One of `GATES`.
        alpha: Noise coefficient.
        softness: `lam` above.
        stabiliser: `e` above; must be positive where both `signal` and
            `noise` can be zero (otherwise `0 / 0`).
        noise_scale: Scalar multiplying `noise` (folded into the
            coefficients, so it costs no extra pass over the tensor).
        xp: Namespace providing `relu` and `sign` for the array type.

    Returns:
        `q`, of the shape of `signal`, or the float `1.0` for `kind=None`.
    """
    if kind is None:
        return 1.0
    if kind == "snr":
        # signal / (signal + lam * alpha * noise + e), summed in place so
        # that the torch fast path allocates one temporary, not three.
        denominator = noise * (softness * alpha * noise_scale)
        denominator += signal
        denominator += stabiliser
        return signal / denominator
    excess = signal - noise * (alpha * noise_scale)
    if kind == "hard":
        return xp.relu(xp.sign(excess))  # 1 where excess > 0, else 0
    if kind == "soft":
        excess = xp.relu(excess)
        denominator = noise * (softness * noise_scale)
        denominator += excess
        denominator += stabiliser
        return excess / denominator
    raise ValueError(f"`gate` must be one of {GATES}; received gate={kind!r}")
