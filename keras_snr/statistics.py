"""Reading `SNRAdam`'s statistics from outside the training step.

`snr_optimizers` finds the `SNRAdam`s behind a model's optimizer (through
`LossScaleOptimizer` and `MultiOptimizer`); `compile_reader` turns a function
of their state into one compiled call per backend, so that a callback's
reduction over every variable costs one dispatch, not one per operation and
variable.
"""

import keras

from keras_snr.snr_adam import SNRAdam


def snr_optimizers(optimizer):
    """Returns the `SNRAdam` instances inside `optimizer`, in order.

    Looks through `keras.optimizers.LossScaleOptimizer` (`inner_optimizer`)
    and `keras.optimizers.MultiOptimizer` (`optimizers`).

    Args:
        optimizer: A Keras optimizer.

    Returns:
        A list of `SNRAdam`, empty when there is none.
    """
    if isinstance(optimizer, SNRAdam):
        return [optimizer]
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        return snr_optimizers(inner)
    found = []
    for sub in getattr(optimizer, "optimizers", None) or []:
        found.extend(snr_optimizers(sub))
    return found


def compile_reader(fn, optimizers):
    """Returns `fn`, which reads the state of `optimizers`, as one compiled call.

    - JAX: `jax.jit`, with the optimizers' variables passed in as arguments
      through a `keras.StatelessScope` (a jitted function must not capture
      variables, whose values it would freeze).
    - TensorFlow: `tf.function` (variables are read by reference).
    - PyTorch: run eagerly under `torch.no_grad()`, as `fit()` runs there;
      the cost is one dispatch per operation and variable
      (`benchmarks/callback_overhead.py` measures it).

    Args:
        fn: A function of tensors, or (nested) lists of tensors of fixed
            shapes, that reads the optimizers' state and returns a structure
            of tensors.
        optimizers: The `SNRAdam` instances whose variables `fn` reads.

    Returns:
        A function of the same arguments returning `fn(*args)`'s structure
        of tensors.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        variables = [v for opt in optimizers for v in opt.variables]

        @jax.jit
        def stateless(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)

        def call(*args):
            return stateless([v.value for v in variables], *args)

        call.compiled = stateless
        return call
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if backend == "torch":
        import torch

        def eager(*args):
            with torch.no_grad():
                return fn(*args)

        return eager
    return fn
