"""``experiment: train`` (the default): each trial trains one VAE (vaesweep/engine/trial.py), or K grid
configurations together in batched kernels when the study packs (vaesweep/engine/packing.py)."""

from vaesweep.experiments.kind import Kind

KIND = Kind(
    name="train",
    trainable="vaesweep.study.trainables:trainable",
    packed_trainable="vaesweep.study.trainables:packed_trainable",
)
