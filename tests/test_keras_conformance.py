"""Keras's own optimizer tests, run against SNRAdam.

Keras ships its generic optimizer tests inside the installed package
(`keras/src/optimizers/*_test.py`). Each class below subclasses one of
Keras's test classes and says, for every test in it, what happens:

- reused: Keras's test code runs unchanged, with SNRAdam substituted for the
  optimizer it names (module globals of the Keras test module, patched while
  the test runs: see `_snr_adam`);
- ported: the subclass defines a test of the same name, a copy of Keras's
  with the expected numbers, computed there for SGD/Adam, replaced by the
  NumPy reference `ReferenceSNRAdam` (float64; compared to 1e-5, the float32
  agreement `tests/test_snr_adam.py` also uses); each says what else changed;
- not applicable: skipped, with the reason.

A Keras test none of these name fails: a Keras upgrade added it, and it
must be classified here. Keras tests this Keras version lacks are simply
absent. Of the Keras 3 wheels only 3.15.1 ships its tests (neither 3.15.0
nor 3.14.0 nor the sdists do); with a Keras that does not, the classes
below derive from Keras's plain `TestCase`: the ports and the tests beyond
Keras's still run (scripts/test.sh runs them on the oldest supported
Keras), the reused ones are absent, as `test_keras_ships_its_tests` says.
"""

import functools
import importlib
import os
import sys
import warnings
from unittest import mock

import keras
import numpy as np
import pytest
from absl.testing import parameterized
from conftest import BACKEND
from keras.src import optimizers as keras_src_optimizers
from keras.src import testing as keras_testing
from reference import ReferenceSNRAdam

from keras_snr import SNRAdam


def _keras_test_module(name):
    """`keras.src.optimizers.<name>`, or None if this Keras lacks it.

    Imported as a module, never as names: pytest collects every
    `unittest.TestCase` in this module's namespace, and Keras's own classes
    must not run here with Keras's optimizers.
    """
    with warnings.catch_warnings():
        # Keras registers its `requires_trainable_backend` mark in its own
        # conftest, not here; every backend this suite runs is trainable.
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        try:
            return importlib.import_module(f"keras.src.optimizers.{name}")
        except ImportError:
            return None


keras_optimizer_test = _keras_test_module("optimizer_test")
keras_sparse_test = _keras_test_module("optimizer_sparse_test")
keras_adam_test = _keras_test_module("adam_test")
keras_lso_test = _keras_test_module("loss_scale_optimizer_test")
keras_multi_test = _keras_test_module("multi_optimizer_test")
HAS_MULTI_OPTIMIZER = hasattr(keras.optimizers, "MultiOptimizer")  # Keras >= 3.14


class _KerasTestsMissing(keras_testing.TestCase):
    """The base of the classes below where this Keras ships no tests."""


def _keras_class(module, name):
    return _KerasTestsMissing if module is None else getattr(module, name)


def test_keras_ships_its_tests():
    if keras_optimizer_test is None:
        pytest.skip(
            f"Keras {keras.__version__} ships no tests: only the ports and the "
            "tests beyond Keras's run"
        )

TOL = dict(rtol=1e-5, atol=1e-5)  # float32 optimizer vs float64 reference


# ---------------------------------------------------------------- machinery


def _snr_adam(learning_rate=0.001, **kwargs):
    """What `SGD(...)`, `Adam(...)` and `AdamW(...)` build in reused tests.

    Drops the arguments SNRAdam does not have (SGD's `momentum` and
    `nesterov`, Adam's `amsgrad`): the reused tests that pass them only
    serialize the optimizer.
    """
    for name in ("momentum", "nesterov", "amsgrad"):
        kwargs.pop(name, None)
    return SNRAdam(learning_rate=learning_rate, **kwargs)


class _OptimizersWithSNRAdam:
    """Stands in for the `keras.src.optimizers` module inside a Keras test
    module: `SGD`, `Adam` and `AdamW` build an SNRAdam; everything else
    (`get`, `serialize`, `MultiOptimizer`, ...) is Keras's."""

    SGD = Adam = AdamW = staticmethod(_snr_adam)

    def __getattr__(self, name):
        return getattr(keras_src_optimizers, name)


def _base_name(function):
    """The name a test has in Keras's source (absl generates `name0`,
    `name_case`, ... from a parameterized test and keeps it in
    `__wrapped__`)."""
    return getattr(function, "__wrapped__", function).__name__


def _test_names(cls):
    return [n for n in dir(cls) if n.startswith("test") and callable(getattr(cls, n))]


def _keras_body(keras_class, base_name):
    """The unparameterized body of Keras's (parameterized) test `base_name`,
    to call with SNRAdam's parameters; None if this Keras lacks it."""
    for name in _test_names(keras_class):
        function = getattr(keras_class, name)
        if _base_name(function) == base_name:
            return getattr(function, "__wrapped__", function)
    return None


def _run_keras_body(test, keras_module, class_name, base_name, *args, **kwargs):
    """Run Keras's `class_name.base_name` with other arguments, in `test`."""
    keras_class = getattr(keras_module, class_name, None)
    body = None if keras_class is None else _keras_body(keras_class, base_name)
    if body is None:
        test.skipTest(f"Keras {keras.__version__} ships no {class_name}.{base_name}")
    return body(test, *args, **kwargs)


