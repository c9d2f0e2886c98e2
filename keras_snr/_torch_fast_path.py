"""SNRAdam's update on the torch backend with `torch._foreach_*` kernels.

Keras runs a custom optimizer on torch as per-variable eager ops; its own
Adam uses multi-tensor (`_foreach`) kernels instead. This module is the same
math as `SNRAdam.update_step` over all variables at once. It is selected
inside `SNRAdam._backend_update_step` (no class swap, so the saved class name
stays `keras_snr>SNRAdam`) and checked against the same NumPy reference as
the generic path.

For speed the update is rearranged algebraically, with the bias corrections
folded into scalars (`c1 = 1 - beta_1**t`, `c2 = 1 - beta_2**t`,
`cs = 1 - rho**t`):

    lr * q * m_hat / (sqrt(v_hat) + eps)
        = (lr * sqrt(c2) / c1) * q * m / (sqrt(v) + eps * sqrt(c2))

and, multiplying the gate's numerator and denominator by `c1**2`,

    snr:  q = m**2 / (m**2 + lam * alpha * (c1**2 / cs) * s + eps**2 * c1**2)
    soft: d = max(m**2 - alpha * (c1**2 / cs) * s, 0)
          q = d / (d + lam * (c1**2 / cs) * s + eps**2 * c1**2)
    hard: q = 1 if m**2 > alpha * (c1**2 / cs) * s else 0

so no bias-corrected copy of `m`, `v` or `s` is ever materialised. On
accelerators the per-step scalars stay 0-d tensors on the device (no host
sync); on CPU they are Python floats (see `HOST_SCALARS_ON_CPU`).
The slots are updated in place, and at most two parameter-sized temporaries
are alive at once (`g - m`, then the gate's denominator and `q`, then
`sqrt(v) + eps * sqrt(c2)`). `Variable._value` is read directly: the
`value` property's scope checks cost more than the kernels for models with
many small variables.
"""

import math

import torch
from keras.src.backend.common.stateless_scope import in_stateless_scope

_FAST_DTYPES = (torch.float32, torch.float64)


def supports(optimizer, grads, variables):
    """The fast path covers dense float32/float64 variables with slots,
    outside a stateless scope (it updates tensors in place)."""
    if in_stateless_scope():
        return False
    dtypes = set()
    for grad, variable in zip(grads, variables):
        value = variable._value
        if value.dtype not in _FAST_DTYPES or grad.dtype != value.dtype:
            return False
        if grad.is_sparse:
            return False
        dtypes.add(value.dtype)
    return len(dtypes) == 1


# Where the variables live on the CPU, reading the step count costs no device
# sync, so the per-step scalars are Python floats and the first step is a
# branch (two kernels fewer per step). Elsewhere they stay 0-d device
# tensors. Tests set this to False to run the device-scalar path on CPU.
HOST_SCALARS_ON_CPU = True


@torch.no_grad()
def update(optimizer, grads, variables, learning_rate):
    opt = optimizer
    index = [opt._get_variable_index(x) for x in variables]
    # The tensors themselves (`Variable.value` is a property with scope
    # checks, costly over hundreds of variables; `supports` has ruled out a
    # stateless scope, and in-place updates need the real tensor anyway).
    w = [x._value for x in variables]
    m = [opt._momentums[i]._value for i in index]
    v = [opt._velocities[i]._value for i in index]
    s = [opt._noise_variances[i]._value for i in index]
    g = list(grads)
    host = HOST_SCALARS_ON_CPU and w[0].device.type == "cpu"
    sc = _Scalars(opt, w[0], learning_rate, host)

    _update_moments(opt, g, m, v, s)
    if opt.gate is None or (host and sc.first_step):
        numerator = m  # q = 1
    elif opt.reduction == "per_tensor":
        # sum(m_hat**2) and sum(s_hat) per variable (s >= 0: L1 = sum).
        signal = torch.stack(torch._foreach_norm(m)) ** 2 / (sc.c1 * sc.c1)
        noise = torch.stack(torch._foreach_norm(s, 1)) / sc.cs
        q = _gate_values(opt, signal, noise, opt.epsilon**2)
        q = q + sc.first_step * (1 - q)  # q = 1 on the first step
        # step_size * q * m / (sqrt(v) + eps'); q = 0 gives m / inf = 0.
        denominator = _sqrt_plus(v, sc.eps)
        torch._foreach_div_(denominator, list((sc.step_size * q).unbind()))
        torch._foreach_addcdiv_(w, m, denominator, value=-1)
        return
    else:
        numerator = _elementwise_gate(opt, m, s, sc.c1, sc.cs)  # q
        if not host:
            # q <- step_size * (q + first_step * (1 - q)), first_step 0 or 1
            torch._foreach_mul_(numerator, sc.step_size * (1 - sc.first_step))
            torch._foreach_add_(numerator, sc.step_size * sc.first_step)
        torch._foreach_mul_(numerator, m)
    denominator = _sqrt_plus(v, sc.eps)
    # w <- w - step_size * q * m / (sqrt(v) + eps * sqrt(c2))
    if host:
        torch._foreach_addcdiv_(w, numerator, denominator, value=-sc.step_size)
    else:
        if numerator is m:
            torch._foreach_div_(denominator, sc.step_size)
        torch._foreach_addcdiv_(w, numerator, denominator, value=-1)


