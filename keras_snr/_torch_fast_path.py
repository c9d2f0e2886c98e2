"""SNRAdam's update on the torch backend: all variables at once.

Keras runs a custom optimizer on torch as per-variable eager ops; its own
Adam uses multi-tensor (`_foreach`) kernels instead. This module runs the
same math as `SNRAdam._update` over all variables at once (`_step`, written
with `torch._foreach_*` kernels), and calls the same gate
(`keras_snr.gate.gate`) on `_Tensors`, lists of tensors whose arithmetic is
foreach kernels. It is selected inside `SNRAdam._backend_update_step` when
`fused=True` (no class swap, so the saved class name stays
`keras_snr>SNRAdam`) and checked against the same NumPy reference as the
generic path.

Two ways to run `_step`:

- **compiled** (on CUDA devices, `COMPILE_DEVICES`): `_step` itself under
  `torch.compile(fullgraph=True, dynamic=False)`, so that Inductor fuses its
  foreach kernels, and the decoupled weight decay, into a few passes over
  memory (about 15 kernels, each a pass over every variable, otherwise).
  The per-step scalars (step count, learning rate) enter as 0-d tensors, so
  the compiled graph is reused from step to step; it is recompiled only when
  the variables' shapes, dtypes or the optimizer's settings change. The
  first step pays the compilation (seconds). If compiling fails, the eager
  kernels run instead, with one warning saying why. The environment
  variable `KERAS_SNR_TORCH_COMPILE=0` turns compiling off.
- **eager** (elsewhere, or as the fallback): the same `_step`, one foreach
  kernel per operation.

As in `_update`, the bias corrections (`c1 = 1 - beta_1**t`, `c2 = 1 -
beta_2**t`, `cs = 1 - rho**t`) are folded into scalars,

    lr * q * m_hat / (sqrt(v_hat) + eps)
        = (lr * sqrt(c2) / c1) * q * m / (sqrt(v) + eps * sqrt(c2)),

and the gate compares `m**2` with `(c1**2 / cs) * s`, so no bias-corrected
copy of `m`, `v` or `s` is made. Eagerly on CPU the per-step scalars are
Python floats (see `HOST_SCALARS_ON_CPU`); elsewhere they stay 0-d device
tensors (no host sync). The slots and weights are updated in place.
"""

import math
import os
import types
import warnings
from typing import NamedTuple

import torch

from keras_snr.gate import gate

try:  # private Keras API, guarded: without it the generic path is used
    from keras.src.backend.common.stateless_scope import in_stateless_scope
except ImportError:  # pragma: no cover - exercised by a test with the import blocked
    in_stateless_scope = None

_FAST_DTYPES = (torch.float32, torch.float64)

# Eagerly on the CPU, reading the step count costs no device sync, so the
# per-step scalars are Python floats and the first step is a branch (two
# kernels fewer per step). Elsewhere, and compiled, they stay 0-d tensors.
# Tests set this to False to run the device-scalar path on CPU.
HOST_SCALARS_ON_CPU = True

# Device types on which `fused=True` compiles the update with torch.compile.
# Not the CPU by default: there the eager foreach kernels are within ~1.3x of
# Keras's own Adam already, and compiling costs seconds per model. Tests add
# "cpu" (and may pick a cheaper `COMPILE_BACKEND`) to check the compiled
# path without a GPU.
COMPILE_DEVICES = ("cuda",)
COMPILE_BACKEND = "inductor"