def keras_tests(substitute, reuse, not_applicable=()):
    """Class decorator: the SNRAdam version of the Keras test class it
    subclasses (see the module docstring).

    Args:
        substitute: `{global name: value}` in the Keras test's module,
            patched while each test runs.
        reuse: names of Keras tests that run as they are.
        not_applicable: `{name: reason}` of Keras tests skipped.
    """
    not_applicable = dict(not_applicable)

    def decorate(cls):
        keras_class = cls.__bases__[0]
        if keras_class is _KerasTestsMissing:
            return cls
        keras_module = sys.modules[keras_class.__module__]
        ported = {_base_name(f) for n, f in vars(cls).items() if n.startswith("test")}
        for name in _test_names(keras_class):
            if name in vars(cls):
                continue
            base = _base_name(getattr(keras_class, name))
            if base in reuse:
                continue
            if base in ported:  # variants the port parameterizes differently
                setattr(cls, name, None)
            elif base in not_applicable:
                setattr(cls, name, _skip(not_applicable[base]))
            else:
                setattr(cls, name, _unclassified(keras_class, base))

        keras_set_up = cls.setUp

        def setUp(self):
            keras_set_up(self)
            for global_name, value in substitute.items():
                patcher = mock.patch.object(keras_module, global_name, value)
                patcher.start()
                self.addCleanup(patcher.stop)

        cls.setUp = setUp
        return cls

    return decorate


def _skip(reason):
    def test(self):
        self.skipTest(f"not applicable to SNRAdam: {reason}")

    return test


def _unclassified(keras_class, base):
    def test(self):
        self.fail(
            f"Keras's {keras_class.__module__}.{keras_class.__name__}.{base} "
            "is new: classify it in tests/test_keras_conformance.py (reuse, "
            "port or not applicable)."
        )

    return test


def _reference(initial, grads, **config):
    """The weights after each step of `ReferenceSNRAdam` from `initial`,
    one gradient per step, as float32."""
    optimizer = ReferenceSNRAdam(**config)
    weights = [np.asarray(initial, np.float64)]
    trajectory = []
    for grad in grads:
        weights = optimizer.step(weights, [np.asarray(grad, np.float64)])
        trajectory.append(weights[0].astype("float32"))
    return trajectory


def _np(x):
    return keras.ops.convert_to_numpy(x)


ONES = [[1.0, 1.0], [1.0, 1.0]]


# ------------------------------------------------------- optimizer_test.py