class _Scalars:
    """Per-step scalars: Python floats (`host`) or 0-d device tensors."""

    def __init__(self, opt, like, learning_rate, host):
        dtype, device = like.dtype, like.device
        # Bias corrections `1 - decay**t` as in `snr_adam.bias_correction`:
        # -expm1(t * log(decay)) in float32 (log(0) = -inf gives exactly 1),
        # then cast. With gradient accumulation `iterations` is a tensor.
        t = (_value(opt.iterations) + 1).to(device=device, dtype=torch.float32)
        corrections = torch.expm1(t * _log_decays(opt, device)).neg_().to(dtype)
        lr = torch.as_tensor(_value(learning_rate), device=device).to(dtype)
        if host:
            self.first_step = float(t) == 1.0
            self.c1, c2, self.cs = corrections.tolist()
            sqrt_c2 = math.sqrt(c2)
            lr = float(lr)
        else:
            self.first_step = (t == 1).to(dtype)
            self.c1, c2, self.cs = corrections.unbind()
            sqrt_c2 = torch.sqrt(c2)
        # lr * q * m_hat / (sqrt(v_hat) + eps)
        #     = step_size * q * m / (sqrt(v) + eps * sqrt(c2))
        self.step_size = lr * sqrt_c2 / self.c1
        self.eps = opt.epsilon * sqrt_c2


def _update_moments(opt, g, m, v, s):
    # s <- rho * s + (1 - rho) * (g - m)**2, with m from before this step.
    deviation = torch._foreach_sub(g, m)
    torch._foreach_mul_(s, opt.rho)
    torch._foreach_addcmul_(s, deviation, deviation, value=1 - opt.rho)
    del deviation
    # m <- beta_1 * m + (1 - beta_1) * g ; v <- beta_2 * v + (1 - beta_2) * g**2
    torch._foreach_lerp_(m, g, 1 - opt.beta_1)
    torch._foreach_mul_(v, opt.beta_2)
    torch._foreach_addcmul_(v, g, g, value=1 - opt.beta_2)


def _elementwise_gate(opt, m, s, c1, cs):
    """The gate q from raw m and s, in a new list (c1, cs floats or 0-d
    tensors)."""
    c1_sq = c1 * c1
    noise_scale = c1_sq / cs  # s_hat * c1**2 = noise_scale * s
    stabiliser = opt.epsilon**2 * c1_sq
    if opt.gate == "snr":
        # q = m**2 / (m**2 + lam * alpha * noise_scale * s + stabiliser)
        denominator = torch._foreach_mul(s, (opt.softness * opt.alpha) * noise_scale)
        torch._foreach_addcmul_(denominator, m, m)
        torch._foreach_add_(denominator, stabiliser)
        q = torch._foreach_div(m, denominator)
        del denominator
        torch._foreach_mul_(q, m)
        return q
    # excess = m**2 - alpha * noise_scale * s
    q = torch._foreach_mul(s, -opt.alpha * noise_scale)
    torch._foreach_addcmul_(q, m, m)
    if opt.gate == "hard":  # 1 where excess > 0, else 0
        torch._foreach_sign_(q)
        torch._foreach_clamp_min_(q, 0.0)
        return q
    # soft: d = max(excess, 0); q = d / (d + lam * noise_scale * s + stabiliser)
    torch._foreach_clamp_min_(q, 0.0)
    denominator = torch._foreach_mul(s, opt.softness * noise_scale)
    torch._foreach_add_(denominator, q)
    torch._foreach_add_(denominator, stabiliser)
    torch._foreach_div_(q, denominator)
    return q


def _sqrt_plus(v, eps):
    out = torch._foreach_sqrt(v)
    torch._foreach_add_(out, eps)
    return out


def _gate_values(opt, signal, noise, stabiliser):
    if opt.gate == "snr":
        return signal / (signal + opt.softness * opt.alpha * noise + stabiliser)
    if opt.gate == "soft":
        excess = torch.clamp_min(signal - opt.alpha * noise, 0.0)
        return excess / (excess + opt.softness * noise + stabiliser)
    return (signal > opt.alpha * noise).to(signal.dtype)


def _log_decays(opt, device):
    """log of (beta_1, beta_2, rho) as a float32 tensor on `device`, cached."""
    cache = opt.__dict__.setdefault("_torch_fast_path_log_decays", {})
    key = (str(device), opt.beta_1, opt.beta_2, opt.rho)
    if key not in cache:
        cache.clear()
        logs = [math.log(d) if d > 0 else -math.inf
                for d in (opt.beta_1, opt.beta_2, opt.rho)]
        cache[key] = torch.tensor(logs, dtype=torch.float32, device=device)
    return cache[key]


def _value(x):
    return x.value if hasattr(x, "value") else x