class _Hyper(NamedTuple):
    """The optimizer's settings `_step` reads: Python constants, so that a
    compiled `_step` is specialised to them (and recompiled if they change)."""

    beta_1: float
    beta_2: float
    rho: float
    epsilon: float
    gate: object
    alpha: float
    softness: float
    reduction: str
    weight_decay: float  # 0.0 without weight decay


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
def update(optimizer, grads, variables, learning_rate, decay=False):
    """One step on all `variables`; with `decay`, the decoupled weight decay
    Keras would have applied first (`w *= 1 - weight_decay * lr` on the
    variables `optimizer._use_weight_decay` selects) is part of it."""
    opt = optimizer
    index = [opt._get_variable_index(x) for x in variables]
    w = [_tensor(x) for x in variables]
    m = [_tensor(opt._momentums[i]) for i in index]
    v = [_tensor(opt._velocities[i]) for i in index]
    s = [_tensor(opt._noise_variances[i]) for i in index]
    g = list(grads)
    decayed = ()
    if decay and opt.weight_decay:
        decayed = tuple(i for i, x in enumerate(variables) if opt._use_weight_decay(x))
    hyper = _Hyper(
        opt.beta_1, opt.beta_2, opt.rho, opt.epsilon, opt.gate, opt.alpha,
        opt.softness, opt.reduction, float(opt.weight_decay or 0.0),
    )
    device = w[0].device
    lr = torch.as_tensor(_value(learning_rate), device=device)
    iterations = _value(opt.iterations)

    lists = (w, g, m, v, s)
    eager = range(len(w))
    compiled = _compiled_step(opt, device)
    if compiled is not None:
        done = []
        try:
            eager = _run_compiled(opt, compiled, lists, lr, iterations, hyper, decayed, done)
        except Exception as error:  # noqa: BLE001 - any compiler failure: run eagerly
            _give_up_compiling(opt, error)
            updated = set(done)
            eager = [i for i in range(len(w)) if i not in updated]
    if eager:
        host = HOST_SCALARS_ON_CPU and device.type == "cpu"
        _step(*_subset(lists, eager), lr, iterations, hyper, _positions(decayed, eager), host)


def _step(w, g, m, v, s, lr, iterations, hyper, decayed, host):
    """The update of `SNRAdam._update` on lists of tensors, in place.

    `lr` is a 0-d tensor, `iterations` the step count before this step;
    `decayed` indexes the variables to weight-decay; `host`: per-step
    scalars as Python floats (eager CPU only).
    """
    sc = _Scalars(hyper, lr, iterations, w[0], host)
    if decayed:  # w <- w * (1 - weight_decay * lr), as Keras's torch optimizers
        torch._foreach_mul_([w[i] for i in decayed], 1 - hyper.weight_decay * sc.lr)

    # s <- rho * s + (1 - rho) * (g - m)**2, with m from before this step.
    deviation = torch._foreach_sub(g, m)
    torch._foreach_mul_(s, hyper.rho)
    torch._foreach_addcmul_(s, deviation, deviation, value=1 - hyper.rho)
    del deviation
    # m <- beta_1 * m + (1 - beta_1) * g ; v <- beta_2 * v + (1 - beta_2) * g**2
    torch._foreach_lerp_(m, g, 1 - hyper.beta_1)
    torch._foreach_mul_(v, hyper.beta_2)
    torch._foreach_addcmul_(v, g, g, value=1 - hyper.beta_2)

    # w <- w - step_size * q * m / (sqrt(v) + eps * sqrt(c2)), q = 1 on step 1
    denominator = torch._foreach_sqrt(v)
    torch._foreach_add_(denominator, sc.eps)
    numerator = m
    if hyper.gate is not None and not (host and sc.first_step):
        q = _gate(hyper, m, s, sc)
        if not host:  # q <- q * (1 - first_step) + first_step, first_step 0 or 1
            torch._foreach_mul_(q, 1 - sc.first_step)
            torch._foreach_add_(q, sc.first_step)
        if hyper.reduction == "per_tensor":  # q: one 0-d tensor per variable
            torch._foreach_div_(denominator, q)  # q = 0: m / inf = 0
        else:
            torch._foreach_mul_(q, m)
            numerator = q
    if host:
        torch._foreach_addcdiv_(w, numerator, denominator, value=-sc.step_size)
    else:
        torch._foreach_div_(denominator, sc.step_size)
        torch._foreach_addcdiv_(w, numerator, denominator, value=-1)