@keras_tests(
    substitute={"optimizers": _OptimizersWithSNRAdam()},
    reuse={
        "test_iterations_counter",
        # The clip tests check the base class's `_clip_gradients` on an
        # SNRAdam; `test_clipping_reaches_the_update` (below) checks the
        # update sees the clipped gradient.
        "test_clip_args",
        "test_clip_norm",
        "test_clip_value",
        "test_global_clip_norm",
        # A zero gradient: SNRAdam's step is 0 (and the decay tiny); the
        # constraint then clips the negative weights to 0.
        "test_constraints_are_applied",
        "test_set_weights",
        # Two variables before `build` (iterations, learning rate), as Adam.
        "test_setting_lr_to_callable_untracks_lr_var",
        "test_mixed_with_tf_variables",
    },
)
class TestOptimizer(_keras_class(keras_optimizer_test, "OptimizerTest")):
    # Ports of Keras's SGD tests (learning rate 1 or 0.1); only the expected
    # weights changed, unless said otherwise.

    def test_empty_gradients(self):
        v = keras.Variable([[3.0, 4.0], [5.0, 6.0]])
        optimizer = SNRAdam(learning_rate=1.0)
        with self.assertRaisesRegex(ValueError, "No gradients provided for any variable."):
            optimizer.apply_gradients([(None, v)])

        v2 = keras.Variable([[3.0, 4.0], [5.0, 6.0]])
        grads2 = keras.ops.convert_to_tensor(ONES)
        optimizer = SNRAdam(learning_rate=1.0)
        with self.assertWarns(Warning):
            optimizer.apply_gradients([(None, v), (grads2, v2)])
        self.assertAllClose(v, [[3.0, 4.0], [5.0, 6.0]])
        want = _reference([[3.0, 4.0], [5.0, 6.0]], [ONES], learning_rate=1.0)
        self.assertAllClose(v2, want[-1], **TOL)

    def test_ema(self):
        v = keras.Variable([[3.0, 4.0], [5.0, 6.0]])
        grads = keras.ops.convert_to_tensor(ONES)
        optimizer = SNRAdam(
            learning_rate=1.0, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3
        )
        w1, w2, w3 = _reference(np.array(v), [ONES] * 3, learning_rate=1.0)
        optimizer.apply_gradients([(grads, v)])
        self.assertAllClose(v, w1, **TOL)
        ema = w1  # initialized after first step
        self.assertAllClose(optimizer._model_variables_moving_average[0], ema, **TOL)
        optimizer.apply_gradients([(grads, v)])
        self.assertAllClose(v, w2, **TOL)
        ema = 0.9 * ema + 0.1 * w2
        self.assertAllClose(optimizer._model_variables_moving_average[0], ema, **TOL)
        optimizer.apply_gradients([(grads, v)])
        # Variables were overwritten with EMA
        ema = 0.9 * ema + 0.1 * w3
        self.assertAllClose(v, ema, **TOL)
        self.assertAllClose(optimizer._model_variables_moving_average[0], ema, **TOL)

    def test_ema_with_model_fit(self):
        x_train = np.ones((1, 1)).astype("float32")
        y_train = np.zeros((1, 1)).astype("float32")
        optimizer = SNRAdam(learning_rate=0.1, use_ema=True, ema_momentum=0.9)
        model = keras.Sequential(
            [keras.layers.Dense(2, kernel_initializer="ones", use_bias=False)]
        )
        model.compile(loss="mse", optimizer=optimizer, run_eagerly=True)
        model.fit(x_train, y_train, batch_size=1, epochs=2, verbose=0)
        # The loss mean(w**2) over the two outputs has gradient w: two steps
        # of the reference, each from the weights it reached.
        reference = ReferenceSNRAdam(learning_rate=0.1)
        w1 = reference.step([np.ones((1, 2))], [np.ones((1, 2))])[0]
        w2 = reference.step([w1], [w1])[0]
        ema = 0.9 * w1 + 0.1 * w2
        self.assertAllClose(_np(optimizer._model_variables_moving_average[0]), ema, **TOL)
        # fit() ends with the weights overwritten by their average.
        self.assertAllClose(_np(model.trainable_variables[0]), ema, **TOL)

    @pytest.mark.skipif(BACKEND != "tensorflow", reason="Requires TF")
    def test_tf_checkpointing(self):
        import tensorflow as tf

        model = keras.Sequential([keras.layers.Dense(2)])
        optimizer = SNRAdam()
        x, y = np.random.random((1, 2)), np.random.random((1, 2))
        model.compile(optimizer, "mse")
        model.train_on_batch(x, y)
        ref_pred = model.predict(x, verbose=0)

        # Both model and optimizer are Trackables
        checkpoint = tf.train.Checkpoint(model, optimizer=optimizer)
        temp_filepath = os.path.join(self.get_temp_dir(), "tf_ckpt")
        save_path = checkpoint.save(temp_filepath)

        # Keep training the model (predictions now differ). Keras checks
        # they moved by more than 1e-3, Adam's step; SNRAdam's second step
        # on the same batch is gated to about half of it (q = 0.53), so the
        # threshold here is 1e-4, still 10x the restore tolerance below.
        model.train_on_batch(x, y)
        pred = model.predict(x, verbose=0)
        self.assertNotAllClose(pred, ref_pred, atol=1e-4)

        # Restore the model and check prediction correctness
        checkpoint.restore(save_path)
        pred = model.predict(x, verbose=0)
        self.assertAllClose(pred, ref_pred, atol=1e-5)

    def test_get_method(self):
        # Keras checks its own names ("sgd", "adamw"); these are SNRAdam's:
        # the plain name keras_snr registers and the registered name.
        for name in ("SNRAdam", "keras_snr>SNRAdam"):
            obj = keras.optimizers.get(name)
            self.assertIsInstance(obj, SNRAdam)
        obj = keras.optimizers.get(
            {"class_name": "keras_snr>SNRAdam", "config": {"learning_rate": 0.5}}
        )
        self.assertIsInstance(obj, SNRAdam)
        self.assertAllClose(obj.learning_rate, 0.5)

        obj = keras.optimizers.get(None)
        self.assertEqual(obj, None)

        with self.assertRaises(ValueError):
            keras.optimizers.get("typo")

    def test_static_loss_scaling(self):
        v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
        grads = keras.ops.convert_to_tensor([[1.0, 2.0], [3.0, 4.0]]) * 1024.0
        optimizer = SNRAdam(learning_rate=1.0, loss_scale_factor=1024.0)
        optimizer.apply_gradients([(grads, v)])
        self.assertEqual(optimizer.scale_loss(1.0), 1024.0)
        # The update sees the unscaled gradient.
        want = _reference(
            [[1.0, 2.0], [3.0, 4.0]], [[[1.0, 2.0], [3.0, 4.0]]], learning_rate=1.0
        )
        self.assertAllClose(v, want[-1], **TOL)

    def test_gradient_accumulation(self):
        v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
        grads = keras.ops.convert_to_tensor(ONES)
        optimizer = SNRAdam(learning_rate=1.0, gradient_accumulation_steps=3)
        self.assertEqual(optimizer.gradient_accumulation_steps, 3)
        initial = [[1.0, 2.0], [3.0, 4.0]]
        (w1,) = _reference(initial, [ONES], learning_rate=1.0)

        # Iteration 1
        optimizer.apply_gradients([(grads, v)])
        self.assertAllClose(v, initial)
        self.assertAllClose(optimizer._accumulated_gradients[0], ONES)
        self.assertAllClose(optimizer._iterations, 1)
        self.assertAllClose(optimizer.iterations, 0)

        # Iteration 2
        optimizer.apply_gradients([(grads, v)])
        self.assertAllClose(v, initial)
        self.assertAllClose(optimizer._accumulated_gradients[0], [[2.0, 2.0], [2.0, 2.0]])
        self.assertAllClose(optimizer._iterations, 2)
        self.assertAllClose(optimizer.iterations, 0)

        # Iteration 3: one step with the mean gradient
        optimizer.apply_gradients([(grads, v)])
        self.assertAllClose(v, w1, **TOL)
        self.assertAllClose(optimizer._accumulated_gradients[0], [[0.0, 0.0], [0.0, 0.0]])
        self.assertAllClose(optimizer._iterations, 3)
        self.assertAllClose(optimizer.iterations, 1)

        # Iteration 4
        optimizer.apply_gradients([(grads, v)])
        self.assertAllClose(v, w1, **TOL)
        self.assertAllClose(optimizer._accumulated_gradients[0], ONES)
        self.assertAllClose(optimizer._iterations, 4)
        self.assertAllClose(optimizer.iterations, 1)

    @parameterized.parameters(["keras_snr>SNRAdam"])
    def test_gradient_accumulation_with_weigth_decay(self, optimizer):
        # Keras's test, run with SNRAdam's registered name instead of its
        # list of optimizers (Keras spells it "weigth").
        _run_keras_body(
            self,
            keras_optimizer_test,
            "OptimizerTest",
            "test_gradient_accumulation_with_weigth_decay",
            optimizer,
        )

    def test_callable_learning_rate(self):
        v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
        grads = keras.ops.convert_to_tensor(ONES)
        optimizer = SNRAdam(learning_rate=lambda: 0.1)
        self.assertAllClose(optimizer.iterations, 0)
        optimizer.apply_gradients([(grads, v)])
        want = _reference([[1.0, 2.0], [3.0, 4.0]], [ONES], learning_rate=0.1)
        self.assertAllClose(v, want[-1], **TOL)
        self.assertAllClose(optimizer.iterations, 1)

    def test_overwrite_with_gradient(self):
        v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
        v.overwrite_with_gradient = True
        v2 = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
        grads = keras.ops.convert_to_tensor(ONES)
        grads2 = keras.ops.convert_to_tensor(ONES)

        optimizer = SNRAdam(learning_rate=1.0)
        optimizer.apply_gradients([(grads, v), (grads2, v2)])

        # `v` is overwritten by its gradient but `v2` is updated normally
        self.assertAllClose(v, ONES)
        want = _reference([[1.0, 2.0], [3.0, 4.0]], [ONES], learning_rate=1.0)
        self.assertAllClose(v2, want[-1], **TOL)

    def test_overwrite_with_gradient_with_gradient_accumulation(self):
        v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
        v.overwrite_with_gradient = True
        v2 = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
        grad_ones = keras.ops.convert_to_tensor(ONES)
        grad_twos = keras.ops.convert_to_tensor([[2.0, 2.0], [2.0, 2.0]])
        optimizer = SNRAdam(learning_rate=1.0, gradient_accumulation_steps=2)
        initial = [[1.0, 2.0], [3.0, 4.0]]
        # One step with the mean of the two gradients.
        (w1,) = _reference(initial, [np.full((2, 2), 1.5)], learning_rate=1.0)

        # Iteration 1
        optimizer.apply_gradients([(grad_ones, v), (grad_ones, v2)])
        self.assertAllClose(optimizer._iterations, 1)
        self.assertAllClose(optimizer.iterations, 0)
        self.assertAllClose(v, initial)
        self.assertAllClose(v2, initial)
        self.assertAllClose(optimizer._accumulated_gradients[0], ONES)
        self.assertAllClose(optimizer._accumulated_gradients[1], ONES)

        # Iteration 2
        optimizer.apply_gradients([(grad_twos, v), (grad_twos, v2)])
        self.assertAllClose(optimizer._iterations, 2)
        self.assertAllClose(optimizer.iterations, 1)
        self.assertAllClose(v, [[2.0, 2.0], [2.0, 2.0]])
        self.assertAllClose(v2, w1, **TOL)
        self.assertAllClose(optimizer._accumulated_gradients[0], np.zeros((2, 2)))
        self.assertAllClose(optimizer._accumulated_gradients[1], np.zeros((2, 2)))

        # Iteration 3
        optimizer.apply_gradients([(grad_ones, v), (grad_ones, v2)])
        self.assertAllClose(optimizer._iterations, 3)
        self.assertAllClose(optimizer.iterations, 1)
        self.assertAllClose(v, [[2.0, 2.0], [2.0, 2.0]])
        self.assertAllClose(v2, w1, **TOL)
        self.assertAllClose(optimizer._accumulated_gradients[0], ONES)
        self.assertAllClose(optimizer._accumulated_gradients[1], ONES)

    @parameterized.parameters(["SNRAdam", "keras_snr>SNRAdam"])
    def test_pickleable_optimizers(self, optimizer):
        # Keras's test, run with SNRAdam's names instead of its list.
        _run_keras_body(
            self, keras_optimizer_test, "OptimizerTest", "test_pickleable_optimizers", optimizer
        )

    def test_optimizer_auto_naming(self):
        # Keras checks its own classes' names ("adam", "sgd_1", ...).
        snr_1 = SNRAdam()
        snr_2 = SNRAdam()
        self.assertEqual(snr_1.name, "snr_adam")
        self.assertEqual(snr_2.name, "snr_adam_1")

        # Test explicit naming
        custom = SNRAdam(name="my_snr_adam")
        self.assertEqual(custom.name, "my_snr_adam")

        # Test serialization and deserialization preserves name
        reloaded_2 = keras.optimizers.deserialize(keras.optimizers.serialize(snr_2))
        self.assertEqual(reloaded_2.name, "snr_adam_1")
        reloaded_custom = keras.optimizers.deserialize(keras.optimizers.serialize(custom))
        self.assertEqual(reloaded_custom.name, "my_snr_adam")


