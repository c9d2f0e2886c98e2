"""The SNR gate: how far a coordinate may move, from its signal and its noise.

`gate` is the one implementation of the gate formulas. `SNRAdam`'s update,
its torch fast path, its statistics (`SNRAdam.statistics`,
`SNRAdam.gate_summary`) and the package's callbacks all call it; it also
recomputes the gate from statistics read back.

Example:

```python
stats = optimizer.statistics(variable)  # an SNRAdam after some steps
q = keras_snr.gate.gate(
    keras.ops.square(stats.momentum), stats.noise_variance, "hard",
    alpha=optimizer.alpha)  # where the hard gate would be open
```
"""

from keras import ops

GATES = ("snr", "soft", "hard", None)
"""The gates `gate` and `SNRAdam(gate=...)` accept."""


def gate(
    signal, noise, kind="snr", alpha=1.0, softness=1.0, stabiliser=0.0, noise_scale=1.0, xp=ops
):
    """Computes the gate `q` in `[0, 1]`, elementwise.

    With `signal = m_hat**2`, `noise = s_hat * noise_scale`,
    `lam = softness` and `e = stabiliser`:

    ```
    "snr":   q = signal / (signal + lam * alpha * noise + e)
    "soft":  d = max(signal - alpha * noise, 0)
             q = d / (d + lam * noise + e)
    "hard":  q = 1 if signal > alpha * noise else 0
    None:    q = 1
    ```

    `"snr"` with `lam = 1` is `1/2` exactly at the threshold
    `signal = alpha * noise`; `"soft"` (the paper's Algorithm 1) is zero
    below it; `None` returns the Python float `1.0`, which costs nothing.

    Only `+`, `-`, `*`, `/` (and `+=` on temporaries it made) and
    `xp.relu`/`xp.sign` are used, with the array always the left operand of
    `*`, so the same formula runs on backend tensors (`xp=keras.ops`, the
    default) and on the torch fast path's lists of tensors (whose `xp` maps
    the arithmetic to `torch._foreach_*` kernels), eagerly and under
    `torch.compile`. Scalars (`alpha`, `softness`, `stabiliser`) may be
    Python floats or 0-d tensors.

    Args:
        signal: Tensor. The squared bias-corrected momentum `m_hat**2` (or a
            quantity proportional to it, see `noise`).
        noise: Tensor. The bias-corrected noise variance `s_hat`, or the raw
            slot `s` with the bias corrections folded into `noise_scale` and
            `stabiliser` (as the update does, so that no corrected copy of a
            slot is made).
        kind: One of `GATES`: `"snr"`, `"soft"`, `"hard"` or `None`.
            Defaults to `"snr"`.
        alpha: Float. The noise coefficient. Defaults to `1.0`.
        softness: Float. `lam` above. Defaults to `1.0`.
        stabiliser: Float. `e` above; must be positive where both `signal`
            and `noise` can be zero (otherwise `0 / 0`). Defaults to `0.0`.
        noise_scale: Float. Multiplies `noise` (folded into the
            coefficients, so it costs no extra pass over the tensor).
            Defaults to `1.0`.
        xp: The namespace providing `relu` and `sign` for the array type.
            Defaults to `keras.ops`.

    Returns:
        `q`, shaped like `signal`, or the float `1.0` for `kind=None`.

    Example:

    ```python
    signal = keras.ops.convert_to_tensor([4.0, 1.0, 0.0])
    noise = keras.ops.convert_to_tensor([1.0, 1.0, 1.0])
    keras_snr.gate.gate(signal, noise)               # [0.8, 0.5, 0.0]
    keras_snr.gate.gate(signal, noise, kind="soft")  # [0.75, 0.0, 0.0]
    keras_snr.gate.gate(signal, noise, kind="hard")  # [1.0, 0.0, 0.0]
    ```
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
