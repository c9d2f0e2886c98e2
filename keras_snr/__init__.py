"""keras_snr: SNR-gated Adam for Keras 3 (TensorFlow, JAX and PyTorch)."""

import keras

from keras_snr import gate
from keras_snr.callbacks import GateLogger
from keras_snr.callbacks import PopulationRiskEstimate
from keras_snr.callbacks import ValidationFreeStopping
from keras_snr.snr_adam import SLOT_LAYOUT_VERSION
from keras_snr.snr_adam import SNRAdam
from keras_snr.snr_adam import SNRStatistics
from keras_snr.snr_adam import finite_dataset_alpha

__version__ = "0.2.0"

__all__ = [
    "SNRAdam",
    "SNRStatistics",
    "finite_dataset_alpha",
    "gate",
    "GateLogger",
    "PopulationRiskEstimate",
    "ValidationFreeStopping",
    "SLOT_LAYOUT_VERSION",
]

# `compile(optimizer="SNRAdam")`, as with Keras's own optimizers. Saved
# models record the registered name "keras_snr>SNRAdam" either way.
keras.saving.get_custom_objects().setdefault("SNRAdam", SNRAdam)