@pytest.mark.parametrize(
    "clip, clipped",
    [
        (dict(clipnorm=1.0), lambda g: g / max(1.0, np.linalg.norm(g))),
        (dict(clipvalue=0.5), lambda g: np.clip(g, -0.5, 0.5)),
        (dict(global_clipnorm=1.0), lambda g: g / max(1.0, np.linalg.norm(g))),
    ],
    ids=["clipnorm", "clipvalue", "global_clipnorm"],
)
def test_clipping_reaches_the_update(clip, clipped):
    """Beyond Keras's clip tests (which call `_clip_gradients` alone): two
    steps of SNRAdam see the clipped gradients (the second, of a different
    size, makes the gate depend on them)."""
    initial = np.array([1.0, -2.0, 3.0], "float32")
    grads = [np.array([3.0, -4.0, 0.2], "float32"), np.array([0.1, 0.4, -0.3], "float32")]
    variable = keras.Variable(initial)
    optimizer = SNRAdam(learning_rate=0.1, **clip)
    for g in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
    want = _reference(initial, [clipped(g) for g in grads], learning_rate=0.1)
    np.testing.assert_allclose(_np(variable), want[-1], **TOL)


# ------------------------------------------------------------ adam_test.py


@keras_tests(
    substitute={"Adam": _snr_adam},
    reuse={
        # Round-trips SNRAdam's config (`amsgrad` dropped by `_snr_adam`).
        "test_config",
        # Zero gradients: SNRAdam's step is exactly 0, as Adam's, so the
        # expected weights are decoupled weight decay alone.
        "test_weight_decay",
        "test_clip_norm",
        "test_clip_value",
        # Adam's EMA tests compare the optimizer with itself, not numbers.
        "test_ema",
        "test_ema_overwrite_frequency",
        # TensorFlow: an embedding's IndexedSlices gradient through clipnorm.
        "test_clipnorm_indexed_slices",
    },
    not_applicable={
        "test_correctness_with_golden": "Adam's (amsgrad) numbers; SNRAdam's "
        "trajectories are checked against the NumPy reference in "
        "tests/test_snr_adam.py",
    },
)
class TestAdam(_keras_class(keras_adam_test, "AdamTest")):
    def test_single_step(self):
        optimizer = SNRAdam(learning_rate=0.5)
        grads = keras.ops.array([1.0, 6.0, 7.0, 2.0])
        vars = keras.Variable([1.0, 2.0, 3.0, 4.0])
        optimizer.apply_gradients(zip([grads], [vars]))
        want = _reference([1.0, 2.0, 3.0, 4.0], [[1.0, 6.0, 7.0, 2.0]], learning_rate=0.5)
        self.assertAllClose(vars, want[-1], **TOL)


