"""keras_snr: SNR-gated Adam for Keras 3 (TensorFlow, JAX and PyTorch)."""

from keras_snr.callbacks import PopulationRiskEstimate
from keras_snr.snr_adam import SLOT_LAYOUT_VERSION
from keras_snr.snr_adam import SNRAdam
from keras_snr.snr_adam import finite_dataset_alpha

__version__ = "0.1.0"

__all__ = ["SNRAdam", "finite_dataset_alpha", "SLOT_LAYOUT_VERSION", "PopulationRiskEstimate"]
