"""Shared test helpers. The suite runs once per backend: KERAS_BACKEND picks it."""

import os
import subprocess
import sys
import textwrap

import keras
import pytest

BACKEND = keras.backend.backend()
ALL_BACKENDS = ("tensorflow", "jax", "torch")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def only_on(*backends):
    """Mark a test to run only on the listed backends."""
    return pytest.mark.skipif(
        BACKEND not in backends,
        reason=f"runs on {', '.join(backends)} only (this run: {BACKEND})",
    )


def run_python(code, backend=None, env=None, cwd=None, timeout=600):
    """Run `code` in a fresh Python process; return CompletedProcess.

    Fails the calling test with the child's output if it exits non-zero.
    """
    full_env = dict(os.environ)
    full_env["KERAS_BACKEND"] = backend or BACKEND
    full_env["PYTHONPATH"] = os.pathsep.join(
        [TESTS_DIR, full_env.get("PYTHONPATH", "")]
    )
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if env:
        full_env.update(env)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(
            f"child process ({full_env['KERAS_BACKEND']}) failed with exit "
            f"code {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
            f"\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result
