"""SNRAdam's update on the torch backend with `torch._foreach_*` kernels.

Keras runs a custom optimizer on torch as per-variable eager ops; its own
Adam uses multi-tensor (`_foreach`) kernels instead. This module is the same
math as `SNRAdam.update_step`, step for step, over all variables at once.
It is selected inside `SNRAdam._backend_update_step` (no class swap, so the
saved class name stays `keras_snr>SNRAdam`) and checked against the same
NumPy reference as the generic path.
"""

import torch

_FAST_DTYPES = (torch.float32, torch.float64)


def supports(optimizer, grads, variables):
    """The fast path covers dense float32/float64 variables with slots."""
    dtypes = set()
    for grad, variable in zip(grads, variables):
        value = variable.value
        if value.dtype not in _FAST_DTYPES or grad.dtype != value.dtype:
            return False
        if grad.is_sparse:
            return False
        dtypes.add(value.dtype)
    return len(dtypes) == 1


@torch.no_grad()
def update(optimizer, grads, variables, learning_rate):
    opt = optimizer
    index = [opt._get_variable_index(v) for v in variables]
    w = [v.value for v in variables]
    m = [opt._momentums[i].value for i in index]
    v = [opt._velocities[i].value for i in index]
    s = [opt._noise_variances[i].value for i in index]
    g = list(grads)

    dtype = w[0].dtype
    lr = torch.as_tensor(_value(learning_rate), dtype=dtype, device=w[0].device)
    t = (opt.iterations.value + 1).to(torch.float32)
    correction_1 = (1 - torch.pow(opt.beta_1, t)).to(dtype)
    correction_2 = (1 - torch.pow(opt.beta_2, t)).to(dtype)
    correction_s = (1 - torch.pow(opt.rho, t)).to(dtype)
    first_step = (t == 1).to(dtype)

    # s <- rho * s + (1 - rho) * (g - m)**2, with m from before this step.
    deviation = torch._foreach_sub(g, m)
    torch._foreach_mul_(s, opt.rho)
    torch._foreach_addcmul_(s, deviation, deviation, value=1 - opt.rho)
    del deviation
    # m <- beta_1 * m + (1 - beta_1) * g ; v <- beta_2 * v + (1 - beta_2) * g**2
    torch._foreach_lerp_(m, g, 1 - opt.beta_1)
    torch._foreach_mul_(v, opt.beta_2)
    torch._foreach_addcmul_(v, g, g, value=1 - opt.beta_2)

    m_hat = torch._foreach_div(m, correction_1)
    step = _gated(opt, m_hat, s, correction_s, first_step)  # q * m_hat

    # w <- w - lr * q * m_hat / (sqrt(v_hat) + epsilon)
    denominator = torch._foreach_sqrt(v)
    torch._foreach_div_(denominator, torch.sqrt(correction_2))
    torch._foreach_add_(denominator, opt.epsilon)
    torch._foreach_div_(step, denominator)
    torch._foreach_mul_(step, lr)
    torch._foreach_sub_(w, step)


def _gated(opt, m_hat, s, correction_s, first_step):
    """q * m_hat, with q from the optimizer's gate (first step: q = 1)."""
    if opt.gate is None:
        return m_hat
    noise = torch._foreach_div(s, correction_s)  # s_hat
    stabiliser = opt.epsilon**2
    if opt.reduction == "per_tensor":
        signal = torch.stack(torch._foreach_norm(m_hat)) ** 2
        noise = torch.stack(torch._foreach_norm(noise, 1))
        q = _gate_values(opt, signal, noise, stabiliser)
        q = q + first_step * (1 - q)
        return [mh * qi for mh, qi in zip(m_hat, q.unbind())]
    signal = torch._foreach_mul(m_hat, m_hat)
    if opt.gate == "snr":
        denominator = torch._foreach_add(signal, noise, alpha=opt.softness * opt.alpha)
        torch._foreach_add_(denominator, stabiliser)
        q = torch._foreach_div(signal, denominator)
    elif opt.gate == "soft":
        excess = torch._foreach_sub(signal, noise, alpha=opt.alpha)
        torch._foreach_clamp_min_(excess, 0.0)
        denominator = torch._foreach_add(excess, noise, alpha=opt.softness)
        torch._foreach_add_(denominator, stabiliser)
        q = torch._foreach_div(excess, denominator)
    else:  # hard: 1 where signal > alpha * noise, else 0
        q = torch._foreach_sub(signal, noise, alpha=opt.alpha)
        torch._foreach_sign_(q)
        torch._foreach_clamp_min_(q, 0.0)
    # q <- q + first_step * (1 - q), i.e. q * (1 - first_step) + first_step
    torch._foreach_mul_(q, 1 - first_step)
    torch._foreach_add_(q, first_step)
    torch._foreach_mul_(q, m_hat)
    return q


def _gate_values(opt, signal, noise, stabiliser):
    if opt.gate == "snr":
        return signal / (signal + opt.softness * opt.alpha * noise + stabiliser)
    if opt.gate == "soft":
        excess = torch.clamp_min(signal - opt.alpha * noise, 0.0)
        return excess / (excess + opt.softness * noise + stabiliser)
    return (signal > opt.alpha * noise).to(signal.dtype)


def _value(x):
    return x.value if hasattr(x, "value") else x
