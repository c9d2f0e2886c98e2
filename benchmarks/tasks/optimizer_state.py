"""`SNRAdam`'s mean gate, read through its public API, also from the
stateless optimizer values of a jitted JAX training loop."""

import keras

import keras_snr


def mean_gate(optimizer, optimizer_values=None):
    """Mean gate `q` over all trained coordinates, as a scalar tensor
    (`SNRAdam.gate_summary()["gate_mean"]`), or `None` if `optimizer` is not
    an `SNRAdam`.

    `optimizer_values`: the optimizer's state as returned by
    `stateless_apply`, in the order of `optimizer.variables`; it is read
    through a `keras.StatelessScope`, so this works inside `jax.jit`. Without
    it, the optimizer's own variables are read. As `gate_summary()`, the gate
    is 1 before and at the first update.
    """
    if not isinstance(optimizer, keras_snr.SNRAdam):
        return None
    if optimizer_values is None:
        return optimizer.gate_summary()["gate_mean"]
    mapping = list(zip(optimizer.variables, optimizer_values))
    with keras.StatelessScope(state_mapping=mapping):
        return optimizer.gate_summary()["gate_mean"]