def _gate(hyper, m, s, sc):
    """The gate q from the raw slots via `keras_snr.gate.gate`: a list of
    tensors like `m`, or of 0-d tensors with `reduction="per_tensor"`."""
    stabiliser = hyper.epsilon**2 * sc.c1 * sc.c1 + torch.finfo(m[0].dtype).tiny
    noise_scale = sc.c1 * sc.c1 / sc.cs
    settings = dict(
        kind=hyper.gate, alpha=hyper.alpha, softness=hyper.softness,
        stabiliser=stabiliser, noise_scale=noise_scale,
    )
    if hyper.reduction == "per_tensor":
        # sum(m**2) and sum(s) per variable (s >= 0: its L1 norm is its sum).
        signal = torch.stack(torch._foreach_norm(m)) ** 2
        noise = torch.stack(torch._foreach_norm(s, 1))
        return list(gate(signal, noise, xp=torch, **settings).unbind())
    if torch.compiler.is_compiling():
        # Compiled, per tensor: Inductor fuses it into the update's kernels
        # either way, and dynamo does not trace `_Tensors`' operators when a
        # 0-d tensor is the other operand.
        return [gate(x * x, y, xp=torch, **settings) for x, y in zip(m, s)]
    return gate(_Squared(m), _Tensors(s), xp=_Tensors, **settings).tensors


class _Scalars:
    """Per-step scalars: Python floats (`host`) or 0-d tensors."""

    def __init__(self, hyper, lr, iterations, like, host):
        dtype, device = like.dtype, like.device
        # Bias corrections `1 - decay**t` as in `snr_adam.bias_correction`:
        # -expm1(t * log(decay)) in float32 (log(0) = -inf gives exactly 1),
        # then cast. With gradient accumulation `iterations` is a tensor.
        t = (iterations + 1).to(device=device, dtype=torch.float32)
        c1, c2, cs = (
            torch.expm1(t * (math.log(d) if d > 0 else -math.inf)).neg_().to(dtype)
            for d in (hyper.beta_1, hyper.beta_2, hyper.rho)
        )
        lr = lr.to(dtype)
        if host:
            self.first_step = float(t) == 1.0
            self.c1, c2, self.cs = float(c1), float(c2), float(cs)
            sqrt_c2 = math.sqrt(c2)
            lr = float(lr)
        else:
            self.first_step = (t == 1).to(dtype)
            self.c1, self.cs = c1, cs
            sqrt_c2 = torch.sqrt(c2)
        self.lr = lr
        self.step_size = lr * sqrt_c2 / self.c1
        self.eps = hyper.epsilon * sqrt_c2


class _Tensors:
    """A list of same-dtype tensors with the arithmetic `keras_snr.gate.gate`
    uses as `torch._foreach_*` kernels (one call for all variables), so that
    the gate runs on all of them at once: `list * x`, `list += x` (in
    place), `list / list`, and `relu`/`sign` as its `xp`. The other operand
    is another `_Tensors`, a `_Squared`, a Python float or a 0-d tensor
    (`x * list` would need `__rmul__`). Eager only: under torch.compile
    `_gate` calls the gate per tensor instead."""

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


# ------------------------------------------------------------- compiling

# Variables of at least this many elements run compiled, all in one graph;
# the smaller ones (biases, norms: negligible traffic, but each adds to the
# compile time) run as eager foreach kernels in the same step.
COMPILE_MIN_SIZE = 2**16


def _run_compiled(opt, compiled, lists, lr, iterations, hyper, decayed, done):
    """The large variables' update through `compiled` (their indices
    appended to `done` once updated); returns the indices left to the eager
    kernels."""
    large, eager = _split(opt, lists)
    if large:
        state = _subset(lists, large)
        compiled(*state, lr, iterations, hyper, _positions(decayed, large), False)
        done.extend(large)
    return eager


