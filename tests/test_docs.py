"""The examples users read run, and say what they print.

The `Example:` blocks of the optimizer's docstrings (which the API reference
shows) and the code of the package page, `docs/pypi.md`, run on the current
backend, each after the ones it builds on. The callbacks' examples show a
`fit()` on the user's data and are not run here.
"""

import ast
import io
import os
import re
from contextlib import redirect_stdout

import keras
import numpy as np
import pytest
from conftest import TESTS_DIR

import keras_snr
from keras_snr import snr_adam

ROOT = os.path.dirname(TESTS_DIR)
CODE = re.compile(r"```python\n(.*?)```", re.S)


def examples(docstring):
    """The ```python blocks of a docstring's `Example:` section, dedented."""
    import inspect

    text = inspect.cleandoc(docstring)
    section = text.split("\nExample:\n", 1)
    assert len(section) == 2, "no Example: section"
    return CODE.findall(section[1])


@pytest.fixture(scope="module")
def namespace():
    """What an example may use: keras, numpy, keras_snr, and a trained
    `model` and its `optimizer` (from `SNRAdam`'s own example)."""
    space = {"keras": keras, "np": np, "keras_snr": keras_snr}
    (code,) = examples(keras_snr.SNRAdam.__doc__)
    with redirect_stdout(io.StringIO()) as out:
        exec(code, space)
    assert "gate_mean" in out.getvalue()
    space["variable"] = space["model"].layers[0].kernel
    return space


@pytest.mark.parametrize("name", [
    "keras_snr", "SNRStatistics", "SNRAdam.statistics", "SNRAdam.gate_summary",
    "finite_dataset_alpha", "gate", "gate.gate",
])
def test_docstring_examples_run(name, namespace):
    obj = keras_snr
    for part in name.split(".")[1 if name == "keras_snr" else 0:]:
        obj = getattr(obj, part)
    for code in examples(obj.__doc__):
        with redirect_stdout(io.StringIO()):
            exec(code, dict(namespace))


def test_finite_dataset_alpha_example_prints_what_it_says(namespace):
    (code,) = examples(keras_snr.finite_dataset_alpha.__doc__)
    with redirect_stdout(io.StringIO()) as out:
        exec(code, dict(namespace))
    assert out.getvalue().strip() == "0.00214"


def test_gate_example_values():
    signal = keras.ops.convert_to_tensor([4.0, 1.0, 0.0])
    noise = keras.ops.convert_to_tensor([1.0, 1.0, 1.0])
    gate = keras_snr.gate.gate
    for kind, expected in (("snr", [0.8, 0.5, 0.0]), ("soft", [0.75, 0.0, 0.0]),
                           ("hard", [1.0, 0.0, 0.0])):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(gate(signal, noise, kind=kind)), expected, rtol=1e-6)
    source = keras_snr.gate.gate.__doc__
    assert "[0.8, 0.5, 0.0]" in source and "[0.75, 0.0, 0.0]" in source


def test_package_page_example_runs():
    with open(os.path.join(ROOT, "docs", "pypi.md"), encoding="utf-8") as f:
        blocks = CODE.findall(f.read())
    assert blocks
    for code in blocks:
        code = code.replace("epochs=3", "epochs=1")  # what runs, not how long
        with redirect_stdout(io.StringIO()):
            exec(code, {})


def test_static_docstring_states_the_base_arguments():
    """The source's docstring lists the arguments every Keras optimizer
    takes (the API reference reads the source); at import, Keras's own text
    replaces that list where Keras has it."""
    with open(snr_adam.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SNRAdam"]
    assert snr_adam._BASE_ARGS_FALLBACK in ast.get_docstring(cls, clean=False)
    assert snr_adam._base_optimizer_args_doc() in keras_snr.SNRAdam.__doc__


def test_version_matches_the_package_metadata():
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        (version,) = re.findall(r'^version = "([^"]+)"', f.read(), re.M)
    assert keras_snr.__version__ == version
