"""Data and model of the implicit-neural-representation benchmark.

Used by `benchmarks/inr_denoising.py`;
`guides/denoising_implicit_neural_representation.py` has its own copy. Backend
agnostic: Keras layers and `keras.ops` only.
"""

import math

import keras
import numpy as np
from keras import ops


def camera_image(size):
    """scikit-image's 512x512 camera image (ships with the package, no
    download), downsampled to `size`x`size`, intensities in [0, 1]."""
    from skimage import data
    from skimage.transform import resize

    image = data.camera().astype("float32") / 255.0
    return resize(image, (size, size), anti_aliasing=True).astype("float32")


def pixel_grid(size):
    """(size*size, 2) pixel-centre coordinates in [-1, 1], row-major."""
    axis = (np.arange(size, dtype="float32") + 0.5) / size * 2.0 - 1.0
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def noisy_copy(image, sigma, seed):
    """`image` plus Gaussian noise of standard deviation `sigma` (not clipped,
    so the noise is exactly Gaussian and zero-mean)."""
    rng = np.random.default_rng(seed)
    return (image + sigma * rng.standard_normal(image.shape)).astype("float32")


def psnr(estimate, reference):
    """Peak signal-to-noise ratio in dB for intensities in [0, 1]."""
    mse = float(np.mean((np.asarray(estimate) - np.asarray(reference)) ** 2))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


class FourierFeatures(keras.layers.Layer):
    """gamma(x) = [sin(2 pi x B), cos(2 pi x B)] with a fixed random
    B ~ N(0, scale^2) of shape (input_dim, num_frequencies) (Tancik et al.,
    2020). `scale` sets the highest frequencies the network can fit easily:
    large enough, and it fits pixel-level noise."""

    def __init__(self, num_frequencies, scale, **kwargs):
        super().__init__(**kwargs)
        self.num_frequencies = num_frequencies
        self.scale = scale

    def build(self, input_shape):
        self.frequencies = self.add_weight(
            shape=(input_shape[-1], self.num_frequencies),
            initializer=keras.initializers.RandomNormal(stddev=self.scale),
            trainable=False,
            name="frequencies",
        )

    def call(self, x):
        phase = 2.0 * math.pi * ops.matmul(x, self.frequencies)
        return ops.concatenate([ops.sin(phase), ops.cos(phase)], axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(num_frequencies=self.num_frequencies, scale=self.scale)
        return config


def fourier_mlp(num_frequencies=256, scale=10.0, width=256, depth=2):
    """Coordinate network: Fourier features, then a ReLU MLP, one output
    (the grey level). Seed with `keras.utils.set_random_seed` first."""
    layers = [keras.Input((2,)), FourierFeatures(num_frequencies, scale)]
    layers += [keras.layers.Dense(width, activation="relu") for _ in range(depth)]
    layers += [keras.layers.Dense(1)]
    return keras.Sequential(layers)
