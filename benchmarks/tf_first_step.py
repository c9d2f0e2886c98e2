"""First-step cost of SNRAdam's XLA-compiled update on TensorFlow.

The per-variable update is compiled once per distinct variable shape. This
times the first and second `tf.function` optimizer step on variables of
random distinct shapes, with the compiled update and without it
(`SNRAdam(fused=False)`).

    python benchmarks/tf_first_step.py --vars 20
"""

import argparse
import os
import time

os.environ["KERAS_BACKEND"] = "tensorflow"

from _common import set_threads  # noqa: E402  (benchmarks/ is on sys.path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--vars", type=int, default=20, help="variables, each of a distinct shape")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    set_threads(args.threads)
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_snr

    rng = np.random.default_rng(0)
    shapes = [(int(rng.integers(2, 200)), int(rng.integers(2, 200))) for _ in range(args.vars)]
    for xla in (True, False):
        variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in shapes]
        optimizer = keras_snr.SNRAdam(fused=xla)
        grads = [tf.constant(rng.normal(size=s).astype("float32")) for s in shapes]
        step = tf.function(lambda g: optimizer.apply(g, variables))
        times = []
        for _ in range(2):
            start = time.perf_counter()
            step(grads)
            times.append(time.perf_counter() - start)
        print(f"fused={xla}: first step {times[0]:.2f} s, "
              f"second {times[1] * 1e3:.1f} ms ({len(set(shapes))} distinct shapes)")


if __name__ == "__main__":
    main()