def _split(opt, lists):
    """(indices of the variables to compile, the others), cached while the
    weights are the same tensors (those of Keras variables persist from step
    to step)."""
    w = lists[0]
    key = (tuple(map(id, w)), COMPILE_MIN_SIZE)
    cached = opt.__dict__.get("_torch_compiled_split")
    if cached is None or cached[0] != key:
        large = [i for i, x in enumerate(w) if x.numel() >= COMPILE_MIN_SIZE]
        eager = [i for i, x in enumerate(w) if x.numel() < COMPILE_MIN_SIZE]
        # The tensors are kept with the key, so that their ids stay theirs.
        cached = (key, list(w), (large, eager))
        opt.__dict__["_torch_compiled_split"] = cached
    return cached[2]


def _subset(lists, indices):
    return [[t[i] for i in indices] for t in lists]


def _positions(decayed, indices):
    """Positions in `indices` of the variables `decayed` selects."""
    is_decayed = set(decayed)
    return tuple(k for k, i in enumerate(indices) if i in is_decayed)


def _compile_wanted(device):
    return device.type in COMPILE_DEVICES and os.environ.get("KERAS_SNR_TORCH_COMPILE", "1") != "0"


def _compiled_step(opt, device):
    """`_step` under torch.compile for this optimizer, or None (not wanted
    on this device, or compiling failed before)."""
    if not _compile_wanted(device) or opt.__dict__.get("_torch_compile_failed"):
        return None
    compiled = opt.__dict__.get("_torch_compiled_step")
    if compiled is None or compiled[0] != COMPILE_BACKEND:
        try:
            fn = torch.compile(
                _own_copy(_step), fullgraph=True, dynamic=False, backend=COMPILE_BACKEND
            )
        except Exception as error:  # noqa: BLE001 - torch.compile unavailable here
            _give_up_compiling(opt, error)
            return None
        compiled = (COMPILE_BACKEND, fn)
        opt.__dict__["_torch_compiled_step"] = compiled
    return compiled[1]


def _own_copy(function):
    """`function` with a code object of its own.

    Dynamo keeps its compiled graphs on the code object, and after 8 of
    them for one code object (`torch._dynamo.config.recompile_limit`) it
    stops compiling it. Every optimizer (every model, every set of settings)
    compiles `_step` once, so a process that trains several models would
    soon reach that limit on a shared code object; with its own copy, each
    optimizer has its own graphs, freed with it.
    """
    return types.FunctionType(
        function.__code__.replace(), function.__globals__, function.__name__,
        function.__defaults__, function.__closure__,
    )


def _give_up_compiling(opt, error):
    opt.__dict__["_torch_compile_failed"] = f"{type(error).__name__}: {error}"
    message = str(error).strip().splitlines()
    warnings.warn(
        f"SNRAdam: compiling the fused torch update failed ({type(error).__name__}: "
        f"{message[0] if message else ''}); running it as multi-tensor foreach "
        "kernels instead (correct, but several passes over memory per step). "
        "Set KERAS_SNR_TORCH_COMPILE=0 to skip compiling.",
        RuntimeWarning,
        stacklevel=4,
    )


def compile_status(optimizer):
    """How `fused=True` ran on torch for `optimizer`'s last step:
    "compiled" (its large variables; the others always run eagerly),
    "eager" (compiling not wanted on this device, or no step yet), or
    "eager (...)" with the reason."""
    failed = optimizer.__dict__.get("_torch_compile_failed")
    if failed:
        return f"eager (compiling failed: {failed})"
    if not optimizer.__dict__.get("_torch_compiled_step"):
        return "eager"
    split = optimizer.__dict__.get("_torch_compiled_split")
    if split and split[2][0]:
        return "compiled"
    return f"eager (no variable of {COMPILE_MIN_SIZE} elements or more)"


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
