"""SNRAdam's update on the torch backend with `torch._foreach_*` kernels.

Keras runs a custom optimizer on torch as per-variable eager ops; its own
Adam uses multi-tensor (`_foreach`) kernels instead. This module runs the
same math as `SNRAdam._update` over all variables at once, and calls the
same gate (`keras_snr.gate.gate`) on `_Tensors`, lists of tensors whose
arithmetic is foreach kernels. It is selected inside
`SNRAdam._backend_update_step` when `fused=True` (no class swap, so the saved
class name stays `keras_snr>SNRAdam`) and checked against the same NumPy
reference as the generic path.

As in `_update`, the bias corrections (`c1 = 1 - beta_1**t`, `c2 = 1 -
beta_2**t`, `cs = 1 - rho**t`) are folded into scalars,

    lr * q * m_hat / (sqrt(v_hat) + eps)
        = (lr * sqrt(c2) / c1) * q * m / (sqrt(v) + eps * sqrt(c2)),

and the gate compares `m**2` with `(c1**2 / cs) * s`, so no bias-corrected
copy of `m`, `v` or `s` is made. On accelerators the per-step scalars stay
0-d tensors on the device (no host sync); on CPU they are Python floats
(see `HOST_SCALARS_ON_CPU`). The slots are updated in place.
"""

import math

import torch

from keras_snr.gate import gate

try:  # private Keras API, guarded: without it the generic path is used
    from keras.src.backend.common.stateless_scope import in_stateless_scope
except ImportError:  # pragma: no cover - exercised by a test with the import blocked
    in_stateless_scope = None

_FAST_DTYPES = (torch.float32, torch.float64)

# Where the variables live on the CPU, reading the step count costs no device
# sync, so the per-step scalars are Python floats and the first step is a
# branch (two kernels fewer per step). Elsewhere they stay 0-d device
# tensors. Tests set this to False to run the device-scalar path on CPU.
HOST_SCALARS_ON_CPU = True


def supports(optimizer, grads, variables):
    """The fast path covers dense float32/float64 variables with slots,
    outside a stateless scope (it updates tensors in place)."""
    if in_stateless_scope is None or in_stateless_scope():
        return False
    dtypes = set()
    for grad, variable in zip(grads, variables):
        value = _tensor(variable)
        if value.dtype not in _FAST_DTYPES or grad.dtype != value.dtype or grad.is_sparse:
            return False
        dtypes.add(value.dtype)
    return len(dtypes) == 1


@torch.no_grad()
def update(optimizer, grads, variables, learning_rate):
    opt = optimizer
    index = [opt._get_variable_index(x) for x in variables]
    w = [_tensor(x) for x in variables]
    m = [_tensor(opt._momentums[i]) for i in index]
    v = [_tensor(opt._velocities[i]) for i in index]
    s = [_tensor(opt._noise_variances[i]) for i in index]
    g = list(grads)
    host = HOST_SCALARS_ON_CPU and w[0].device.type == "cpu"
    sc = _Scalars(opt, w[0], learning_rate, host)

    # s <- rho * s + (1 - rho) * (g - m)**2, with m from before this step.
    deviation = torch._foreach_sub(g, m)
    torch._foreach_mul_(s, opt.rho)
    torch._foreach_addcmul_(s, deviation, deviation, value=1 - opt.rho)
    del deviation
    # m <- beta_1 * m + (1 - beta_1) * g ; v <- beta_2 * v + (1 - beta_2) * g**2
    torch._foreach_lerp_(m, g, 1 - opt.beta_1)
    torch._foreach_mul_(v, opt.beta_2)
    torch._foreach_addcmul_(v, g, g, value=1 - opt.beta_2)

    # w <- w - step_size * q * m / (sqrt(v) + eps * sqrt(c2)), q = 1 on step 1
    denominator = torch._foreach_sqrt(v)
    torch._foreach_add_(denominator, sc.eps)
    numerator = m
    if opt.gate is not None and not (host and sc.first_step):
        q = _gate(opt, m, s, sc)
        if not host:  # q <- q * (1 - first_step) + first_step, first_step 0 or 1
            torch._foreach_mul_(q, 1 - sc.first_step)
            torch._foreach_add_(q, sc.first_step)
        if opt.reduction == "per_tensor":  # q: one 0-d tensor per variable
            torch._foreach_div_(denominator, q)  # q = 0: m / inf = 0
        else:
            torch._foreach_mul_(q, m)
            numerator = q
    if host:
        torch._foreach_addcdiv_(w, numerator, denominator, value=-sc.step_size)
    else:
        torch._foreach_div_(denominator, sc.step_size)
        torch._foreach_addcdiv_(w, numerator, denominator, value=-1)


