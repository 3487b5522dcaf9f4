"""Sprites with k known factors (``sprites1`` ... ``sprites5``): data whose dimension is known.

The paper (Sec. 6) asks that claims about over-pruning hold "across multiple architectures and many
different data sets", and cites Dai & Wipf [7]: a VAE of enough capacity uses as many latent variables
as the manifold dimension of its data. On MNIST that dimension is unknown; here it is k by construction.

Every image is one anti-aliased ellipse on black, 28 x 28 grey in [0, 1], drawn from k independent
continuous factors, each uniform over an interval, added in this fixed order (the others stay at their
interval's midpoint):

====  ==========  ==============  ==============================================================
 j    factor      interval        what it moves
====  ==========  ==============  ==============================================================
 1    x           [8, 19] px      the centre's column
 2    y           [8, 19] px      the centre's row
 3    scale       [3, 5] px       the geometric mean of the two semi-axes
 4    aspect      [0.6, 1.4]      width / height (semi-axes scale * sqrt(aspect), scale / sqrt(aspect))
 5    brightness  [0.4, 1.0]      the ellipse's grey level
====  ==========  ==============  ==============================================================

None wraps around: each is an interval, so one latent variable can hold it. (A rotation would be a
circle, which needs two variables, cos and sin; an ellipse's rotation by 180 degrees is the same image.)
The edge is a one-pixel linear ramp, so every factor moves the pixels continuously. The largest ellipse
(scale 5, aspect 1.4: semi-axis 5.9 px) at the extreme centre (8 or 19) stays 1.5 px inside the frame.

Images are stored as uint8 (1/255 steps: below what the eval metrics resolve), with their factor values
(float32, N x k) and a class label for the FID-proxy's feature network (vaesweep/engine/fid.py trains a
classifier per data set): the cell of a grid of ``LABEL_BINS`` equal bins per factor (3^k classes), so
its features see every factor. 60,000 train and 10,000 eval images, deterministic from ``SEED``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaesweep.config.trial import MAX_SPRITE_FACTORS


@dataclass(frozen=True)
class Factor:
    name: str
    low: float
    high: float

    @property
    def mid(self) -> float:
        return (self.low + self.high) / 2


FACTORS = (
    Factor("x", 8.0, 19.0),
    Factor("y", 8.0, 19.0),
    Factor("scale", 3.0, 5.0),
    Factor("aspect", 0.6, 1.4),
    Factor("brightness", 0.4, 1.0),
)
assert len(FACTORS) == MAX_SPRITE_FACTORS
SIZE = 28
N_TRAIN, N_EVAL = 60_000, 10_000
SEED = 2019  # the data sets' own seed: fixed, so every trial and study sees the same images
LABEL_BINS = 3
VERSION = 1  # bump when the images change: the cache file's name carries it
CHUNK = 5_000  # images rendered at once (~30 MB of float64 work arrays)


def sprite_factors(k: int) -> tuple[Factor, ...]:
    """The first k factors, in their fixed order."""
    if not 1 <= k <= len(FACTORS):
        raise ValueError(f"sprites: k = {k}; use 1 to {len(FACTORS)}")
    return FACTORS[:k]


def sample_factors(k: int, n: int, seed: int = SEED) -> np.ndarray:
    """n draws of the first k factors, each uniform over its interval, float64 N x k."""
    rng = np.random.default_rng([seed, k])
    lows = np.array([f.low for f in sprite_factors(k)])
    highs = np.array([f.high for f in sprite_factors(k)])
    return lows + (highs - lows) * rng.random((n, k))


def render(factors: np.ndarray) -> np.ndarray:
    """Images (N x SIZE x SIZE, float in [0, 1]) of N x k factor values; unset factors at their midpoints."""
    n, k = factors.shape
    full = np.tile([f.mid for f in FACTORS], (n, 1))
    full[:, :k] = factors
    cx, cy, scale, aspect, bright = (full[:, j, None, None] for j in range(len(FACTORS)))
    rx, ry = scale * np.sqrt(aspect), scale / np.sqrt(aspect)
    grid = np.arange(SIZE, dtype=np.float64)
    row, col = grid[None, :, None], grid[None, None, :]
    radius = np.sqrt(((col - cx) / rx) ** 2 + ((row - cy) / ry) ** 2)  # 1 on the ellipse's edge
    # (1 - radius) * scale ~ the signed distance to the edge in pixels: a one-pixel ramp around it
    return bright * np.clip((1.0 - radius) * scale + 0.5, 0.0, 1.0)


def labels(factors: np.ndarray, k: int) -> np.ndarray:
    """Class labels for the FID-proxy's classifier: the cell of LABEL_BINS equal bins per factor."""
    lows = np.array([f.low for f in sprite_factors(k)])
    highs = np.array([f.high for f in sprite_factors(k)])
    bins = np.clip(((factors - lows) / (highs - lows) * LABEL_BINS).astype(np.int64), 0, LABEL_BINS - 1)
    return bins @ (LABEL_BINS ** np.arange(k))


def make_sprites(k: int, n: int = N_TRAIN + N_EVAL, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 N x 28 x 28, factors float32 N x k, labels int64 N): the same bytes for the same seed."""
    factors = sample_factors(k, n, seed)
    images = np.empty((n, SIZE, SIZE), np.uint8)
    for s in range(0, n, CHUNK):
        images[s : s + CHUNK] = np.round(render(factors[s : s + CHUNK]) * 255).astype(np.uint8)
    return images, factors.astype(np.float32), labels(factors, k)