# ------------------------------------------------ optimizer_sparse_test.py

# SNRAdam densifies sparse gradients (`snr_adam._dense`): its noise
# statistic decays every coordinate, so the update is dense anyway. Keras's
# `test_sparse_gradients` therefore runs with both `expect_*` flags False
# (as for Adam): it still checks that nothing calls `variable.assign` around
# `self.assign`, and that no sparse value reaches a variable.
SPARSE_CASES = [
    {"testcase_name": "snr_adam", "optimizer_class": SNRAdam},
    {
        "testcase_name": "loss_scale_optimizer_snr_adam",
        "optimizer_class": lambda: keras.optimizers.LossScaleOptimizer(SNRAdam(learning_rate=0.5)),
    },
]




# Keras's own skip, stated here too for Kerases that ship no tests.
@pytest.mark.skipif(BACKEND == "torch", reason="Backend does not support sparse tensors.")
@keras_tests(substitute={}, reuse=set())
class TestOptimizerSparse(_keras_class(keras_sparse_test, "OptimizerSparseTest")):
    # Keras's two tests, run with SNRAdam's cases instead of Keras's list of
    # optimizers.

    @parameterized.named_parameters(SPARSE_CASES)
    def test_sparse_gradients(self, optimizer_class):
        _run_keras_body(
            self,
            keras_sparse_test,
            "OptimizerSparseTest",
            "test_sparse_gradients",
            optimizer_class,
            expect_model_sparse_variable_updates=False,
            expect_optimizer_sparse_variable_updates=False,
        )

    @parameterized.named_parameters(SPARSE_CASES)
    def test_sparse_correctness(self, optimizer_class):
        _run_keras_body(
            self,
            keras_sparse_test,
            "OptimizerSparseTest",
            "test_sparse_correctness",
            optimizer_class,
        )

    # The same with `fused=False`: the plain `keras.ops` update, which is
    # also what runs on TensorFlow inside an XLA-compiled step.
    def test_sparse_gradients_unfused(self):
        _run_keras_body(
            self,
            keras_sparse_test,
            "OptimizerSparseTest",
            "test_sparse_gradients",
            functools.partial(SNRAdam, fused=False),
            expect_model_sparse_variable_updates=False,
            expect_optimizer_sparse_variable_updates=False,
        )

    def test_sparse_correctness_unfused(self):
        _run_keras_body(
            self,
            keras_sparse_test,
            "OptimizerSparseTest",
            "test_sparse_correctness",
            functools.partial(SNRAdam, fused=False),
        )


