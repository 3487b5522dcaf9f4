"""vaesweep: hyperparameter studies of the variable collapse of VAEs (Asperti 2019).

Public API:
    train_vae(config, report=None) -> TrialResult    train one VAE, plain Python
    trainable(config)                                the same, as a Ray Tune function trainable
    TrialConfig                                      the validated trial configuration
    load_dataset(name, root=None, download=False)    the data registry
"""

from .config import TrialConfig
from .data import DataError, load_dataset
from .trial import TrainingDiverged, TrialResult, TrialRun, train_vae, trainable

__all__ = ["TrialConfig", "DataError", "load_dataset", "TrainingDiverged", "TrialResult", "TrialRun",
           "train_vae", "trainable"]
__version__ = "0.1.0"
