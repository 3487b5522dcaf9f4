"""Moved to vaesweep/experiments/noise.py (the noise kind); engine/noise.py and study/trainables.py import
these names from here until they import them from there."""

from vaesweep.experiments.noise import NOISE_KEY, NoiseSettings

__all__ = ["NOISE_KEY", "NoiseSettings"]