@pytest.mark.skipif(BACKEND != "tensorflow", reason="IndexedSlices gradients are TensorFlow's")
def test_embedding_fit_with_jit_compile():
    """Beyond Keras: an Embedding (IndexedSlices gradient) trained with an
    XLA-compiled step, the default of `fit()` on TensorFlow with a GPU.
    Failed before keras_snr densified `tf.IndexedSlices` itself (Keras's
    `convert_to_tensor(sparse=False)` leaves them sparse): TypeError."""
    model = keras.Sequential(
        [keras.layers.Embedding(10, 4), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    model.compile(SNRAdam(), "mse", jit_compile=True)
    model.fit(np.ones((8, 3), "int32"), np.zeros((8, 1)), verbose=0)


# -------------------------------------------- loss_scale_optimizer_test.py


def _lso_skip(test, stateless):
    """Keras's `_skip_test_for_stateless`, copied: the ports also run where
    Keras ships no tests."""
    if not stateless and BACKEND == "jax":
        test.skipTest("LossScaleOptimizer must use stateless_apply with JAX.")
    if stateless and BACKEND == "tensorflow":
        test.skipTest("stateless_apply is not supported with the TF backend.")


def _lso_apply(optimizer, grads, vars, stateless):
    """Keras's stateless/stateful apply, as its LSO tests write it."""
    if stateless:
        optimizer.build(vars)
        vars, _ = optimizer.stateless_apply(
            [v.value for v in optimizer.variables], grads, [v.value for v in vars]
        )
    else:
        optimizer.apply(grads, vars)
    return vars


@keras_tests(
    substitute={"SGD": _snr_adam},
    reuse={
        # Round-trips LossScaleOptimizer(SNRAdam) (SGD's `momentum` and
        # `nesterov` dropped by `_snr_adam`).
        "test_config",
        # Non-finite gradients: the step is skipped, weights unchanged.
        "test_infinite_step",
        "test_finite_step_with_overwrite",
        # The loss scale's dynamics and the iteration counter do not depend
        # on the inner optimizer's numbers.
        "test_downscaling",
        "test_upscaling",
        "test_iterations_update",
        "test_serialization",
        "test_init_dynamic_arg",
        "test_init_unsupported_arg",
        "test_init_base_optimizer_unsupported_args",
    },
    not_applicable={
        "test_deserialization_backwards_compatibility": "it checks that "
        "LossScaleOptimizer accepts its own legacy config keys, with a "
        "hard-coded SGD config inside; the inner optimizer plays no part",
    },
)
class TestLossScaleOptimizer(_keras_class(keras_lso_test, "LossScaleOptimizerTest")):
    # Ports of Keras's SGD(learning_rate=0.5) steps: the expected weights are
    # the reference's first step on the unscaled gradient.
    GRAD = [1.0, 6.0, 7.0, 2.0]
    WANT = _reference([1.0, 2.0, 3.0, 4.0], [GRAD], learning_rate=0.5)[-1]

    def test_apply_with_no_vars(self):
        _lso_skip(self, False)
        optimizer = keras.optimizers.LossScaleOptimizer(SNRAdam(learning_rate=0.5))
        grads = [keras.ops.array(self.GRAD) * optimizer.initial_scale]
        vars = [keras.Variable([1.0, 2.0, 3.0, 4.0])]
        optimizer.build(vars)
        optimizer.apply(grads)
        self.assertAllClose(vars[0], self.WANT, **TOL)

    @parameterized.named_parameters(("stateless", True), ("stateful", False))
    def test_finite_step(self, stateless):
        _lso_skip(self, stateless)
        optimizer = keras.optimizers.LossScaleOptimizer(SNRAdam(learning_rate=0.5))
        grads = [keras.ops.array(self.GRAD) * optimizer.initial_scale]
        vars = [keras.Variable([1.0, 2.0, 3.0, 4.0])]
        vars = _lso_apply(optimizer, grads, vars, stateless)
        self.assertAllClose(vars[0], self.WANT, **TOL)

    @parameterized.named_parameters(("stateless", True), ("stateful", False))
    def test_finite_step_with_inner_loss_scale(self, stateless):
        _lso_skip(self, stateless)
        # Ensure that the inner loss scale does not interfere with the update.
        inner = SNRAdam(learning_rate=0.5, loss_scale_factor=100)
        optimizer = keras.optimizers.LossScaleOptimizer(inner)
        grads = [keras.ops.array(self.GRAD) * optimizer.initial_scale]
        vars = [keras.Variable([1.0, 2.0, 3.0, 4.0])]
        vars = _lso_apply(optimizer, grads, vars, stateless)
        self.assertAllClose(vars[0], self.WANT, **TOL)


# ------------------------------------------------- multi_optimizer_test.py

if not HAS_MULTI_OPTIMIZER:

    @pytest.mark.skip(reason=f"Keras {keras.__version__} has no MultiOptimizer (added in 3.14)")
    def test_multi_optimizer():
        pass

else:

    def _in_scope(scope, value, name="kernel"):
        with keras.name_scope(scope):
            return keras.Variable(value, name=name)

    @keras_tests(
        # Both SGD and Adam: every sub-optimizer of the reused tests is an
        # SNRAdam.
        substitute={"optimizers": _OptimizersWithSNRAdam()},
        reuse={
            "test_optimizer_map_matching",
            "test_multi_optimizer_initialization",
            "test_default_fallback",
            "test_loss_scaling",
            # The callback tests check learning rates and swapped weights,
            # not updates.
            "test_learning_rate_scheduler_with_multi_optimizer",
            "test_reduce_lr_on_plateau_with_multi_optimizer",
            "test_tensorboard_logging_with_multi_optimizer",
            "test_swap_ema_weights_with_multi_optimizer",
            "test_multi_optimizer_blocks_nested_optimizers",
        },
    )
    class TestMultiOptimizer(_keras_class(keras_multi_test, "MultiOptimizerTest")):
        # Ports of Keras's SGD tests: the sub-optimizers Keras checks by
        # their numbers are SNRAdams checked against the reference; a
        # learning rate 0 sub-optimizer (no step, no decay) stays an SNRAdam.

        def test_stateful_apply(self):
            if BACKEND == "jax":
                self.skipTest("stateful_apply is not supported with the JAX backend")
            w1 = _in_scope("dense_1", [[2.0, 2.0]])
            w2 = _in_scope("dense_2", [[3.0, 3.0]])
            w_fallback = _in_scope("other", [[4.0, 4.0]])
            opt_1 = SNRAdam(learning_rate=0.1)
            opt_2 = SNRAdam(learning_rate=1.0)
            default_opt = SNRAdam(learning_rate=0.0)
            opt_map = keras.optimizers.OptimizerMap(default_optimizer=default_opt)
            opt_map["^dense_1/.*"] = opt_1
            opt_map["^dense_2/.*"] = opt_2
            multi_opt = keras.optimizers.MultiOptimizer(opt_map)
            multi_opt.build([w1, w2, w_fallback])
            grads = [keras.ops.convert_to_tensor([[1.0, 1.0]])] * 3

            multi_opt.apply(grads, [w1, w2, w_fallback])

            self.assertAllClose(
                _np(w1), _reference([[2.0, 2.0]], [[[1.0, 1.0]]], learning_rate=0.1)[-1], **TOL
            )
            self.assertAllClose(
                _np(w2), _reference([[3.0, 3.0]], [[[1.0, 1.0]]], learning_rate=1.0)[-1], **TOL
            )
            self.assertAllClose(_np(w_fallback), [[4.0, 4.0]])
            self.assertEqual(int(multi_opt.iterations), 1)
            for opt in multi_opt.optimizers:
                self.assertEqual(int(opt.iterations), 1)

        def test_stateless_apply(self):
            if BACKEND == "tensorflow":
                self.skipTest("stateless_apply is not supported with the TensorFlow backend")
            w1 = _in_scope("dense_1", [[2.0, 2.0]])
            w2 = _in_scope("dense_2", [[3.0, 3.0]])
            opt_1 = SNRAdam(learning_rate=0.1)
            opt_2 = SNRAdam(learning_rate=1.0)
            opt_map = keras.optimizers.OptimizerMap(default_optimizer=opt_2)
            opt_map["^dense_1/.*"] = opt_1
            multi_opt = keras.optimizers.MultiOptimizer(opt_map)
            multi_opt.build([w1, w2])
            grads = [keras.ops.convert_to_tensor([[1.0, 1.0]])] * 2

            new_trainable_vars, _ = multi_opt.stateless_apply(
                [_np(v) for v in multi_opt.variables], grads, [_np(w1), _np(w2)]
            )

            self.assertAllClose(
                new_trainable_vars[0],
                _reference([[2.0, 2.0]], [[[1.0, 1.0]]], learning_rate=0.1)[-1],
                **TOL,
            )
            self.assertAllClose(
                new_trainable_vars[1],
                _reference([[3.0, 3.0]], [[[1.0, 1.0]]], learning_rate=1.0)[-1],
                **TOL,
            )

        def test_serialization(self):
            # Keras's test with SNRAdam for its Adam and SGD: the class names
            # checked after the round trip change accordingly.
            default_opt = keras.optimizers.RMSprop(learning_rate=1e-4)
            opt_map = keras.optimizers.OptimizerMap(default_optimizer=default_opt)
            opt_map["^dense_1/.*"] = SNRAdam(learning_rate=1e-3)
            opt_map["^dense_2/.*"] = SNRAdam(learning_rate=1e-2, gate="hard")
            multi_opt = keras.optimizers.MultiOptimizer(opt_map)
            w1 = _in_scope("dense_1", [[1.0]])
            w2 = _in_scope("dense_2", [[1.0]])
            w3 = _in_scope("other", [[1.0]])
            multi_opt.build([w1, w2, w3])

            config = keras.optimizers.serialize(multi_opt)
            reconstructed = keras.optimizers.deserialize(config)
            reconstructed.build([w1, w2, w3])

            self.assertEqual(
                [type(o).__name__ for o in reconstructed.optimizers],
                ["SNRAdam", "SNRAdam", "RMSprop"],
            )
            # Beyond Keras: SNRAdam's own arguments survive the round trip.
            self.assertEqual(reconstructed.optimizers[1].gate, "hard")
            index = reconstructed._var_to_optimizer_idx[reconstructed._var_key(w1)]
            self.assertEqual(reconstructed.optimizers[index].get_config()["gate"], "snr")

        def test_gradient_unscaling(self):
            w = _in_scope("dense_1", [[2.0, 2.0]])
            opt = SNRAdam(learning_rate=0.1, loss_scale_factor=2.0)
            opt_map = keras.optimizers.OptimizerMap(default_optimizer=opt)
            opt_map["^dense_1/.*"] = opt
            multi_opt = keras.optimizers.MultiOptimizer(opt_map, loss_scale_factor=5.0)
            multi_opt.build([w])
            # Gradient 10.0, scaled by the MultiOptimizer's loss_scale_factor
            # 5.0: the update sees 2.0.
            grads = [keras.ops.convert_to_tensor([[10.0, 10.0]])]
            multi_opt.apply(grads, [w])
            want = _reference([[2.0, 2.0]], [[[2.0, 2.0]]], learning_rate=0.1)[-1]
            self.assertAllClose(_np(w), want, **TOL)

        def test_custom_callable_function(self):
            opt_snr = SNRAdam(learning_rate=1e-3)
            opt_snr_2 = SNRAdam(learning_rate=1e-2)

            def optimizer_selector(variable):
                if "dense_1" in getattr(variable, "path", ""):
                    return opt_snr
                return opt_snr_2

            multi_opt = keras.optimizers.MultiOptimizer(optimizer_selector)
            w1 = _in_scope("dense_1", [[1.0]])
            w2 = _in_scope("dense_2", [[1.0]])
            multi_opt.build([w1, w2])
            self.assertEqual(len(multi_opt.optimizers), 2)
            self.assertEqual(multi_opt.optimizers[0], opt_snr)
            self.assertEqual(multi_opt.optimizers[1], opt_snr_2)

            grads = [keras.ops.convert_to_tensor([[1.0]])] * 2
            multi_opt.apply(grads, [w1, w2])
            for w, lr in ((w1, 1e-3), (w2, 1e-2)):
                want = _reference([[1.0]], [[[1.0]]], learning_rate=lr)[-1]
                self.assertAllClose(_np(w), want, **TOL)

        def test_multi_optimizer_with_model_fit(self):
            x_train = np.ones((1, 1)).astype("float32")
            y_train = np.zeros((1, 1)).astype("float32")
            optimizer = keras.optimizers.MultiOptimizer(
                keras.optimizers.OptimizerMap(
                    default_optimizer=SNRAdam(learning_rate=0.1),
                    optimizer_map={
                        ".*dense_1/.*": SNRAdam(learning_rate=1e-3),
                        ".*dense_2/.*": SNRAdam(learning_rate=1e-2),
                    },
                )
            )
            dense = functools.partial(keras.layers.Dense, kernel_initializer="ones", use_bias=False)
            model = keras.Sequential([dense(2, name="dense_1"), dense(1, name="dense_2")])
            model.compile(loss="mse", optimizer=optimizer, run_eagerly=True)
            model.fit(x_train, y_train, batch_size=1, epochs=1, verbose=0)

            # The loss (w2 . w1)**2, all weights 1: gradient 4 on every entry.
            w1 = _np(model.layers[0].kernel)
            w2 = _np(model.layers[1].kernel)
            for w, lr in ((w1, 1e-3), (w2, 1e-2)):
                want = _reference(np.ones(w.shape), [np.full(w.shape, 4.0)], learning_rate=lr)
                self.assertAllClose(w, want[-1], **TOL)

            self.assertEqual(int(optimizer.iterations), 1)
            self.assertEqual(int(optimizer.optimizers[2].iterations), 0)
            self.assertEqual(int(optimizer.optimizers[0].iterations), 1)
            self.assertEqual(int(optimizer.optimizers[1].iterations), 1)

        def test_multi_optimizer_wrapped_in_loss_scale_optimizer(self):
            opt_1 = SNRAdam(learning_rate=0.1)
            opt_2 = SNRAdam(learning_rate=0.1)
            multi_opt = keras.optimizers.MultiOptimizer(
                keras.optimizers.OptimizerMap(
                    default_optimizer=opt_2, optimizer_map={".*dense_1/.*": opt_1}
                ),
                loss_scale_factor=5.0,
            )
            lso_opt = keras.optimizers.LossScaleOptimizer(
                multi_opt, initial_scale=10.0, dynamic_growth_steps=1000
            )
            w1 = _in_scope("dense_1", [[2.0, 2.0]])
            w2 = _in_scope("dense_2", [[2.0, 2.0]])
            lso_opt.build([w1, w2])

            self.assertIsNone(multi_opt.loss_scale_factor)
            self.assertIsNone(opt_1.loss_scale_factor)
            self.assertIsNone(opt_2.loss_scale_factor)
            self.assertAllClose(lso_opt.scale_loss(keras.ops.convert_to_tensor(2.0)), 20.0)

            # Gradients 10.0 unscaled by the dynamic scale 10.0: 1.0.
            grads = [keras.ops.convert_to_tensor([[10.0, 10.0]])] * 2
            if BACKEND == "jax":
                new_trainable, _ = lso_opt.stateless_apply(
                    [v.value for v in lso_opt.variables], grads, [w1.value, w2.value]
                )
                w1.assign(new_trainable[0])
                w2.assign(new_trainable[1])
            else:
                lso_opt.apply(grads, [w1, w2])
            want = _reference([[2.0, 2.0]], [[[1.0, 1.0]]], learning_rate=0.1)[-1]
            self.assertAllClose(_np(w1), want, **TOL)
            self.assertAllClose(_np(w2), want, **TOL)
