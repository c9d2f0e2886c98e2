"""Derivatives of a network's output with respect to its *inputs*, on every
Keras backend.

A physics-informed loss needs `du/dx` and `du/dt` inside the loss that the
optimizer then differentiates with respect to the weights, so the input
derivative has to stay differentiable. `keras.ops` has no gradient op; each
backend's autodiff does it its own way, and this module holds the one
branch per backend:

- TensorFlow: a `tf.GradientTape` watching the inputs (nested inside the
  tape of `train_step`, which differentiates through it);
- JAX: `jax.vjp` (the reverse pass `jax.grad` is built on), a pure function
  that any enclosing `jax.grad`/`jax.jit` composes with;
- PyTorch: `torch.autograd.grad(..., create_graph=True)`.

Used by `benchmarks/pinn_convection.py` and tested in
`tests/benchmarks/test_pinn_derivatives.py`; `guides/pinn_convection.py` has its own
copy.
"""

import keras
from keras import ops


def value_and_input_gradient(fn, inputs):
    """Return `(fn(inputs), d sum(fn(inputs)) / d inputs)`.

    `fn` maps a `(batch, features)` tensor to outputs of shape `(batch, ...)`
    whose row `i` depends only on input row `i` (true of an MLP applied to
    coordinates; not of batch normalisation or attention across the batch).
    Then the gradient of the sum is, row by row, the gradient of that row's
    output: `grad[i, j] = d fn(inputs)[i] / d inputs[i, j]` for a scalar
    output per row.

    The result is differentiable with respect to anything `fn` closes over
    (the model's weights), so it can appear in a loss that is then
    differentiated by `train_step` or `jax.grad`.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        inputs = tf.convert_to_tensor(inputs)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = fn(inputs)
        grad = tape.gradient(outputs, inputs)
        return outputs, grad
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        outputs, pullback = jax.vjp(fn, jnp.asarray(inputs))
        (grad,) = pullback(jnp.ones_like(outputs))
        return outputs, grad
    if backend == "torch":
        import torch

        inputs = ops.convert_to_tensor(inputs).detach().requires_grad_(True)
        with torch.enable_grad():
            outputs = fn(inputs)
            (grad,) = torch.autograd.grad(
                outputs, inputs, grad_outputs=torch.ones_like(outputs), create_graph=True
            )
        return outputs, grad
    raise NotImplementedError(f"no input-derivative branch for backend {backend!r}")