def _gate(opt, m, s, sc):
    """The gate q from the raw slots via `keras_snr.gate.gate`: a list of
    tensors like `m`, or of 0-d tensors with `reduction="per_tensor"`."""
    stabiliser = opt.epsilon**2 * sc.c1 * sc.c1 + torch.finfo(m[0].dtype).tiny
    noise_scale = sc.c1 * sc.c1 / sc.cs
    settings = dict(
        kind=opt.gate, alpha=opt.alpha, softness=opt.softness,
        stabiliser=stabiliser, noise_scale=noise_scale,
    )
    if opt.reduction == "per_tensor":
        # sum(m**2) and sum(s) per variable (s >= 0: its L1 norm is its sum).
        signal = torch.stack(torch._foreach_norm(m)) ** 2
        noise = torch.stack(torch._foreach_norm(s, 1))
        return list(gate(signal, noise, xp=torch, **settings).unbind())
    return gate(_Squared(m), _Tensors(s), xp=_Tensors, **settings).tensors


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
        self.step_size = lr * sqrt_c2 / self.c1
        self.eps = opt.epsilon * sqrt_c2


class _Tensors:
    """A list of same-dtype tensors with the arithmetic `keras_snr.gate.gate`
    uses as `torch._foreach_*` kernels (one call for all variables), so that
    the gate runs on all of them at once: `x * list`, `list += x` (in
    place), `list / list`, and `relu`/`sign` as its `xp`. The other operand
    is another `_Tensors`, a `_Squared`, a Python float or a 0-d tensor."""

    __slots__ = ("tensors",)

    def __init__(self, tensors):
        self.tensors = tensors

    @staticmethod
    def _arg(other):
        return other.tensors if isinstance(other, _Tensors) else other

    def __iadd__(self, other):
        if isinstance(other, _Squared):
            torch._foreach_addcmul_(self.tensors, other.tensors, other.tensors)
        else:
            torch._foreach_add_(self.tensors, self._arg(other))
        return self

    def __mul__(self, other):
        return _Tensors(torch._foreach_mul(self.tensors, self._arg(other)))

    __rmul__ = __mul__

    def __truediv__(self, other):
        return _Tensors(torch._foreach_div(self.tensors, self._arg(other)))

    @staticmethod
    def relu(x):
        return _Tensors(torch._foreach_clamp_min(x.tensors, 0.0))

    @staticmethod
    def sign(x):
        return _Tensors(torch._foreach_sign(x.tensors))


class _Squared:
    """`m**2` for a list `m`, never materialised: the gate's uses of it
    become fused kernels (`d += m**2` is `addcmul_`, `m**2 / d` is
    `(m / d) * m`, `m**2 - x` is `addcmul` onto `-x`), which saves one
    parameter-sized temporary per variable (on CPU, allocating it costs
    about as much as a kernel)."""

    __slots__ = ("tensors",)

    def __init__(self, tensors):
        self.tensors = tensors

    def __truediv__(self, other):
        q = torch._foreach_div(self.tensors, other.tensors)
        torch._foreach_mul_(q, self.tensors)
        return _Tensors(q)

    def __sub__(self, other):
        out = torch._foreach_neg(other.tensors)
        torch._foreach_addcmul_(out, self.tensors, self.tensors)
        return _Tensors(out)


def _log_decays(opt, device):
    """log of (beta_1, beta_2, rho) as a float32 tensor on `device`, cached."""
    cache = opt.__dict__.setdefault("_torch_fast_path_log_decays", {})
    key = (str(device), opt.beta_1, opt.beta_2, opt.rho)
    if key not in cache:
        cache.clear()
        logs = [math.log(d) if d > 0 else -math.inf for d in (opt.beta_1, opt.beta_2, opt.rho)]
        cache[key] = torch.tensor(logs, dtype=torch.float32, device=device)
    return cache[key]


def _tensor(variable):
    """The torch tensor behind a Keras variable.

    `Variable._value` directly: the public `value` property runs scope
    checks that cost more than the kernels on models with many small
    variables (measured in benchmarks/step_overhead.py). If a future Keras
    drops the attribute, the property is used (tested).
    """
    value = getattr(variable, "_value", None)
    return value if isinstance(value, torch.Tensor) else variable.value


def _value(x):
    return x.value if hasattr(x, "value") else x
