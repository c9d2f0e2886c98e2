"""The input-derivative helper of the PINN benchmark (and guide), on the
current backend.

Checks `value_and_input_gradient` (`benchmarks/tasks/pinn_derivatives.py`)
against analytic derivatives (a closed form, and a tanh MLP differentiated
by hand in NumPy), and that the weight gradients `fit()` applies through a residual
loss built on it equal finite differences of that loss.
"""

import keras
import numpy as np
from keras import ops
from tasks.pinn_derivatives import value_and_input_gradient  # benchmarks/ is on pythonpath

BETA = 5.0


def _points(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 1, n)], 1).astype("float32")


def test_closed_form_derivatives():
    xt = _points()
    x, t = xt[:, 0].astype("float64"), xt[:, 1].astype("float64")

    def fn(z):
        return ops.sin(z[:, 0] - BETA * z[:, 1]) * ops.exp(-z[:, 1])

    u, grad = value_and_input_gradient(fn, xt)
    u, grad = ops.convert_to_numpy(u), ops.convert_to_numpy(grad)
    assert grad.shape == xt.shape
    np.testing.assert_allclose(u, np.sin(x - BETA * t) * np.exp(-t), atol=1e-5)
    u_x = np.cos(x - BETA * t) * np.exp(-t)
    u_t = (-BETA * np.cos(x - BETA * t) - np.sin(x - BETA * t)) * np.exp(-t)
    np.testing.assert_allclose(grad[:, 0], u_x, atol=1e-5)
    np.testing.assert_allclose(grad[:, 1], u_t, atol=5e-5)


def test_exact_solution_has_zero_residual():
    _, grad = value_and_input_gradient(lambda z: ops.sin(z[:, 0] - BETA * z[:, 1]), _points())
    grad = ops.convert_to_numpy(grad)
    residual = grad[:, 1] + BETA * grad[:, 0]
    assert np.max(np.abs(residual)) < 1e-4
    assert np.max(np.abs(grad[:, 0])) > 0.5  # not trivially zero


def _mlp(seed=0, width=8):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(width, activation="tanh"), keras.layers.Dense(1)]
    )


def _numpy_mlp(weights, xt):
    """u and du/d(x, t) of Dense(tanh) -> Dense(1), by hand, in float64."""
    w1, b1, w2, b2 = (np.asarray(w, "float64") for w in weights)
    h = np.tanh(xt @ w1 + b1)
    u = (h @ w2 + b2)[:, 0]
    grad = ((1 - h**2) * w2[:, 0]) @ w1.T
    return u, grad


def test_keras_model_input_gradient_matches_hand_derivative():
    model = _mlp()
    xt = _points()
    u, grad = value_and_input_gradient(lambda z: model(z)[:, 0], xt)
    u_ref, grad_ref = _numpy_mlp(model.get_weights(), xt.astype("float64"))
    np.testing.assert_allclose(ops.convert_to_numpy(u), u_ref, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(grad), grad_ref, atol=1e-5)


class ResidualOnly(keras.Model):
    """The guide's pattern, reduced: `fit()`'s train_step differentiates a
    loss built from input derivatives (here the residual alone)."""

    def __init__(self, net, collocation):
        super().__init__()
        self.net = net
        self.collocation = collocation

    def call(self, xt):
        return self.net(xt)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        _, grad = value_and_input_gradient(lambda z: self(z)[:, 0], self.collocation)
        return ops.mean((grad[:, 1] + BETA * grad[:, 0]) ** 2)


def _residual_loss(weights, xt):
    _, grad = _numpy_mlp(weights, xt)
    return np.mean((grad[:, 1] + BETA * grad[:, 0]) ** 2)


def test_weight_gradients_flow_through_residual_loss_in_train_step():
    net = _mlp(seed=1)
    col = _points(32, seed=1)
    model = ResidualOnly(net, col)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01))
    w0 = [np.asarray(w, "float64") for w in net.get_weights()]
    dummy = np.zeros((4, 2), "float32")
    model.fit(dummy, np.zeros((4, 1), "float32"), batch_size=4, epochs=1, verbose=0)
    applied = [(a - b) / 0.01 for a, b in zip(w0, net.get_weights())]

    # Central finite differences of the same loss, in float64 NumPy.
    xt = col.astype("float64")
    h = 1e-6
    for i, w in enumerate(w0):
        fd = np.zeros_like(w)
        for j in np.ndindex(w.shape):
            plus = [v.copy() for v in w0]
            minus = [v.copy() for v in w0]
            plus[i][j] += h
            minus[i][j] -= h
            fd[j] = (_residual_loss(plus, xt) - _residual_loss(minus, xt)) / (2 * h)
        if i == 3:  # the output bias does not enter any derivative
            np.testing.assert_allclose(fd, 0, atol=1e-8)
        np.testing.assert_allclose(applied[i], fd, rtol=2e-3, atol=2e-3 * np.max(np.abs(fd)) + 1e-6)
    assert max(np.max(np.abs(a)) for a in applied) > 1e-3  # the step really moved
