"""keras_snr: SNR-gated Adam for Keras 3 (TensorFlow, JAX and PyTorch).

The optimizer:

- `SNRAdam`: Adam whose step on each coordinate is gated by the gradient's
  signal-to-noise ratio; `SNRAdam.statistics()` returns `SNRStatistics`.
- `finite_dataset_alpha(batch_size, dataset_size)`: its noise coefficient
  for a finite training set.
- `gate`: the module of the gate formulas.

Callbacks that read the optimizer's statistics during `fit()`:

- `GateLogger`: logs the mean gate and the fraction of open coordinates.
- `PopulationRiskEstimate`: estimates the loss on unseen data from the
  training run alone.
- `ValidationFreeStopping`: early stopping without a validation set.

`keras_snr.population_risk` holds the estimate and the stopping rule as
pure functions of numbers. `SLOT_LAYOUT_VERSION` is the version of the
optimizer's saved state. Importing the package registers `"SNRAdam"`, so
that `model.compile(optimizer="SNRAdam")` works.

Example:

```python
import keras
import keras_snr

model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
model.compile(
    optimizer=keras_snr.SNRAdam(
        alpha=keras_snr.finite_dataset_alpha(batch_size=32, dataset_size=1000)),
    loss="mse",
)
```
"""

import keras

from keras_snr import gate
from keras_snr.callbacks import GateLogger
from keras_snr.callbacks import PopulationRiskEstimate
from keras_snr.callbacks import ValidationFreeStopping
from keras_snr.snr_adam import SLOT_LAYOUT_VERSION
from keras_snr.snr_adam import SNRAdam
from keras_snr.snr_adam import SNRStatistics
from keras_snr.snr_adam import finite_dataset_alpha

__version__ = "1.0.0"

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
